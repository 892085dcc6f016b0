//! Word table (TSV or CSV) → words with optional onsets and offsets in seconds.
//!
//! The first row is the header. Fields may be quoted RFC-4180 style (`"a, b"`, `"say ""hi"""`,
//! quoted fields may span lines); rows end with LF or CRLF. Rows are numbered as records in the
//! file, the header being row 1; fully empty rows are skipped but still counted.

use std::path::Path;

use super::{ReadOptions, Word, DEFAULT_OFFSET_COLUMNS, DEFAULT_ONSET_COLUMNS, DEFAULT_WORD_COLUMNS};
use crate::{Error, Result};

/// One record of the table.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Record {
    /// Record number, 1 = header.
    pub(crate) row: usize,
    /// Line on which the record starts (differs from `row` after a multi-line quoted field).
    pub(crate) line: usize,
    pub(crate) cells: Vec<String>,
}

impl Record {
    fn is_empty(&self) -> bool {
        self.cells.iter().all(|c| c.trim().is_empty())
    }

    /// Extra context when the record does not start on line `row`.
    fn line_note(&self) -> String {
        if self.line == self.row {
            String::new()
        } else {
            format!(" (row {} starts on line {})", self.row, self.line)
        }
    }
}

/// Delimiter from the extension (`.tsv` tab, `.csv` comma); otherwise sniffed from the first
/// line: tab if it has a tab, else comma if it has a comma, else tab (a single column).
pub(crate) fn delimiter(path: &Path, text: &str) -> char {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("tsv") => '\t',
        Some("csv") => ',',
        _ => {
            let header = text.lines().next().unwrap_or("");
            if header.contains('\t') {
                '\t'
            } else if header.contains(',') {
                ','
            } else {
                '\t'
            }
        }
    }
}

/// Splits `text` into records of cells. Quotes open a quoted field only at the start of a field
/// (leading spaces allowed); elsewhere `"` is an ordinary character.
pub(crate) fn parse_records(path: &Path, text: &str, delim: char) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    let mut chars = text.chars().peekable();
    let (mut row, mut line, mut record_line) = (1usize, 1usize, 1usize);
    let mut cells: Vec<String> = Vec::new();
    let mut field = String::new();
    // `field` holds only whitespace so far and no quoted part has been read.
    let mut at_field_start = true;
    let mut in_quotes = false;
    // A quoted field has been closed; only whitespace may follow before the delimiter.
    let mut after_quotes = false;
    let mut quote_line = 0;

    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    in_quotes = false;
                    after_quotes = true;
                }
            } else {
                if c == '\n' {
                    line += 1;
                }
                field.push(c);
            }
            continue;
        }
        if c == delim {
            cells.push(std::mem::take(&mut field));
            at_field_start = true;
            after_quotes = false;
            continue;
        }
        if c == '\n' || c == '\r' {
            if c == '\r' && chars.peek() == Some(&'\n') {
                chars.next();
            }
            cells.push(std::mem::take(&mut field));
            records.push(Record {
                row,
                line: record_line,
                cells: std::mem::take(&mut cells),
            });
            row += 1;
            line += 1;
            record_line = line;
            at_field_start = true;
            after_quotes = false;
            continue;
        }
        if after_quotes {
            if c.is_whitespace() {
                continue;
            }
            return Err(Error::parse(
                path,
                format!("row {row}, line {line}"),
                format!(
                    "expected a delimiter or the end of the row after a closing quote, found `{c}` \
                     (write a literal quote inside a quoted field as `\"\"`)"
                ),
            ));
        }
        if at_field_start {
            if c == '"' {
                field.clear();
                in_quotes = true;
                at_field_start = false;
                quote_line = line;
                continue;
            }
            if !c.is_whitespace() {
                at_field_start = false;
            }
        }
        field.push(c);
    }
    if in_quotes {
        return Err(Error::parse(
            path,
            format!("row {row}, line {quote_line}"),
            "expected a closing quote `\"` for the quoted field opened here, found the end of \
             the file",
        ));
    }
    if !cells.is_empty() || !field.is_empty() || after_quotes {
        cells.push(field);
        records.push(Record {
            row,
            line: record_line,
            cells,
        });
    }
    Ok(records)
}

fn list_columns(header: &[String]) -> String {
    if header.is_empty() {
        return "none".to_string();
    }
    header.iter().map(|h| format!("`{h}`")).collect::<Vec<_>>().join(", ")
}

/// Index of the column to use. `explicit`: that name (exact, else case-insensitive), required.
/// Otherwise the first of `defaults` present (case-insensitive), or `None`.
fn find_column(
    path: &Path,
    header: &[String],
    explicit: Option<&str>,
    defaults: &[&str],
    role: &str,
) -> Result<Option<usize>> {
    if let Some(name) = explicit {
        let name = name.trim();
        let idx = header
            .iter()
            .position(|h| h == name)
            .or_else(|| header.iter().position(|h| h.eq_ignore_ascii_case(name)));
        return match idx {
            Some(i) => Ok(Some(i)),
            None => Err(Error::parse(
                path,
                "row 1",
                format!(
                    "expected a {role} column named `{name}` (as set in the options), found \
                     columns {}",
                    list_columns(header)
                ),
            )),
        };
    }
    Ok(defaults
        .iter()
        .find_map(|d| header.iter().position(|h| h.eq_ignore_ascii_case(d))))
}

/// Parses a cell as seconds.
fn seconds(path: &Path, rec: &Record, col: usize, name: &str) -> Result<f64> {
    let raw = rec.cells[col].trim();
    let location = format!("row {}, column `{name}`", rec.row);
    if raw.is_empty() {
        return Err(Error::parse(
            path,
            location,
            format!("expected a number, found an empty cell{}", rec.line_note()),
        ));
    }
    match raw.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(Error::parse(
            path,
            location,
            format!("expected a number, found `{raw}`{}", rec.line_note()),
        )),
    }
}

/// Reads the words of a word table.
pub(crate) fn read_words(path: &Path, text: &str, opts: &ReadOptions) -> Result<Vec<Word>> {
    let records = parse_records(path, text, delimiter(path, text))?;
    let Some((header_rec, rows)) = records.split_first() else {
        return Err(Error::parse(
            path,
            "row 1",
            "expected a header row naming the columns (e.g. `word`, `onset_s`, `offset_s`), \
             found an empty file",
        ));
    };
    let header: Vec<String> = header_rec.cells.iter().map(|h| h.trim().to_string()).collect();

    let word_col =
        find_column(path, &header, opts.word_column.as_deref(), DEFAULT_WORD_COLUMNS, "word")?.ok_or_else(|| {
            Error::parse(
                path,
                "row 1",
                format!(
                    "expected a header with a word column named one of {} (or set the word \
                     column option), found columns {}",
                    list_columns(&DEFAULT_WORD_COLUMNS.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
                    list_columns(&header)
                ),
            )
        })?;
    let onset_col = find_column(
        path,
        &header,
        opts.onset_column.as_deref(),
        DEFAULT_ONSET_COLUMNS,
        "onset",
    )?;
    let offset_col = find_column(
        path,
        &header,
        opts.offset_column.as_deref(),
        DEFAULT_OFFSET_COLUMNS,
        "offset",
    )?;

    let run_col = match &opts.run {
        Some(super::RunSelect { column: Some(c), .. }) => {
            Some(find_column(path, &header, Some(c), &[], "run")?.ok_or_else(|| {
                Error::parse(
                    path,
                    "row 1",
                    format!("no run column `{c}` among {}", list_columns(&header)),
                )
            })?)
        }
        Some(super::RunSelect { column: None, .. }) if onset_col.is_none() => {
            return Err(Error::parse(
                path,
                "row 1",
                "selecting a run by restarting onsets needs an onset column (or name the run column)",
            ))
        }
        _ => None,
    };
    // run of each row: from the run column, or counted at every onset restart
    let mut segment = 1usize;
    let mut last_raw_onset: Option<f64> = None;
    let mut runs_seen = std::collections::BTreeSet::new();

    let mut words = Vec::with_capacity(rows.len());
    let mut prev_onset: Option<(f64, usize)> = None;
    let mut n_empty = 0usize;
    for rec in rows {
        if rec.is_empty() {
            continue;
        }
        if rec.cells.len() != header.len() {
            return Err(Error::parse(
                path,
                format!("row {}", rec.row),
                format!(
                    "expected {} cells as in the header, found {}{}",
                    header.len(),
                    rec.cells.len(),
                    rec.line_note()
                ),
            ));
        }
        if let Some(sel) = &opts.run {
            let run = match run_col {
                Some(c) => {
                    let cell = rec.cells[c].trim();
                    let v: f64 = cell.parse().map_err(|_| {
                        Error::parse(
                            path,
                            format!("row {}, column `{}`", rec.row, header[c]),
                            format!("expected a run number, found `{cell}`"),
                        )
                    })?;
                    if v.fract() != 0.0 || v < 1.0 {
                        return Err(Error::parse(
                            path,
                            format!("row {}, column `{}`", rec.row, header[c]),
                            format!("expected a run number ≥ 1, found `{cell}`"),
                        ));
                    }
                    v as usize
                }
                None => {
                    let c = onset_col.expect("checked above");
                    let on = seconds(path, rec, c, &header[c])?;
                    if last_raw_onset.is_some_and(|p| on < p) {
                        segment += 1;
                    }
                    last_raw_onset = Some(on);
                    segment
                }
            };
            runs_seen.insert(run);
            if run != sel.run {
                continue;
            }
        }
        let text = rec.cells[word_col].trim();
        if text.is_empty() && opts.skip_empty_words {
            n_empty += 1;
            continue;
        }
        if text.is_empty() {
            return Err(Error::parse(
                path,
                format!("row {}, column `{}`", rec.row, header[word_col]),
                format!(
                    "expected a word, found an empty cell (only fully empty rows are skipped){}",
                    rec.line_note()
                ),
            ));
        }
        let onset_s = match onset_col {
            Some(c) => Some(seconds(path, rec, c, &header[c])?),
            None => None,
        };
        let offset_s = match offset_col {
            Some(c) => Some(seconds(path, rec, c, &header[c])?),
            None => None,
        };
        if let (Some(on), Some(off), Some(c)) = (onset_s, offset_s, offset_col) {
            if off < on {
                return Err(Error::parse(
                    path,
                    format!("row {}, column `{}`", rec.row, header[c]),
                    format!(
                        "expected an offset at or after the onset {on} s, found {off}{}",
                        rec.line_note()
                    ),
                ));
            }
        }
        if let (Some(on), Some(c)) = (onset_s, onset_col) {
            if let Some((prev, prev_row)) = prev_onset {
                if on < prev {
                    return Err(Error::parse(
                        path,
                        format!("row {}, column `{}`", rec.row, header[c]),
                        format!(
                            "onsets must be nondecreasing, found {on} after {prev} on row \
                             {prev_row}{}",
                            rec.line_note()
                        ),
                    ));
                }
            }
            prev_onset = Some((on, rec.row));
        }
        if opts.is_skipped(text) {
            continue;
        }
        words.push(Word {
            text: text.to_string(),
            onset_s,
            offset_s,
        });
    }
    if n_empty > 0 {
        tracing::info!("{}: skipped {n_empty} row(s) with an empty word cell", path.display());
    }
    if let Some(sel) = &opts.run {
        if !runs_seen.contains(&sel.run) {
            return Err(Error::parse(
                path,
                "run",
                format!(
                    "run {} requested, but the table's runs are {:?} ({})",
                    sel.run,
                    runs_seen,
                    match &sel.column {
                        Some(c) => format!("from column `{c}`"),
                        None => "counted where the onsets restart".into(),
                    }
                ),
            ));
        }
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells(path: &str, text: &str) -> Vec<Vec<String>> {
        let p = Path::new(path);
        parse_records(p, text, delimiter(p, text))
            .unwrap()
            .into_iter()
            .map(|r| r.cells)
            .collect()
    }

    #[test]
    fn rfc4180_quoting() {
        let got = cells("a.csv", "a,b\r\n\"x, y\",\"say \"\"hi\"\"\"\r\n\"multi\nline\",z\n");
        assert_eq!(
            got,
            vec![vec!["a", "b"], vec!["x, y", "say \"hi\""], vec!["multi\nline", "z"]]
        );
    }

    #[test]
    fn quotes_inside_unquoted_field_are_literal() {
        assert_eq!(cells("a.tsv", "w\ta\n5\"\tb"), vec![vec!["w", "a"], vec!["5\"", "b"]]);
    }

    #[test]
    fn empty_quoted_last_field_and_no_trailing_newline() {
        assert_eq!(cells("a.csv", "a,b\n1,\"\""), vec![vec!["a", "b"], vec!["1", ""]]);
    }

    #[test]
    fn row_numbers_count_records_and_lines() {
        let p = Path::new("a.csv");
        let r = parse_records(p, "a\n\"1\n2\"\n3\n", ',').unwrap();
        assert_eq!(
            r.iter().map(|r| (r.row, r.line)).collect::<Vec<_>>(),
            [(1, 1), (2, 2), (3, 4)]
        );
    }

    #[test]
    fn unterminated_quote_is_an_error() {
        let err = parse_records(Path::new("a.csv"), "a\n\"oops\n", ',')
            .unwrap_err()
            .to_string();
        assert!(err.contains("row 2") && err.contains("closing quote"), "{err}");
    }

    #[test]
    fn text_after_closing_quote_is_an_error() {
        let err = parse_records(Path::new("a.csv"), "a,b\n\"x\"y,1\n", ',')
            .unwrap_err()
            .to_string();
        assert!(err.contains("row 2") && err.contains("`y`"), "{err}");
    }

    #[test]
    fn delimiter_sniffed_without_known_extension() {
        assert_eq!(delimiter(Path::new("t.words"), "word\tonset\n"), '\t');
        assert_eq!(delimiter(Path::new("t.words"), "word,onset\n"), ',');
        assert_eq!(delimiter(Path::new("t.csv"), "word\tonset\n"), ',');
    }

    #[test]
    fn columns_by_default_names_and_explicit() {
        let opts = ReadOptions::default();
        let w = read_words(Path::new("t.tsv"), "Token\tStart\tEnd\nhi\t0.5\t0.7\n", &opts).unwrap();
        assert_eq!(
            w,
            vec![Word {
                text: "hi".into(),
                onset_s: Some(0.5),
                offset_s: Some(0.7)
            }]
        );

        let opts = ReadOptions {
            word_column: Some("lemma".into()),
            onset_column: Some("t".into()),
            ..Default::default()
        };
        let w = read_words(Path::new("t.tsv"), "word\tlemma\tt\nran\trun\t1\n", &opts).unwrap();
        assert_eq!(
            w,
            vec![Word {
                text: "run".into(),
                onset_s: Some(1.0),
                offset_s: None
            }]
        );

        let opts = ReadOptions {
            onset_column: Some("time".into()),
            ..Default::default()
        };
        let err = read_words(Path::new("t.tsv"), "word\tonset\nx\t1\n", &opts)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`time`") && err.contains("`onset`"), "{err}");
    }

    #[test]
    fn onset_s_preferred_over_onset() {
        let w = read_words(
            Path::new("t.csv"),
            "onset,word,onset_s\n9,a,1\n",
            &ReadOptions::default(),
        )
        .unwrap();
        assert_eq!(w[0].onset_s, Some(1.0));
    }

    #[test]
    fn missing_word_column_lists_columns() {
        let err = read_words(Path::new("t.csv"), "lemma,onset\nx,1\n", &ReadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("row 1") && err.contains("`lemma`") && err.contains("`word`"),
            "{err}"
        );
    }

    #[test]
    fn empty_rows_skipped_empty_word_cell_rejected() {
        let opts = ReadOptions::default();
        let w = read_words(Path::new("t.csv"), "word,onset\na,1\n\n,\nb,2\n", &opts).unwrap();
        assert_eq!(w.len(), 2);
        let err = read_words(Path::new("t.csv"), "word,onset\na,1\n ,2\n", &opts)
            .unwrap_err()
            .to_string();
        assert!(err.contains("row 3, column `word`") && err.contains("empty"), "{err}");
    }

    #[test]
    fn cell_count_mismatch() {
        let err = read_words(Path::new("t.csv"), "word,onset\na,1,2\n", &ReadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("row 2") && err.contains("expected 2 cells"), "{err}");
    }

    #[test]
    fn offset_before_onset() {
        let err = read_words(
            Path::new("t.csv"),
            "word,onset,offset\na,2,1\n",
            &ReadOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("row 2, column `offset`"), "{err}");
    }

    #[test]
    fn non_finite_and_empty_numbers_rejected() {
        let opts = ReadOptions::default();
        let err = read_words(Path::new("t.csv"), "word,onset\na,NaN\n", &opts)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("row 2, column `onset`: expected a number, found `NaN`"),
            "{err}"
        );
        let err = read_words(Path::new("t.csv"), "word,onset\na,\n", &opts)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("row 2, column `onset`") && err.contains("empty cell"),
            "{err}"
        );
    }

    #[test]
    fn skip_labels_apply_to_tables() {
        let w = read_words(Path::new("t.csv"), "word,onset\nsp,0\na,1\n", &ReadOptions::default()).unwrap();
        assert_eq!(w.iter().map(|w| w.text.as_str()).collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn empty_file_needs_header() {
        let err = read_words(Path::new("t.csv"), "", &ReadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("row 1") && err.contains("header"), "{err}");
    }
}
