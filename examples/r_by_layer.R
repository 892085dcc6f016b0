# The report's main figure in base R from the CSV export: held-out r by layer for each feature set
# (mean over subjects with its confidence interval), no packages needed.
#
#   cortexflow run pipelines/alice.toml
#   cortexflow export runs/alice --format csv --table summary
#   Rscript examples/r_by_layer.R runs/alice/export-csv runs/alice/r_by_layer_R.png

args <- commandArgs(trailingOnly = TRUE)
dir <- if (length(args) > 0) args[1] else "runs/alice/export-csv"
out <- if (length(args) > 1) args[2] else file.path(dir, "r_by_layer_R.png")
s <- read.csv(file.path(dir, "summary.csv"), na.strings = "NA", stringsAsFactors = FALSE)
s <- s[s$roi == "all", ]
sets <- sort(unique(s$feature_set))
png(out, width = 700, height = 450)
plot(NA, xlim = range(s$layer), ylim = range(c(0, s$ci_lower, s$ci_upper)),
     xlab = "layer", ylab = "mean held-out r",
     main = sprintf("%s: r by layer (%d subjects, %.0f%% CI)", s$story[1], max(s$n_subjects), 100 * max(s$ci_level)))
abline(h = 0, col = "grey")
for (i in seq_along(sets)) {
  d <- s[s$feature_set == sets[i], ]
  d <- d[order(d$layer), ]
  arrows(d$layer, d$ci_lower, d$layer, d$ci_upper, angle = 90, code = 3, length = 0.03, col = i)
  lines(d$layer, d$mean_r, type = "b", pch = 19, col = i)
}
legend("topleft", legend = sets, col = seq_along(sets), lty = 1, pch = 19, cex = 0.8)
invisible(dev.off())
best <- s[which.max(s$mean_r), ]
cat(sprintf("best: layer %d, %s, r = %.3f [%.3f, %.3f]\nwrote %s\n",
            best$layer, best$feature_set, best$mean_r, best$ci_lower, best$ci_upper, out))
