//! A minimal ONNX protobuf writer: just the messages cortexflow needs to emit a model graph
//! (ModelProto, GraphProto, NodeProto, AttributeProto, TensorProto, ValueInfoProto).
//!
//! Field numbers follow `onnx/onnx.proto` (IR version 8). Messages are encoded bottom-up into byte
//! vectors; the model is streamed to disk without building one more copy of the weights.
//!
//! A protobuf message cannot exceed 2 GiB, so a larger model keeps its weights in an *external
//! data* file beside the graph (ONNX's own mechanism: a tensor names the file, an offset and a
//! length instead of holding raw bytes). [`ExternalData`] writes that file; a tensor moved there
//! by [`ExternalData::spill`] frees its bytes at once, so an importer that spills each weight as
//! it converts it never holds the whole model in memory.

use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

/// ONNX tensor element types (TensorProto.DataType).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32 = 1,
    I32 = 6,
    I64 = 7,
    Bool = 9,
    F16 = 10,
}

// ---------------------------------------------------------------- wire format
fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}
fn key(buf: &mut Vec<u8>, field: u32, wire: u8) {
    varint(buf, ((field as u64) << 3) | wire as u64);
}
fn put_int(buf: &mut Vec<u8>, field: u32, v: i64) {
    key(buf, field, 0);
    varint(buf, v as u64);
}
fn put_bytes(buf: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(buf, field, 2);
    varint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}
fn put_str(buf: &mut Vec<u8>, field: u32, s: &str) {
    put_bytes(buf, field, s.as_bytes());
}
fn put_f32(buf: &mut Vec<u8>, field: u32, v: f32) {
    key(buf, field, 5);
    buf.extend_from_slice(&v.to_le_bytes());
}

// ---------------------------------------------------------------- messages
/// A tensor: shape and little-endian raw bytes, or where those bytes are in the external data file.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub name: String,
    pub dtype: DType,
    pub dims: Vec<i64>,
    pub raw: Vec<u8>,
    /// Set when the bytes were moved to the external data file (`raw` is then empty).
    pub external: Option<ExternalRef>,
}

/// A tensor's bytes in the external data file: file name (relative to the graph), offset, length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalRef {
    pub location: String,
    pub offset: u64,
    pub length: u64,
}

impl Tensor {
    pub fn f32(name: &str, dims: &[i64], data: &[f32]) -> Self {
        debug_assert_eq!(dims.iter().product::<i64>() as usize, data.len());
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor {
            name: name.into(),
            dtype: DType::F32,
            dims: dims.to_vec(),
            raw,
            external: None,
        }
    }
    pub fn f16(name: &str, dims: &[i64], data: &[f32]) -> Self {
        let raw = data
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        Tensor {
            name: name.into(),
            dtype: DType::F16,
            dims: dims.to_vec(),
            raw,
            external: None,
        }
    }
    /// f32 values stored as `dtype`: F32, or F16 (rounded once).
    pub fn from_f32(name: &str, dtype: DType, dims: &[i64], data: &[f32]) -> Self {
        match dtype {
            DType::F32 => Tensor::f32(name, dims, data),
            DType::F16 => Tensor::f16(name, dims, data),
            _ => panic!("f32 values are stored as F32 or F16, not {dtype:?}"),
        }
    }
    pub fn bool(name: &str, dims: &[i64], data: &[bool]) -> Self {
        Tensor {
            name: name.into(),
            dtype: DType::Bool,
            dims: dims.to_vec(),
            raw: data.iter().map(|&v| v as u8).collect(),
            external: None,
        }
    }
    pub fn i64(name: &str, dims: &[i64], data: &[i64]) -> Self {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        Tensor {
            name: name.into(),
            dtype: DType::I64,
            dims: dims.to_vec(),
            raw,
            external: None,
        }
    }
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.raw.len() + 64);
        for &d in &self.dims {
            put_int(&mut b, 1, d);
        }
        put_int(&mut b, 2, self.dtype as i64);
        put_str(&mut b, 8, &self.name);
        match &self.external {
            None => put_bytes(&mut b, 9, &self.raw),
            Some(x) => {
                // external_data (13): StringStringEntryProto {key = 1, value = 2}; data_location
                // (14) = EXTERNAL (1)
                for (k, v) in [
                    ("location", x.location.clone()),
                    ("offset", x.offset.to_string()),
                    ("length", x.length.to_string()),
                ] {
                    let mut e = Vec::new();
                    put_str(&mut e, 1, k);
                    put_str(&mut e, 2, &v);
                    put_bytes(&mut b, 13, &e);
                }
                put_int(&mut b, 14, 1);
            }
        }
        b
    }
}

/// A node attribute.
#[derive(Debug, Clone)]
pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Str(String),
    Tensor(Tensor),
    /// A subgraph, e.g. the body of a `Loop`.
    Graph(Box<Graph>),
}

/// A subgraph (a `Loop` body): it may read any value of the enclosing graph by name.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub name: String,
    pub nodes: Vec<Node>,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
}

impl Graph {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        for n in &self.nodes {
            put_bytes(&mut b, 1, &n.encode());
        }
        put_str(&mut b, 2, &self.name);
        for i in &self.inputs {
            put_bytes(&mut b, 11, &i.encode());
        }
        for o in &self.outputs {
            put_bytes(&mut b, 12, &o.encode());
        }
        b
    }
}

/// One graph node.
#[derive(Debug, Clone)]
pub struct Node {
    pub op: String,
    pub name: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attrs: Vec<(String, Attr)>,
}

impl Node {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        for i in &self.inputs {
            put_str(&mut b, 1, i);
        }
        for o in &self.outputs {
            put_str(&mut b, 2, o);
        }
        put_str(&mut b, 3, &self.name);
        put_str(&mut b, 4, &self.op);
        for (name, attr) in &self.attrs {
            let mut a = Vec::new();
            put_str(&mut a, 1, name);
            match attr {
                Attr::Float(v) => {
                    put_f32(&mut a, 2, *v);
                    put_int(&mut a, 20, 1);
                }
                Attr::Int(v) => {
                    put_int(&mut a, 3, *v);
                    put_int(&mut a, 20, 2);
                }
                Attr::Str(s) => {
                    put_str(&mut a, 4, s);
                    put_int(&mut a, 20, 3);
                }
                Attr::Tensor(t) => {
                    put_bytes(&mut a, 5, &t.encode());
                    put_int(&mut a, 20, 4);
                }
                Attr::Graph(g) => {
                    put_bytes(&mut a, 6, &g.encode());
                    put_int(&mut a, 20, 5);
                }
                Attr::Ints(vs) => {
                    for v in vs {
                        put_int(&mut a, 8, *v);
                    }
                    put_int(&mut a, 20, 7);
                }
            }
            put_bytes(&mut b, 5, &a);
        }
        b
    }
}

/// A dimension of a graph input/output: fixed or symbolic.
#[derive(Debug, Clone)]
pub enum Dim {
    Fixed(i64),
    Param(String),
}

/// A graph input or output.
#[derive(Debug, Clone)]
pub struct ValueInfo {
    pub name: String,
    pub dtype: DType,
    pub dims: Vec<Dim>,
}

impl ValueInfo {
    fn encode(&self) -> Vec<u8> {
        let mut shape = Vec::new();
        for d in &self.dims {
            let mut dim = Vec::new();
            match d {
                Dim::Fixed(v) => put_int(&mut dim, 1, *v),
                Dim::Param(p) => put_str(&mut dim, 2, p),
            }
            put_bytes(&mut shape, 1, &dim);
        }
        let mut tensor_type = Vec::new();
        put_int(&mut tensor_type, 1, self.dtype as i64);
        put_bytes(&mut tensor_type, 2, &shape);
        let mut type_proto = Vec::new();
        put_bytes(&mut type_proto, 1, &tensor_type);
        let mut b = Vec::new();
        put_str(&mut b, 1, &self.name);
        put_bytes(&mut b, 2, &type_proto);
        b
    }
}

/// A whole model: one graph, one default-domain opset.
#[derive(Debug, Default)]
pub struct Model {
    pub graph_name: String,
    pub opset: i64,
    pub nodes: Vec<Node>,
    pub initializers: Vec<Tensor>,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    pub metadata: Vec<(String, String)>,
    pub doc: String,
}

impl Model {
    /// Streams the encoded ModelProto to `w`.
    pub fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        // Graph fields other than initializers are small: encode them in memory.
        let mut head = Vec::new();
        for n in &self.nodes {
            put_bytes(&mut head, 1, &n.encode());
        }
        put_str(&mut head, 2, &self.graph_name);
        let mut tail = Vec::new();
        for i in &self.inputs {
            put_bytes(&mut tail, 11, &i.encode());
        }
        for o in &self.outputs {
            put_bytes(&mut tail, 12, &o.encode());
        }
        // Initializers: encode one at a time, summing lengths first.
        let init_len: usize = self
            .initializers
            .iter()
            .map(|t| {
                let n = encoded_tensor_len(t);
                1 + varint_len(n as u64) + n
            })
            .sum();
        let graph_len = head.len() + init_len + tail.len();

        let mut model = Vec::new();
        put_int(&mut model, 1, 8); // ir_version
        put_str(&mut model, 2, "cortexflow");
        put_str(&mut model, 3, env!("CARGO_PKG_VERSION"));
        if !self.doc.is_empty() {
            put_str(&mut model, 6, &self.doc);
        }
        let mut opset = Vec::new();
        put_str(&mut opset, 1, "");
        put_int(&mut opset, 2, self.opset);
        put_bytes(&mut model, 8, &opset);
        for (k, v) in &self.metadata {
            let mut e = Vec::new();
            put_str(&mut e, 1, k);
            put_str(&mut e, 2, v);
            put_bytes(&mut model, 14, &e);
        }
        key(&mut model, 7, 2);
        varint(&mut model, graph_len as u64);
        w.write_all(&model)?;
        w.write_all(&head)?;
        for t in &self.initializers {
            let enc = t.encode();
            let mut k = Vec::new();
            key(&mut k, 5, 2);
            varint(&mut k, enc.len() as u64);
            w.write_all(&k)?;
            w.write_all(&enc)?;
        }
        w.write_all(&tail)?;
        Ok(())
    }
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn encoded_tensor_len(t: &Tensor) -> usize {
    if t.external.is_some() {
        return t.encode().len(); // no raw bytes: small
    }
    // Cheap enough: the raw bytes dominate, the header is computed exactly by encoding it empty.
    let header = Tensor {
        raw: Vec::new(),
        ..t.clone_header()
    }
    .encode()
    .len()
        - 2; // minus empty raw field
    header + 1 + varint_len(t.raw.len() as u64) + t.raw.len()
}

impl Tensor {
    fn clone_header(&self) -> Tensor {
        Tensor {
            name: self.name.clone(),
            dtype: self.dtype,
            dims: self.dims.clone(),
            raw: Vec::new(),
            external: None,
        }
    }
}

/// Alignment of each tensor in the external data file: a page, so a runtime may map weights in
/// place rather than copy them.
pub const EXTERNAL_ALIGN: u64 = 4096;

/// The external data file being written: tensors are appended, each at an [`EXTERNAL_ALIGN`]ed
/// offset. Written under a temporary name and renamed into place by [`ExternalData::finish`];
/// dropped unfinished (an import that failed), the temporary file is removed.
pub struct ExternalData {
    /// The name tensors refer to (relative to the graph's folder), e.g. `model.onnx.data`.
    location: String,
    target: PathBuf,
    tmp: PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
    offset: u64,
    /// Tensors smaller than this stay inline (constants, norms, scalars).
    min_bytes: usize,
}

impl ExternalData {
    /// Starts `dir/location`; tensors of at least `min_bytes` bytes go there.
    pub fn create(dir: &Path, location: &str, min_bytes: usize) -> std::io::Result<Self> {
        let target = dir.join(location);
        let tmp = crate::paths::temp_sibling(&target);
        let file = std::fs::File::create(&tmp)?;
        Ok(ExternalData {
            location: location.to_string(),
            target,
            tmp,
            file: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
            offset: 0,
            min_bytes,
        })
    }

    /// The file name tensors refer to.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Where the finished file will be.
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// Bytes written so far (padding included).
    pub fn len(&self) -> u64 {
        self.offset
    }

    /// Whether nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.offset == 0
    }

    /// Moves `t`'s bytes into the file (if it is large enough and still inline) and frees them.
    pub fn spill(&mut self, t: &mut Tensor) -> std::io::Result<()> {
        if t.external.is_some() || t.raw.len() < self.min_bytes {
            return Ok(());
        }
        let raw = std::mem::take(&mut t.raw);
        t.external = Some(self.write_aligned(raw.len() as u64, |w| w.write_all(&raw))?);
        Ok(())
    }

    /// A tensor of `values` stored as `dtype` (F32 or F16): encoded straight into the file when it
    /// is large enough, in 64 kB pieces (never the whole tensor's bytes in memory), else inline.
    pub fn append_f32(&mut self, name: &str, dtype: DType, dims: &[i64], values: &[f32]) -> std::io::Result<Tensor> {
        let width = match dtype {
            DType::F32 => 4,
            DType::F16 => 2,
            _ => panic!("append_f32 stores f32 values as F32 or F16, not {dtype:?}"),
        };
        let length = values.len() * width;
        if length < self.min_bytes {
            return Ok(Tensor::from_f32(name, dtype, dims, values));
        }
        let external = self.write_aligned(length as u64, |w| {
            let mut buf = Vec::with_capacity(1 << 16);
            for piece in values.chunks((1 << 16) / width) {
                buf.clear();
                for v in piece {
                    match dtype {
                        DType::F16 => buf.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes()),
                        _ => buf.extend_from_slice(&v.to_le_bytes()),
                    }
                }
                w.write_all(&buf)?;
            }
            Ok(())
        })?;
        Ok(Tensor {
            name: name.into(),
            dtype,
            dims: dims.to_vec(),
            raw: Vec::new(),
            external: Some(external),
        })
    }

    /// Pads the file to the next [`EXTERNAL_ALIGN`] boundary, lets `write` append `length` bytes
    /// there, and returns where they are.
    fn write_aligned(
        &mut self,
        length: u64,
        write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
    ) -> std::io::Result<ExternalRef> {
        let w = self.file.as_mut().expect("write after finish");
        let start = self.offset.div_ceil(EXTERNAL_ALIGN) * EXTERNAL_ALIGN;
        w.write_all(&vec![0u8; (start - self.offset) as usize])?;
        write(w)?;
        self.offset = start + length;
        Ok(ExternalRef {
            location: self.location.clone(),
            offset: start,
            length,
        })
    }

    /// Flushes, syncs and renames the file into place (the temporary file is removed if any
    /// step fails).
    pub fn finish(mut self) -> std::io::Result<PathBuf> {
        let w = self.file.take().expect("finish once");
        let result = (|| {
            let mut file = w.into_inner().map_err(|e| e.into_error())?;
            debug_assert_eq!(file.stream_position()?, self.offset);
            file.sync_all()?;
            std::fs::rename(&self.tmp, &self.target)
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(e);
        }
        Ok(self.target.clone())
    }
}

impl Drop for ExternalData {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl Model {
    /// Bytes of the initializers still held inline.
    pub fn inline_bytes(&self) -> usize {
        self.initializers.iter().map(|t| t.raw.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_encode_like_protobuf() {
        let mut b = Vec::new();
        varint(&mut b, 300);
        assert_eq!(b, vec![0xac, 0x02]);
        assert_eq!(varint_len(300), 2);
        assert_eq!(varint_len(127), 1);
    }

    #[test]
    fn tensor_length_prediction_matches_encoding() {
        for n in [0usize, 1, 31, 32, 1000, 40_000] {
            let t = Tensor::f32("w", &[n as i64], &vec![1.0; n]);
            assert_eq!(encoded_tensor_len(&t), t.encode().len(), "n = {n}");
        }
    }
}
