//! Word frequencies from the wordfreq package's lists (Speer et al., wordfreq 3.1.1 on PyPI;
//! Apache-2.0 code, CC BY-SA 4.0 data), for per-language lexical controls in English, French and
//! Chinese.
//!
//! **Input.** A `*.msgpack.gz` list as shipped in the package (`large_en.msgpack.gz`, …): gzip
//! of a MessagePack array whose first element is the header `{"format": "cB", "version": 1}` and
//! whose element `i + 1` is the list of words in bucket `i`, i.e. with frequency 10^(−i/100)
//! (centibels). Reported on the Zipf scale: Zipf = log10(frequency per billion words) = 9 − i/100.
//!
//! **Lookup.** [`WordFrequencies::zipf`] normalises a stimulus word the way the lists were built,
//! as far as a single word goes: Unicode lowercase, typographic apostrophes as `'`, punctuation
//! stripped from both ends, and a French elision's apostrophe dropped (`j'` → `j`, as wordfreq's
//! tokenizer stores it). Chinese words are looked up as written (the lists are segmented and in
//! simplified characters, like the LPP annotation). A word not in the list has no frequency
//! (`None`); callers decide how to fill it and report the coverage.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// A frequency list: word → bucket (Zipf = 9 − bucket / 100).
#[derive(Debug, Clone)]
pub struct WordFrequencies {
    buckets: HashMap<String, u16>,
    /// The lowest Zipf value of the list (its last non-empty bucket).
    pub min_zipf: f64,
}

impl WordFrequencies {
    /// Reads a wordfreq `cB` list (`*.msgpack.gz`).
    pub fn load(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(file)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::parse(path, "gzip", e.to_string()))?;
        Self::from_msgpack(&bytes).map_err(|(at, what)| Error::parse(path, format!("byte {at}"), what))
    }

    fn from_msgpack(b: &[u8]) -> std::result::Result<Self, (usize, String)> {
        let mut r = MsgReader { b, at: 0 };
        let n = r.array_len()?;
        if n == 0 {
            return Err((0, "expected the cB header and buckets, found an empty array".into()));
        }
        let header_at = r.at;
        let mut format = String::new();
        let mut version = 0u64;
        for _ in 0..r.map_len()? {
            let key = r.str()?;
            match key.as_str() {
                "format" => format = r.str()?,
                "version" => version = r.uint()?,
                _ => return Err((r.at, format!("unexpected header key `{key}`"))),
            }
        }
        if format != "cB" || version != 1 {
            return Err((
                header_at,
                format!("expected header format \"cB\" version 1, found {format:?} version {version}"),
            ));
        }
        let mut buckets = HashMap::new();
        let mut last = 0u16;
        for i in 0..n - 1 {
            let k = r.array_len()?;
            for _ in 0..k {
                // the first (most frequent) bucket of a word wins, as in wordfreq
                buckets.entry(r.str()?).or_insert(i as u16);
            }
            if k > 0 {
                last = i as u16;
            }
        }
        Ok(WordFrequencies {
            buckets,
            min_zipf: 9.0 - f64::from(last) / 100.0,
        })
    }

    /// Words in the list.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Zipf frequency of an entry exactly as listed (no normalisation), `None` when absent.
    pub fn listed(&self, entry: &str) -> Option<f64> {
        self.buckets.get(entry).map(|b| 9.0 - f64::from(*b) / 100.0)
    }

    /// Zipf frequency of `word` (see the module doc for the normalisation), `None` when absent.
    pub fn zipf(&self, word: &str) -> Option<f64> {
        let w = normalize(word);
        let b = self.buckets.get(&w).or_else(|| {
            // a French elision (`j'`, `qu'`) is stored without its apostrophe
            w.strip_suffix('\'').and_then(|s| self.buckets.get(s))
        })?;
        Some(9.0 - f64::from(*b) / 100.0)
    }
}

/// Lowercase, `’`/`‘` as `'`, punctuation and symbols stripped from both ends (an apostrophe at
/// the end is kept: it marks an elision).
pub fn normalize(word: &str) -> String {
    let w = word
        .trim()
        .to_lowercase()
        .replace(['\u{2019}', '\u{2018}', '\u{02bc}'], "'");
    let strip = |c: char| c != '\'' && !c.is_alphanumeric();
    w.trim_start_matches(|c: char| strip(c) || c == '\'')
        .trim_end_matches(strip)
        .to_string()
}

/// Just enough MessagePack for wordfreq's lists: arrays, maps, strings, unsigned integers.
struct MsgReader<'a> {
    b: &'a [u8],
    at: usize,
}

impl MsgReader<'_> {
    fn take(&mut self, n: usize) -> std::result::Result<&[u8], (usize, String)> {
        let s = self
            .b
            .get(self.at..self.at + n)
            .ok_or((self.at, format!("truncated: {n} more bytes expected")))?;
        self.at += n;
        Ok(s)
    }

    fn be(&mut self, n: usize) -> std::result::Result<u64, (usize, String)> {
        Ok(self.take(n)?.iter().fold(0u64, |v, &x| (v << 8) | u64::from(x)))
    }

    fn tag(&mut self) -> std::result::Result<u8, (usize, String)> {
        Ok(self.take(1)?[0])
    }

    fn array_len(&mut self) -> std::result::Result<usize, (usize, String)> {
        let at = self.at;
        match self.tag()? {
            t @ 0x90..=0x9f => Ok(usize::from(t & 0x0f)),
            0xdc => Ok(self.be(2)? as usize),
            0xdd => Ok(self.be(4)? as usize),
            t => Err((at, format!("expected an array, found type byte 0x{t:02x}"))),
        }
    }

    fn map_len(&mut self) -> std::result::Result<usize, (usize, String)> {
        let at = self.at;
        match self.tag()? {
            t @ 0x80..=0x8f => Ok(usize::from(t & 0x0f)),
            0xde => Ok(self.be(2)? as usize),
            0xdf => Ok(self.be(4)? as usize),
            t => Err((at, format!("expected a map, found type byte 0x{t:02x}"))),
        }
    }

    fn str(&mut self) -> std::result::Result<String, (usize, String)> {
        let at = self.at;
        let n = match self.tag()? {
            t @ 0xa0..=0xbf => usize::from(t & 0x1f),
            0xd9 => self.be(1)? as usize,
            0xda => self.be(2)? as usize,
            0xdb => self.be(4)? as usize,
            t => return Err((at, format!("expected a string, found type byte 0x{t:02x}"))),
        };
        let s = self.take(n)?;
        String::from_utf8(s.to_vec()).map_err(|e| (at, format!("invalid UTF-8 in a string: {e}")))
    }

    fn uint(&mut self) -> std::result::Result<u64, (usize, String)> {
        let at = self.at;
        match self.tag()? {
            t @ 0x00..=0x7f => Ok(u64::from(t)),
            0xcc => self.be(1),
            0xcd => self.be(2),
            0xce => self.be(4),
            0xcf => self.be(8),
            t => Err((at, format!("expected an unsigned integer, found type byte 0x{t:02x}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list built by hand: header, bucket 0 empty, bucket 1 = ["the", "de"], bucket 2 = ["l"].
    fn tiny() -> Vec<u8> {
        let mut b = vec![0x94, 0x82];
        b.push(0xa6);
        b.extend(b"format");
        b.push(0xa2);
        b.extend(b"cB");
        b.push(0xa7);
        b.extend(b"version");
        b.push(0x01);
        b.push(0x90);
        b.push(0x92);
        b.push(0xa3);
        b.extend(b"the");
        b.push(0xa2);
        b.extend(b"de");
        b.push(0x91);
        b.push(0xa1);
        b.extend(b"l");
        b
    }

    #[test]
    fn buckets_map_to_zipf_and_words_are_normalised() {
        let f = WordFrequencies::from_msgpack(&tiny()).unwrap();
        assert_eq!(f.len(), 3);
        assert_eq!(f.zipf("The,"), Some(8.99));
        assert_eq!(f.zipf("«de»"), Some(8.99));
        assert_eq!(f.zipf("L’"), Some(8.98), "elision: apostrophe dropped");
        assert_eq!(f.zipf("rabbit"), None);
        assert_eq!(f.min_zipf, 8.98);
    }

    #[test]
    fn a_bad_header_or_a_truncated_list_names_the_byte() {
        let mut b = tiny();
        b[10] = b'X'; // format "cB" → "XB"
        let e = WordFrequencies::from_msgpack(&b).unwrap_err();
        assert_eq!(e.0, 1, "the header starts at byte 1: {e:?}");
        assert!(e.1.contains("\"XB\""), "{e:?}");
        let b = tiny();
        let e = WordFrequencies::from_msgpack(&b[..b.len() - 1]).unwrap_err();
        assert!(e.1.contains("truncated"), "{e:?}");
    }
}
