//! Bytes of a text file → `String`: UTF-8 (with or without a byte-order mark) or UTF-16 LE/BE
//! (with a byte-order mark, as Praat writes non-ASCII TextGrids; without one when the first
//! character is plain ASCII).

use std::path::Path;

use crate::{Error, Result};

/// Decodes a text file. Invalid UTF-8 or UTF-16 is [`Error::Parse`] with the line number of the
/// first bad character.
pub(crate) fn decode_text(path: &Path, bytes: &[u8]) -> Result<String> {
    if let Some(rest) = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]) {
        return utf8(path, rest);
    }
    if let Some(rest) = bytes.strip_prefix(&[0xFF, 0xFE]) {
        return utf16(path, rest, u16::from_le_bytes);
    }
    if let Some(rest) = bytes.strip_prefix(&[0xFE, 0xFF]) {
        return utf16(path, rest, u16::from_be_bytes);
    }
    // UTF-16 without a byte-order mark: the first character is ASCII, so one byte of the first
    // code unit is zero.
    if bytes.len() >= 2 && bytes.len().is_multiple_of(2) {
        match (bytes[0], bytes[1]) {
            (b, 0) if b != 0 && b.is_ascii() => return utf16(path, bytes, u16::from_le_bytes),
            (0, b) if b != 0 && b.is_ascii() => return utf16(path, bytes, u16::from_be_bytes),
            _ => {}
        }
    }
    utf8(path, bytes)
}

fn utf8(path: &Path, bytes: &[u8]) -> Result<String> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.to_string()),
        Err(e) => {
            let good = &bytes[..e.valid_up_to()];
            let line = 1 + good.iter().filter(|&&b| b == b'\n').count();
            Err(Error::parse(
                path,
                format!("line {line}"),
                format!(
                    "expected UTF-8 text, found the invalid byte 0x{:02X} (byte offset {}); save \
                     the file as UTF-8 or as UTF-16 with a byte-order mark",
                    bytes[e.valid_up_to()],
                    e.valid_up_to()
                ),
            ))
        }
    }
}

fn utf16(path: &Path, bytes: &[u8], unit: fn([u8; 2]) -> u16) -> Result<String> {
    if !bytes.len().is_multiple_of(2) {
        return Err(Error::parse(
            path,
            "end of file",
            format!(
                "expected UTF-16 text (an even number of bytes), found {} bytes",
                bytes.len()
            ),
        ));
    }
    let units = bytes.chunks_exact(2).map(|c| unit([c[0], c[1]]));
    let mut out = String::with_capacity(bytes.len() / 2);
    let mut line = 1;
    for ch in char::decode_utf16(units) {
        match ch {
            Ok(c) => {
                if c == '\n' {
                    line += 1;
                }
                out.push(c);
            }
            Err(e) => {
                return Err(Error::parse(
                    path,
                    format!("line {line}"),
                    format!(
                        "expected UTF-16 text, found the unpaired surrogate 0x{:04X}",
                        e.unpaired_surrogate()
                    ),
                ))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc16(s: &str, le: bool, bom: bool) -> Vec<u8> {
        let mut v = Vec::new();
        let units = bom.then_some(0xFEFFu16).into_iter().chain(s.encode_utf16());
        for u in units {
            v.extend_from_slice(&if le { u.to_le_bytes() } else { u.to_be_bytes() });
        }
        v
    }

    #[test]
    fn utf8_with_and_without_bom() {
        let p = Path::new("x");
        assert_eq!(decode_text(p, "héllo".as_bytes()).unwrap(), "héllo");
        let mut b = vec![0xEF, 0xBB, 0xBF];
        b.extend_from_slice("héllo".as_bytes());
        assert_eq!(decode_text(p, &b).unwrap(), "héllo");
    }

    #[test]
    fn utf16_le_be_bom_and_no_bom() {
        let p = Path::new("x");
        let s = "File type = \"ooTextFile\"\n爱丽丝 🐇\n";
        for le in [true, false] {
            for bom in [true, false] {
                assert_eq!(decode_text(p, &enc16(s, le, bom)).unwrap(), s, "le={le} bom={bom}");
            }
        }
    }

    #[test]
    fn invalid_utf8_names_line() {
        let err = decode_text(Path::new("bad.txt"), b"ok\nok\n\xff\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.txt") && err.contains("line 3") && err.contains("0xFF"),
            "{err}"
        );
    }

    #[test]
    fn unpaired_surrogate_names_line() {
        let mut b = enc16("a\nb\n", true, true);
        b.extend_from_slice(&0xD800u16.to_le_bytes());
        let err = decode_text(Path::new("bad.TextGrid"), &b).unwrap_err().to_string();
        assert!(err.contains("line 3") && err.contains("surrogate"), "{err}");
    }
}
