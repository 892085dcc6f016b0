# The reading-time likelihood-ratio test of a cortexflow run, redone in R from the CSV export:
# base R reads the tables, lme4 refits the baseline model and the baseline + norm model by maximum
# likelihood, and the log-likelihoods, chi-square and p are compared with cortexflow's
# reading_comparison table (they must agree to 1e-6; the script stops otherwise).
#
#   cortexflow run pipelines/natural-stories.toml
#   cortexflow export runs/natural-stories --format csv
#   Rscript examples/reading_lrt.R runs/natural-stories/export-csv
#
# Needs only base R and lme4 (Debian: r-base-core r-cran-lme4; `make setup` installs them).

args <- commandArgs(trailingOnly = TRUE)
dir <- if (length(args) > 0) args[1] else "runs/natural-stories/export-csv"
words <- read.csv(file.path(dir, "reading_words.csv"), na.strings = "NA", stringsAsFactors = FALSE)
cmp <- read.csv(file.path(dir, "reading_comparison.csv"), na.strings = "NA", stringsAsFactors = FALSE)
ref <- cmp[cmp$model == "norm", ]
if (nrow(ref) != 1) stop("reading_comparison.csv has no `norm` model row")

# The design cortexflow fits: words in story order, spillover predictors from the previous
# word(s) of the same story, the rows with n_in_model = 1, rt = the word's mean reading time.
words <- words[order(words$story, words$position), ]
lag_k <- function(x, k) ave(x, words$story, FUN = function(v) c(rep(NA, k), head(v, -k)))
formula_base <- as.formula(ref$baseline_formula)
for (term in all.vars(formula_base)) {
  m <- regmatches(term, regexec("^prev([0-9]+)_(.+)$", term))[[1]]
  if (length(m) == 3) words[[term]] <- lag_k(words[[m[3]]], as.integer(m[2]))
}
# the norm block: the norm (0 where missing) and a missing indicator
words$norm_missing <- as.integer(is.na(words$norm))
words$norm[is.na(words$norm)] <- 0
d <- words[words$n_in_model == 1, ]
d$rt <- d$mean_rt
d$story <- factor(d$story)
cat(sprintf("%d reading times in the model (cortexflow: %d)\n", nrow(d), ref$n_obs))

suppressPackageStartupMessages(library(lme4))
ctl <- lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-11, maxfun = 1e5))
base <- lmer(formula_base, data = d, REML = FALSE, control = ctl)
norm_terms <- if (any(d$norm_missing == 1)) ". ~ . + norm + norm_missing" else ". ~ . + norm"
full <- lmer(update(formula_base, as.formula(norm_terms)), data = d, REML = FALSE, control = ctl)
ll <- c(as.numeric(logLik(base)), as.numeric(logLik(full)))
chi2 <- 2 * (ll[2] - ll[1])
df <- attr(logLik(full), "df") - attr(logLik(base), "df")
p <- pchisq(chi2, df, lower.tail = FALSE)

report <- data.frame(
  quantity = c("logLik baseline", "logLik + norm", "chi2", "p"),
  lme4 = c(ll, chi2, p),
  cortexflow = c(ref$loglik_base, ref$loglik_full, ref$chi2, ref$p_value)
)
report$difference <- report$lme4 - report$cortexflow
print(report, digits = 12, row.names = FALSE)
cat(sprintf("LRT for the norm block: chi2(%d) = %.4f, p = %.4g\n", df, chi2, p))
worst <- max(abs(report$difference[1:3]))
if (nrow(d) != ref$n_obs || df != ref$df || worst > 1e-6) {
  stop(sprintf("lme4 and cortexflow disagree: max |difference| %.3g", worst))
}
cat(sprintf("max |lme4 - cortexflow| over logLik and chi2: %.2e (within 1e-6)\n", worst))
