//! GGUF reader: header, metadata and tensors of a llama.cpp model file, with dequantization to f32.
//!
//! Input: a `.gguf` file (versions 2 and 3). Output: [`Gguf`], holding typed metadata and tensor
//! descriptors over a memory map; [`Gguf::tensor_f32`] dequantizes one tensor into a row-major
//! `Vec<f32>` whose shape is the GGUF dimensions reversed (GGUF lists the fastest-varying dimension
//! first, so a PyTorch `[out, in]` weight is stored as dims `[in, out]`).
//!
//! Supported tensor types: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q6_K. Any other type is
//! an error naming the tensor and the type. Truncated or corrupt files are errors naming the byte
//! offset where reading failed, never a panic.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;

use crate::{Error, Result};

const MAGIC: u32 = 0x4655_4747; // "GGUF", little endian
const DEFAULT_ALIGNMENT: u64 = 32;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    /// Integer value of any integer type (and of bool), if it fits in u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            Value::Bool(v) => Some(v as u64),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// ggml tensor types (the subset cortexflow dequantizes, plus names for the rest in errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q6K,
    Other(u32),
}

impl GgmlType {
    fn from_id(id: u32) -> Self {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            14 => GgmlType::Q6K,
            30 => GgmlType::BF16,
            other => GgmlType::Other(other),
        }
    }

    /// Human-readable name as llama.cpp prints it.
    pub fn name(self) -> String {
        match self {
            GgmlType::F32 => "F32".into(),
            GgmlType::F16 => "F16".into(),
            GgmlType::BF16 => "BF16".into(),
            GgmlType::Q4_0 => "Q4_0".into(),
            GgmlType::Q4_1 => "Q4_1".into(),
            GgmlType::Q5_0 => "Q5_0".into(),
            GgmlType::Q5_1 => "Q5_1".into(),
            GgmlType::Q8_0 => "Q8_0".into(),
            GgmlType::Q4K => "Q4_K".into(),
            GgmlType::Q6K => "Q6_K".into(),
            GgmlType::Other(id) => {
                let known = [
                    (9, "Q8_1"),
                    (10, "Q2_K"),
                    (11, "Q3_K"),
                    (13, "Q5_K"),
                    (15, "Q8_K"),
                    (16, "IQ2_XXS"),
                    (17, "IQ2_XS"),
                    (18, "IQ3_XXS"),
                    (19, "IQ1_S"),
                    (20, "IQ4_NL"),
                    (21, "IQ3_S"),
                    (22, "IQ2_S"),
                    (23, "IQ4_XS"),
                    (24, "I8"),
                    (25, "I16"),
                    (26, "I32"),
                    (27, "I64"),
                    (28, "F64"),
                    (29, "IQ1_M"),
                ];
                match known.iter().find(|(k, _)| *k == id) {
                    Some((_, n)) => format!("{n} (ggml type {id})"),
                    None => format!("unknown ggml type {id}"),
                }
            }
        }
    }

    /// (elements per block, bytes per block), or None for unsupported types.
    fn block_layout(self) -> Option<(usize, usize)> {
        Some(match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4K => (256, 144),
            GgmlType::Q6K => (256, 210),
            GgmlType::Other(_) => return None,
        })
    }
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: fastest-varying dimension first.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the tensor data in the file.
    pub offset: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        // checked when the file was opened
        self.dims.iter().product()
    }
    /// Row-major shape (GGUF dims reversed), e.g. `[out, in]` for a linear weight.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// An opened GGUF file.
pub struct Gguf {
    path: PathBuf,
    map: Mmap,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, what: &str) -> Error {
        Error::parse(
            self.path,
            format!("byte {}", self.pos),
            format!(
                "truncated or corrupt GGUF while reading {what} (file has {} bytes)",
                self.bytes.len()
            ),
        )
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| self.err(what))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap()))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        let n = usize::try_from(n).map_err(|_| self.err(what))?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| {
            Error::parse(
                self.path,
                format!("byte {}", self.pos - n),
                format!("{what} is not valid UTF-8"),
            )
        })
    }
    fn value(&mut self, ty: u32, what: &str, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.u8(what)?),
            1 => Value::I8(self.u8(what)? as i8),
            2 => Value::U16(self.u16(what)?),
            3 => Value::I16(self.u16(what)? as i16),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(self.u32(what)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(what)?)),
            7 => Value::Bool(self.u8(what)? != 0),
            8 => Value::Str(self.string(what)?),
            9 => {
                if depth > 2 {
                    return Err(self.err("nested array (too deep)"));
                }
                let inner = self.u32(what)?;
                let n = self.u64(what)?;
                // Each element takes at least one byte: a length beyond the file is corruption.
                if n > (self.bytes.len() - self.pos) as u64 {
                    return Err(self.err(what));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(inner, what, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(self.u64(what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(what)?)),
            other => {
                return Err(Error::parse(
                    self.path,
                    format!("byte {}", self.pos),
                    format!("unknown GGUF metadata value type {other} in {what}"),
                ))
            }
        })
    }
}

impl Gguf {
    /// Opens and parses a GGUF file; tensor data stays memory-mapped until dequantized.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only and the file is not modified by cortexflow while open.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let mut c = Cursor {
            bytes: &map,
            pos: 0,
            path,
        };
        let magic = c.u32("magic")?;
        if magic != MAGIC {
            return Err(Error::parse(
                path,
                "byte 0",
                "not a GGUF file (magic bytes are not \"GGUF\")",
            ));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::parse(
                path,
                "byte 4",
                format!("GGUF version {version} is not supported (2 or 3)"),
            ));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let ty = c.u32("metadata type")?;
            let v = c.value(ty, &format!("metadata `{key}`"), 0)?;
            metadata.insert(key, v);
        }
        let mut infos = Vec::new();
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32("tensor rank")?;
            if n_dims > 4 {
                return Err(Error::parse(
                    path,
                    format!("byte {}", c.pos),
                    format!("tensor `{name}` has rank {n_dims} > 4"),
                ));
            }
            let dims = (0..n_dims).map(|_| c.u64("tensor dims")).collect::<Result<Vec<_>>>()?;
            let ty = GgmlType::from_id(c.u32("tensor type")?);
            let rel = c.u64("tensor offset")?;
            infos.push((name, dims, ty, rel));
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(DEFAULT_ALIGNMENT);
        if alignment == 0 {
            return Err(Error::parse(path, "metadata `general.alignment`", "alignment is 0"));
        }
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = map.len() as u64;
        let mut tensors = Vec::with_capacity(infos.len());
        for (name, dims, ggml_type, rel) in infos {
            let corrupt = |what: &str| Error::parse(path, format!("tensor `{name}`"), format!("corrupt GGUF: {what}"));
            let n_el = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| corrupt(&format!("dimensions {dims:?} overflow")))?;
            if rel % alignment != 0 {
                return Err(corrupt(&format!(
                    "data offset {rel} is not a multiple of the alignment {alignment}"
                )));
            }
            let n_bytes = match ggml_type.block_layout() {
                Some((per_block, bytes)) => {
                    if n_el % per_block as u64 != 0 {
                        return Err(Error::Model(format!(
                            "tensor `{name}` has {n_el} elements, not a multiple of the {} block size {per_block}",
                            ggml_type.name()
                        )));
                    }
                    (n_el / per_block as u64)
                        .checked_mul(bytes as u64)
                        .ok_or_else(|| corrupt(&format!("size of {} elements overflows", n_el)))?
                }
                None => 0, // unsupported: reported if and when the tensor is read
            };
            let offset = data_start
                .checked_add(rel)
                .ok_or_else(|| corrupt("data offset overflows"))?;
            let end = offset
                .checked_add(n_bytes)
                .ok_or_else(|| corrupt("data end overflows"))?;
            if end > file_len {
                return Err(Error::parse(
                    path,
                    format!("tensor `{name}`"),
                    format!("truncated GGUF: tensor data ends at byte {end} but the file has {file_len} bytes"),
                ));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
                n_bytes,
            });
        }
        Ok(Gguf {
            path: path.to_path_buf(),
            map,
            version,
            metadata,
            tensors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// Required metadata as an integer; the error names the key.
    pub fn req_u64(&self, key: &str) -> Result<u64> {
        self.get(key).and_then(Value::as_u64).ok_or_else(|| {
            Error::Model(format!(
                "{}: metadata `{key}` is missing or not an integer",
                self.path.display()
            ))
        })
    }

    pub fn req_str(&self, key: &str) -> Result<&str> {
        self.get(key).and_then(Value::as_str).ok_or_else(|| {
            Error::Model(format!(
                "{}: metadata `{key}` is missing or not a string",
                self.path.display()
            ))
        })
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Dequantizes the named tensor to f32 (row-major, shape = [`TensorInfo::shape`]).
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let info = self
            .tensor(name)
            .ok_or_else(|| Error::Model(format!("{}: tensor `{name}` not found", self.path.display())))?;
        if info.ggml_type.block_layout().is_none() {
            return Err(Error::Model(format!(
                "tensor `{name}` has type {}, which cortexflow cannot dequantize (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q6_K)",
                info.ggml_type.name()
            )));
        }
        let bytes = &self.map[info.offset as usize..(info.offset + info.n_bytes) as usize];
        let mut out = vec![0f32; info.n_elements() as usize];
        dequantize(info.ggml_type, bytes, &mut out);
        Ok((info.shape(), out))
    }
}

/// Dequantizes `bytes` of the given type into `out` (length = number of elements).
/// Block layouts follow ggml's `ggml-quants.c` reference dequantizers.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let h = |b: &[u8], i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes(c.try_into().unwrap());
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(18)) {
                let d = h(b, 0);
                for j in 0..16 {
                    let q = b[2 + j];
                    o[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
                    o[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(20)) {
                let (d, m) = (h(b, 0), h(b, 2));
                for j in 0..16 {
                    let q = b[4 + j];
                    o[j] = (q & 0x0f) as f32 * d + m;
                    o[j + 16] = (q >> 4) as f32 * d + m;
                }
            }
        }
        GgmlType::Q5_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(22)) {
                let d = h(b, 0);
                let qh = u32::from_le_bytes(b[2..6].try_into().unwrap());
                for j in 0..16 {
                    let xh0 = (((qh >> j) << 4) & 0x10) as u8;
                    let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
                    let q = b[6 + j];
                    o[j] = (((q & 0x0f) | xh0) as i32 - 16) as f32 * d;
                    o[j + 16] = (((q >> 4) | xh1) as i32 - 16) as f32 * d;
                }
            }
        }
        GgmlType::Q5_1 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(24)) {
                let (d, m) = (h(b, 0), h(b, 2));
                let qh = u32::from_le_bytes(b[4..8].try_into().unwrap());
                for j in 0..16 {
                    let xh0 = (((qh >> j) << 4) & 0x10) as u8;
                    let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
                    let q = b[8 + j];
                    o[j] = ((q & 0x0f) | xh0) as f32 * d + m;
                    o[j + 16] = ((q >> 4) | xh1) as f32 * d + m;
                }
            }
        }
        GgmlType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(34)) {
                let d = h(b, 0);
                for j in 0..32 {
                    o[j] = (b[2 + j] as i8) as f32 * d;
                }
            }
        }
        GgmlType::Q4K => {
            // block: d (f16), dmin (f16), scales[12] (6-bit packed), qs[128]
            for (o, b) in out.chunks_exact_mut(256).zip(bytes.chunks_exact(144)) {
                let (d, dmin) = (h(b, 0), h(b, 2));
                let scales = &b[4..16];
                let qs = &b[16..144];
                let mut is = 0;
                for (chunk, q) in o.chunks_exact_mut(64).zip(qs.chunks_exact(32)) {
                    let (sc1, m1) = scale_min_k4(is, scales);
                    let (sc2, m2) = scale_min_k4(is + 1, scales);
                    let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                    for l in 0..32 {
                        chunk[l] = d1 * (q[l] & 0x0f) as f32 - m1;
                        chunk[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
                    }
                    is += 2;
                }
            }
        }
        GgmlType::Q6K => {
            // block: ql[128], qh[64], scales[16] (i8), d (f16)
            for (o, b) in out.chunks_exact_mut(256).zip(bytes.chunks_exact(210)) {
                let d = h(b, 208);
                for n in 0..2 {
                    let ql = &b[n * 64..n * 64 + 64];
                    let qh = &b[128 + n * 32..128 + n * 32 + 32];
                    let sc = &b[192 + n * 8..192 + n * 8 + 8];
                    let y = &mut o[n * 128..n * 128 + 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                        y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                        y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                        y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                        y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                    }
                }
            }
        }
        GgmlType::Other(_) => unreachable!("checked by the caller"),
    }
}

fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}
