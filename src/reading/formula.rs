//! lme4-style model formulas for linear mixed models, e.g.
//! `rt ~ 1 + length + log_freq + (1 + length | subject) + (1 | item)`.
//!
//! Supported: a numeric response; numeric fixed-effect columns joined by `+`; the intercept is
//! implicit and removed by `0 +` or `- 1`; random-effect terms `(e | group)` where `e` is `1`,
//! `1 + x + …`, `x + …` (intercept implicit, as in lme4) or `0 + x + …`, each term with a full
//! (correlated) covariance matrix. Not supported (an error says so): interactions (`:`, `*`),
//! transformations inside the formula, uncorrelated `||` terms, nested `/` grouping.

use crate::{Error, Result};

/// One random-effect term: `(1 + slopes | group)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RandomTerm {
    pub group: String,
    pub intercept: bool,
    pub slopes: Vec<String>,
}

impl RandomTerm {
    /// Number of random effects per level (intercept + slopes).
    pub fn dim(&self) -> usize {
        usize::from(self.intercept) + self.slopes.len()
    }
    /// Names of the effects per level, in order ("(Intercept)" first when present).
    pub fn effect_names(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.intercept {
            v.push("(Intercept)".to_string());
        }
        v.extend(self.slopes.iter().cloned());
        v
    }
}

/// A parsed formula.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Formula {
    pub response: String,
    pub intercept: bool,
    pub fixed: Vec<String>,
    pub random: Vec<RandomTerm>,
}

impl Formula {
    /// Names of the fixed-effect coefficients ("(Intercept)" first when present).
    pub fn fixed_names(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.intercept {
            v.push("(Intercept)".to_string());
        }
        v.extend(self.fixed.iter().cloned());
        v
    }
}

fn bad(text: &str, msg: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("formula {text:?}: {msg}"))
}

fn check_name(text: &str, name: &str) -> Result<String> {
    let n = name.trim();
    if n.is_empty() {
        return Err(bad(text, "expected a column name, found nothing (a stray `+`?)"));
    }
    if n.contains([':', '*', '(', ')', '/', '^', '~', '|']) || n.contains(char::is_whitespace) {
        return Err(bad(
            text,
            format!(
                "`{n}` is not a plain column name (interactions and transformations are not supported: make a column)"
            ),
        ));
    }
    Ok(n.to_string())
}

/// Splits on `+` at parenthesis depth 0, keeping `- 1` as a term.
fn split_terms(rhs: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth) = (Vec::new(), String::new(), 0i32);
    for c in rhs.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c)
            }
            ')' => {
                depth -= 1;
                cur.push(c)
            }
            '+' if depth == 0 => out.push(std::mem::take(&mut cur)),
            '-' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                cur.push('-');
            }
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().map(|s| s.trim().to_string()).collect()
}

/// Parses `text` (see the module doc).
pub fn parse_formula(text: &str) -> Result<Formula> {
    let (lhs, rhs) = text
        .split_once('~')
        .ok_or_else(|| bad(text, "expected `response ~ terms`"))?;
    let response = check_name(text, lhs)?;
    if rhs.contains("||") {
        return Err(bad(text, "uncorrelated `||` terms are not supported; use `|`"));
    }
    let mut f = Formula {
        response,
        intercept: true,
        fixed: Vec::new(),
        random: Vec::new(),
    };
    for term in split_terms(rhs) {
        if term.is_empty() && rhs.trim().is_empty() {
            return Err(bad(text, "expected terms after `~`"));
        }
        match term.as_str() {
            "1" => f.intercept = true,
            "0" | "-1" | "- 1" => f.intercept = false,
            t if t.starts_with('-') => return Err(bad(text, format!("only `- 1` may be subtracted, found `{t}`"))),
            t if t.starts_with('(') => {
                let inner = t
                    .strip_prefix('(')
                    .and_then(|s| s.strip_suffix(')'))
                    .ok_or_else(|| bad(text, format!("unbalanced parentheses in `{t}`")))?;
                let (e, g) = inner
                    .split_once('|')
                    .ok_or_else(|| bad(text, format!("expected `(effects | group)`, found `{t}`")))?;
                let group = check_name(text, g)?;
                let mut rt = RandomTerm {
                    group,
                    intercept: true,
                    slopes: Vec::new(),
                };
                for part in split_terms(e) {
                    match part.as_str() {
                        "1" => rt.intercept = true,
                        "0" | "-1" | "- 1" => rt.intercept = false,
                        p => rt.slopes.push(check_name(text, p)?),
                    }
                }
                if rt.dim() == 0 {
                    return Err(bad(text, format!("random term `{t}` has no effects")));
                }
                f.random.push(rt);
            }
            t => {
                let name = check_name(text, t)?;
                if !f.fixed.contains(&name) {
                    f.fixed.push(name);
                }
            }
        }
    }
    if f.random.is_empty() {
        return Err(bad(
            text,
            "expected at least one random-effect term such as `(1 | subject)`",
        ));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crossed_model_with_a_random_slope_parses_into_its_terms() {
        let f = parse_formula("rt ~ length + freq + (1 + length | subject) + (1|item)").unwrap();
        assert_eq!(f.response, "rt");
        assert!(f.intercept);
        assert_eq!(f.fixed, vec!["length", "freq"]);
        assert_eq!(f.fixed_names()[0], "(Intercept)");
        assert_eq!(f.random[0].group, "subject");
        assert_eq!(f.random[0].effect_names(), vec!["(Intercept)", "length"]);
        assert_eq!(f.random[1].dim(), 1);
        let g = parse_formula("y ~ 0 + x + (0 + x | g)").unwrap();
        assert!(!g.intercept && !g.random[0].intercept);
        let h = parse_formula("y ~ x - 1 + (x | g)").unwrap();
        assert!(!h.intercept && h.random[0].intercept);
    }

    #[test]
    fn unsupported_syntax_is_an_error_that_says_what_to_do() {
        for (f, msg) in [
            ("y ~ a:b + (1|g)", "make a column"),
            ("y ~ a + (1||g)", "||"),
            ("y ~ a", "random-effect term"),
            ("y a + (1|g)", "response ~ terms"),
            ("y ~ log(a) + (1|g)", "make a column"),
        ] {
            let e = parse_formula(f).unwrap_err().to_string();
            assert!(e.contains(msg), "{f}: {e}");
        }
    }
}
