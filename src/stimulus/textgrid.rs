//! Praat TextGrid (text formats) → the intervals of its tiers → words with onsets/offsets in
//! seconds (`xmin`/`xmax` of each non-silent interval of the word tier).
//!
//! Both of Praat's text formats are read:
//!
//! * long ("ooTextFile", `key = value` lines, `item [1]:` / `intervals [3]:` headers);
//! * short ("ooTextFile" or "ooTextFile short", values only, in the same order).
//!
//! Strings are in double quotes with a literal quote written as `""`; they may span lines.
//! Point tiers (`TextTier`, also called `PointTier`) are parsed and checked but never hold words.
//! Errors give the 1-based line number, what was expected and what was found.

use std::path::Path;

use super::{ReadOptions, Word};
use crate::{Error, Result};

/// One interval of an IntervalTier.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Interval {
    /// Start, seconds.
    pub xmin: f64,
    /// End, seconds.
    pub xmax: f64,
    /// The label, unescaped, untrimmed.
    pub text: String,
    /// Line of the interval's `xmin`.
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TierKind {
    Interval(Vec<Interval>),
    /// A TextTier (points); only the number of points is kept.
    Point(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tier {
    pub name: String,
    pub kind: TierKind,
}

impl Tier {
    fn class(&self) -> &'static str {
        match self.kind {
            TierKind::Interval(_) => "IntervalTier",
            TierKind::Point(_) => "TextTier",
        }
    }
}

/// Reads the words of a TextGrid: the non-skipped intervals of the word tier, in order.
pub(crate) fn read_words(path: &Path, text: &str, opts: &ReadOptions) -> Result<Vec<Word>> {
    let tiers = parse(path, text)?;
    let intervals = select_tier(path, &tiers, opts.tier.as_deref())?;
    Ok(intervals
        .iter()
        .filter(|iv| !opts.is_skipped(&iv.text))
        .map(|iv| Word {
            text: iv.text.trim().to_string(),
            onset_s: Some(iv.xmin),
            offset_s: Some(iv.xmax),
        })
        .collect())
}

fn list_tiers(tiers: &[Tier]) -> String {
    if tiers.is_empty() {
        return "the TextGrid has no tiers".to_string();
    }
    let list: Vec<String> = tiers.iter().map(|t| format!("`{}` ({})", t.name, t.class())).collect();
    format!("tiers: {}", list.join(", "))
}

/// The tier holding the words: `wanted` by name (exact, else case-insensitive), else the
/// IntervalTier named `word`/`words` (case-insensitive), else the only IntervalTier.
fn select_tier<'t>(path: &Path, tiers: &'t [Tier], wanted: Option<&str>) -> Result<&'t [Interval]> {
    let chosen = match wanted {
        Some(name) => {
            let tier = tiers
                .iter()
                .find(|t| t.name == name)
                .or_else(|| tiers.iter().find(|t| t.name.trim().eq_ignore_ascii_case(name.trim())))
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "{}: no tier named `{name}`; {}",
                        path.display(),
                        list_tiers(tiers)
                    ))
                })?;
            if let TierKind::Point(_) = tier.kind {
                return Err(Error::Invalid(format!(
                    "{}: tier `{}` is a TextTier (points without duration); words need an \
                     IntervalTier; {}",
                    path.display(),
                    tier.name,
                    list_tiers(tiers)
                )));
            }
            tier
        }
        None => {
            let interval_tiers: Vec<&Tier> = tiers
                .iter()
                .filter(|t| matches!(t.kind, TierKind::Interval(_)))
                .collect();
            let named = interval_tiers.iter().find(|t| {
                let n = t.name.trim();
                n.eq_ignore_ascii_case("word") || n.eq_ignore_ascii_case("words")
            });
            match (named, interval_tiers.as_slice()) {
                (Some(t), _) => *t,
                (None, [only]) => *only,
                (None, _) => {
                    return Err(Error::Invalid(format!(
                        "{}: cannot tell which tier holds the words: no IntervalTier is named \
                         `word` or `words` and there {} IntervalTiers; choose one with the tier \
                         option; {}",
                        path.display(),
                        if interval_tiers.is_empty() {
                            "are no".to_string()
                        } else {
                            format!("are {}", interval_tiers.len())
                        },
                        list_tiers(tiers)
                    )))
                }
            }
        }
    };
    match &chosen.kind {
        TierKind::Interval(iv) => Ok(iv),
        TierKind::Point(_) => unreachable!("point tiers are filtered above"),
    }
}

/// Parses all tiers of a TextGrid in Praat's long or short text format.
pub(crate) fn parse(path: &Path, text: &str) -> Result<Vec<Tier>> {
    let mut c = Cursor::new(path, text);
    c.header()?;
    c.skip_ws();
    c.long = c.rest().starts_with("xmin");

    let ctx = "the TextGrid";
    c.number("xmin", ctx)?;
    c.number("xmax", ctx)?;
    if !c.exists(ctx)? {
        return Ok(Vec::new());
    }
    let n_tiers = c.count("size", ctx)?;
    let mut tiers = Vec::with_capacity(n_tiers.min(64));
    for t in 1..=n_tiers {
        let ctx = format!("tier {t}");
        let class_start = c.start("class", "\"<tier class>\"", &ctx)?;
        let class = c.quoted("class", "\"<tier class>\"", &ctx, class_start)?;
        let name = c.string("name", &ctx)?;
        let ctx = format!("tier {t} `{name}`");
        c.number("xmin", &ctx)?;
        c.number("xmax", &ctx)?;
        let kind = match class.as_str() {
            "IntervalTier" => TierKind::Interval(c.intervals(&name, &ctx)?),
            "TextTier" | "PointTier" => TierKind::Point(c.points(&ctx)?),
            _ => {
                return Err(Error::parse(
                    path,
                    format!("line {}", c.line_of(class_start)),
                    format!(
                        "expected tier class \"IntervalTier\" or \"TextTier\", found \"{class}\" \
                         ({ctx})"
                    ),
                ))
            }
        };
        tiers.push(Tier { name, kind });
    }
    Ok(tiers)
}

/// A position in the text with the readers for Praat's values.
struct Cursor<'a> {
    path: &'a Path,
    text: &'a str,
    /// Byte offset of the next unread character.
    pos: usize,
    /// Byte offsets at which lines start.
    line_starts: Vec<usize>,
    /// Long format (`key = value`) rather than short (values only).
    long: bool,
}

impl<'a> Cursor<'a> {
    fn new(path: &'a Path, text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Cursor {
            path,
            text,
            pos: 0,
            line_starts,
            long: true,
        }
    }

    /// 1-based line number of byte offset `pos`.
    fn line_of(&self, pos: usize) -> usize {
        self.line_starts.partition_point(|&s| s <= pos)
    }

    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn skip_ws(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    /// Skips spaces and tabs, not line ends.
    fn skip_blanks(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start_matches([' ', '\t']).len();
    }

    /// The rest of the line at `pos`, trimmed and shortened for messages.
    fn line_text(&self, pos: usize) -> String {
        let rest = &self.text[pos..];
        let line = rest[..rest.find('\n').unwrap_or(rest.len())].trim();
        shorten(line)
    }

    /// Whitespace-delimited token at `pos`, for messages.
    fn token_text(&self, pos: usize) -> String {
        let rest = &self.text[pos..];
        shorten(&rest[..rest.find(char::is_whitespace).unwrap_or(rest.len())])
    }

    fn found(&self, pos: usize) -> String {
        if pos >= self.text.len() {
            "the end of the file".to_string()
        } else if self.long {
            format!("`{}`", self.line_text(pos))
        } else {
            format!("`{}`", self.token_text(pos))
        }
    }

    /// "line N: expected `key = <what>`, found `…` (context)" in the long format,
    /// "line N: expected <what> (`key` of context), found `…`" in the short one.
    fn error_at(&self, pos: usize, key: &str, what: &str, ctx: &str) -> Error {
        let message = if self.long {
            let sep = if key.ends_with('?') { " " } else { " = " };
            format!("expected `{key}{sep}{what}`, found {} ({ctx})", self.found(pos))
        } else {
            format!("expected {what} (`{key}` of {ctx}), found {}", self.found(pos))
        };
        Error::parse(self.path, format!("line {}", self.line_of(pos)), message)
    }

    /// Reads the `File type` and `Object class` lines common to both formats.
    fn header(&mut self) -> Result<()> {
        self.skip_ws();
        let start = self.pos;
        let bad_header = |c: &Self| {
            Error::parse(
                c.path,
                format!("line {}", c.line_of(start)),
                format!(
                    "expected `File type = \"ooTextFile\"` (a Praat TextGrid saved as text, long \
                     or short format), found {}",
                    c.found(start)
                ),
            )
        };
        let Some(rest) = self.rest().strip_prefix("File type") else {
            return Err(bad_header(self));
        };
        self.pos = self.text.len() - rest.len();
        self.skip_blanks();
        if !self.rest().starts_with('=') {
            return Err(bad_header(self));
        }
        self.pos += 1;
        self.skip_blanks();
        if !self.rest().starts_with('"') {
            return Err(bad_header(self));
        }
        let file_type = self.quoted("File type", "\"ooTextFile\"", "the header", start)?;
        if file_type != "ooTextFile" && file_type != "ooTextFile short" {
            return Err(bad_header(self));
        }
        let ctx = "the header";
        let start = self.start("Object class", "\"TextGrid\"", ctx)?;
        let class = self.quoted("Object class", "\"TextGrid\"", ctx, start)?;
        if class != "TextGrid" {
            return Err(self.error_at(start, "Object class", "\"TextGrid\"", ctx));
        }
        Ok(())
    }

    /// Moves to the start of the next value, returning the offset to report in errors. In the
    /// long format, skips `item [n]:`-style header lines, then reads `key =` (`key` alone for
    /// keys ending in `?`); any of `|`-separated alternatives is accepted.
    fn start(&mut self, key: &str, what: &str, ctx: &str) -> Result<usize> {
        self.skip_ws();
        if !self.long {
            return Ok(self.pos);
        }
        while is_structural(&self.line_text(self.pos)) {
            let rest = self.rest();
            self.pos += rest.find('\n').map_or(rest.len(), |i| i + 1);
            self.skip_ws();
        }
        let start = self.pos;
        let primary = key.split('|').next().unwrap_or(key);
        for k in key.split('|') {
            let Some(after) = self.rest().strip_prefix(k) else {
                continue;
            };
            self.pos = self.text.len() - after.len();
            self.skip_blanks();
            if k.ends_with('?') {
                return Ok(start);
            }
            if self.rest().starts_with('=') {
                self.pos += 1;
                self.skip_blanks();
                return Ok(start);
            }
            self.pos = start;
        }
        Err(self.error_at(start, primary, what, ctx))
    }

    /// Reads a whitespace-delimited token at the current position (may be empty).
    fn token(&mut self) -> &'a str {
        let rest = self.rest();
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        self.pos += end;
        &rest[..end]
    }

    fn number(&mut self, key: &str, ctx: &str) -> Result<f64> {
        Ok(self.number_at(key, ctx)?.0)
    }

    /// A finite number, and the offset where its entry starts.
    fn number_at(&mut self, key: &str, ctx: &str) -> Result<(f64, usize)> {
        let start = self.start(key, "<number>", ctx)?;
        match self.token().parse::<f64>() {
            Ok(v) if v.is_finite() => Ok((v, start)),
            _ => Err(self.error_at(start, key.split('|').next().unwrap_or(key), "<number>", ctx)),
        }
    }

    fn count(&mut self, key: &str, ctx: &str) -> Result<usize> {
        let start = self.start(key, "<count>", ctx)?;
        self.token()
            .parse::<usize>()
            .map_err(|_| self.error_at(start, key, "<count>", ctx))
    }

    fn exists(&mut self, ctx: &str) -> Result<bool> {
        let start = self.start("tiers?", "<exists>", ctx)?;
        match self.token() {
            "<exists>" => Ok(true),
            "<absent>" => Ok(false),
            _ => Err(self.error_at(start, "tiers?", "<exists>", ctx)),
        }
    }

    fn string(&mut self, key: &str, ctx: &str) -> Result<String> {
        let start = self.start(key, "\"<text>\"", ctx)?;
        self.quoted(key.split('|').next().unwrap_or(key), "\"<text>\"", ctx, start)
    }

    /// A double-quoted string at the current position; `""` stands for one `"`.
    fn quoted(&mut self, key: &str, what: &str, ctx: &str, start: usize) -> Result<String> {
        if !self.rest().starts_with('"') {
            return Err(self.error_at(start, key, what, ctx));
        }
        let open = self.pos;
        let mut out = String::new();
        let mut i = open + 1;
        loop {
            let Some(j) = self.text[i..].find('"') else {
                return Err(Error::parse(
                    self.path,
                    format!("line {}", self.line_of(open)),
                    format!(
                        "expected a closing `\"` for the string opened on this line, found the \
                         end of the file ({ctx})"
                    ),
                ));
            };
            let q = i + j;
            out.push_str(&self.text[i..q]);
            if self.text[q + 1..].starts_with('"') {
                out.push('"');
                i = q + 2;
            } else {
                self.pos = q + 1;
                return Ok(out);
            }
        }
    }

    /// The intervals of an IntervalTier, checked: `xmin ≤ xmax`, `xmin` nondecreasing.
    fn intervals(&mut self, name: &str, tier_ctx: &str) -> Result<Vec<Interval>> {
        let n = self.count("intervals: size", tier_ctx)?;
        let mut out: Vec<Interval> = Vec::with_capacity(n.min(1 << 16));
        for i in 1..=n {
            let ctx = format!("interval {i} of {tier_ctx}");
            let (xmin, xmin_start) = self.number_at("xmin", &ctx)?;
            let (xmax, xmax_start) = self.number_at("xmax", &ctx)?;
            let text = self.string("text", &ctx)?;
            if xmax < xmin {
                return Err(Error::parse(
                    self.path,
                    format!("line {}", self.line_of(xmax_start)),
                    format!(
                        "expected `xmax` ≥ `xmin` = {xmin}, found `xmax` = {xmax} (interval {i} \
                         of tier `{name}`)"
                    ),
                ));
            }
            if let Some(prev) = out.last() {
                if xmin < prev.xmin {
                    return Err(Error::parse(
                        self.path,
                        format!("line {}", self.line_of(xmin_start)),
                        format!(
                            "intervals must be in time order: interval {i} of tier `{name}` \
                             starts at {xmin}, before interval {} (line {}) at {}",
                            i - 1,
                            prev.line,
                            prev.xmin
                        ),
                    ));
                }
            }
            out.push(Interval {
                xmin,
                xmax,
                text,
                line: self.line_of(xmin_start),
            });
        }
        Ok(out)
    }

    /// The points of a TextTier (read and checked for syntax, then dropped).
    fn points(&mut self, tier_ctx: &str) -> Result<usize> {
        let n = self.count("points: size", tier_ctx)?;
        for p in 1..=n {
            let ctx = format!("point {p} of {tier_ctx}");
            self.number("number|time", &ctx)?;
            self.string("mark|text", &ctx)?;
        }
        Ok(n)
    }
}

/// `item []:`, `item [2]:`, `intervals [5]:`, `points [1]:` — long-format headers, no values.
fn is_structural(line: &str) -> bool {
    !line.contains('=') && line.ends_with(':') && ["item", "intervals", "points"].iter().any(|k| line.starts_with(k))
}

fn shorten(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(MAX).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: &str = r#"File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 3
tiers? <exists>
size = 2
item []:
    item [1]:
        class = "IntervalTier"
        name = "phones"
        xmin = 0
        xmax = 3
        intervals: size = 1
        intervals [1]:
            xmin = 0
            xmax = 3
            text = "AH"
    item [2]:
        class = "IntervalTier"
        name = "Words"
        xmin = 0
        xmax = 3
        intervals: size = 4
        intervals [1]:
            xmin = 0
            xmax = 1
            text = ""
        intervals [2]:
            xmin = 1
            xmax = 1.5
            text = "say ""hi"""
        intervals [3]:
            xmin = 1.5
            xmax = 2
            text = "sp"
        intervals [4]:
            xmin = 2
            xmax = 3
            text = "two
lines"
"#;

    fn words(text: &str, opts: &ReadOptions) -> Result<Vec<Word>> {
        read_words(Path::new("t.TextGrid"), text, opts)
    }

    #[test]
    fn long_format_word_tier_by_name() {
        let w = words(LONG, &ReadOptions::default()).unwrap();
        assert_eq!(
            w,
            vec![
                Word {
                    text: "say \"hi\"".into(),
                    onset_s: Some(1.0),
                    offset_s: Some(1.5)
                },
                Word {
                    text: "two\nlines".into(),
                    onset_s: Some(2.0),
                    offset_s: Some(3.0)
                },
            ]
        );
    }

    #[test]
    fn explicit_tier() {
        let opts = ReadOptions {
            tier: Some("phones".into()),
            ..Default::default()
        };
        let w = words(LONG, &opts).unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].text, "AH");
        let opts = ReadOptions {
            tier: Some("syllables".into()),
            ..Default::default()
        };
        let err = words(LONG, &opts).unwrap_err().to_string();
        assert!(
            err.contains("`syllables`") && err.contains("`phones` (IntervalTier)"),
            "{err}"
        );
    }

    #[test]
    fn ambiguous_tiers_listed() {
        let text = LONG.replace("\"Words\"", "\"lexical\"");
        let err = words(&text, &ReadOptions::default()).unwrap_err();
        assert!(matches!(err, Error::Invalid(_)));
        let m = err.to_string();
        assert!(m.contains("`phones` (IntervalTier), `lexical` (IntervalTier)"), "{m}");
        assert!(m.contains("t.TextGrid"), "{m}");
    }

    #[test]
    fn malformed_number_names_line_and_expectation() {
        let text = LONG.replace("xmax = 1.5", "xmax = abc");
        let err = words(&text, &ReadOptions::default()).unwrap_err().to_string();
        assert!(
            err.contains("line 31: expected `xmax = <number>`, found `xmax = abc`"),
            "{err}"
        );
        assert!(err.contains("interval 2 of tier 2 `Words`"), "{err}");
    }

    #[test]
    fn missing_key_names_line() {
        let text = LONG.replace("            text = \"sp\"\n", "");
        let err = words(&text, &ReadOptions::default()).unwrap_err().to_string();
        assert!(
            err.contains("line 37: expected `text = \"<text>\"`, found `xmin = 2`"),
            "{err}"
        );
    }

    #[test]
    fn xmax_before_xmin_rejected() {
        let text = LONG.replace("xmax = 1.5", "xmax = 0.5");
        let err = words(&text, &ReadOptions::default()).unwrap_err().to_string();
        assert!(err.contains("line 31") && err.contains("xmax"), "{err}");
    }

    #[test]
    fn decreasing_intervals_rejected() {
        let text = LONG.replace("xmin = 1.5\n", "xmin = 0.5\n");
        let err = words(&text, &ReadOptions::default()).unwrap_err().to_string();
        assert!(err.contains("line 34") && err.contains("time order"), "{err}");
    }

    #[test]
    fn unterminated_string() {
        let text = LONG.replace("text = \"AH\"", "text = \"AH");
        let text = text.split("    item [2]").next().unwrap();
        let err = words(text, &ReadOptions::default()).unwrap_err().to_string();
        assert!(err.contains("line 18") && err.contains("closing"), "{err}");
    }

    #[test]
    fn not_a_textgrid() {
        let err = words("hello world\n", &ReadOptions::default()).unwrap_err().to_string();
        assert!(err.contains("line 1: expected `File type = \"ooTextFile\"`"), "{err}");
        let err = words(
            "File type = \"ooTextFile\"\nObject class = \"Sound\"\n",
            &ReadOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 2") && err.contains("TextGrid"), "{err}");
    }

    #[test]
    fn short_format_with_text_tier() {
        let text = "File type = \"ooTextFile short\"\r\nObject class = \"TextGrid\"\r\n\r\n0\r\n2\r\n\
                    <exists>\r\n2\r\n\"TextTier\"\r\n\"bell\"\r\n0\r\n2\r\n1\r\n0.5\r\n\"ding\"\r\n\
                    \"IntervalTier\"\r\n\"w\"\r\n0\r\n2\r\n2\r\n0\r\n1\r\n\"a\"\r\n1\r\n2\r\n\" b \"\r\n";
        let tiers = parse(Path::new("s.TextGrid"), text).unwrap();
        assert_eq!(tiers.len(), 2);
        assert_eq!(tiers[0].kind, TierKind::Point(1));
        // The only IntervalTier is chosen although it is not named `word`.
        let w = words(text, &ReadOptions::default()).unwrap();
        assert_eq!(w.iter().map(|w| w.text.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(w[1].onset_s, Some(1.0));
        // A point tier cannot be the word tier.
        let opts = ReadOptions {
            tier: Some("bell".into()),
            ..Default::default()
        };
        let err = words(text, &opts).unwrap_err().to_string();
        assert!(err.contains("TextTier"), "{err}");
    }

    #[test]
    fn short_format_error_names_line_and_token() {
        let text = "File type = \"ooTextFile\"\nObject class = \"TextGrid\"\n\n0\n2\n<exists>\n1\n\
                    \"IntervalTier\"\n\"word\"\n0\n2\n1\n0\nxyz\n\"a\"\n";
        let err = words(text, &ReadOptions::default()).unwrap_err().to_string();
        assert!(
            err.contains("line 14: expected <number> (`xmax` of interval 1 of tier 1 `word`), found `xyz`"),
            "{err}"
        );
    }

    #[test]
    fn truncated_file() {
        let text = LONG.split("        intervals [4]:").next().unwrap();
        let err = words(text, &ReadOptions::default()).unwrap_err().to_string();
        assert!(
            err.contains("found the end of the file") && err.contains("interval 4"),
            "{err}"
        );
    }

    #[test]
    fn absent_tiers() {
        let text = "File type = \"ooTextFile\"\nObject class = \"TextGrid\"\n\nxmin = 0\nxmax = 1\ntiers? <absent>\n";
        assert!(parse(Path::new("a.TextGrid"), text).unwrap().is_empty());
        let err = words(text, &ReadOptions::default()).unwrap_err().to_string();
        assert!(err.contains("no tiers"), "{err}");
    }
}
