//! The content-addressed artifact store: big arrays (activations, codes, designs, fits) live here
//! as files, and dataflow records carry only their ids.
//!
//! An artifact id is the SHA-256 (hex) of everything that determines the artifact: the stage
//! name, the stage's code revision, its configuration and the ids of its inputs. A stage asks
//! [`ArtifactStore::get_or_compute`]: if the id is present it is reused (across runs, too),
//! otherwise it is computed and written atomically (temp file + rename), so an interrupted run
//! never leaves a partial artifact. Arrays are stored as safetensors files (readable from Python
//! with `safetensors.numpy.load_file`), small records as JSON.
//!
//! Layout: `ROOT/<stage>/<id[0..2]>/<id>.<ext>`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ndarray::{Array2, ArrayView2};
use safetensors::tensor::{Dtype, TensorView};
use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Hex SHA-256 identifying an artifact.
pub type ArtifactId = String;

/// Builds artifact ids from the parts that determine an artifact.
#[derive(Clone)]
pub struct KeyBuilder(Sha256);

impl KeyBuilder {
    /// Starts a key for `stage` at code revision `revision`.
    pub fn new(stage: &str, revision: u32) -> Self {
        let mut h = Sha256::new();
        h.update(b"cortexflow-artifact-v1\0");
        h.update(stage.as_bytes());
        h.update(b"\0");
        h.update(revision.to_le_bytes());
        KeyBuilder(h)
    }
    /// Adds a named part (length-prefixed so parts cannot run into each other).
    pub fn part(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        let v = value.as_ref();
        self.0.update((name.len() as u64).to_le_bytes());
        self.0.update(name.as_bytes());
        self.0.update((v.len() as u64).to_le_bytes());
        self.0.update(v);
        self
    }
    /// Adds a serialisable configuration value (as canonical JSON).
    pub fn config(self, name: &str, value: &impl Serialize) -> Self {
        let json = serde_json::to_vec(value).expect("config serialises");
        self.part(name, json)
    }
    pub fn finish(self) -> ArtifactId {
        format!("{:x}", self.0.finalize())
    }
}

/// SHA-256 of a file's bytes (used to key raw inputs by content).
pub fn file_digest(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

/// Named f32/f64 matrices plus string metadata: the payload of array artifacts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Arrays {
    pub f32: BTreeMap<String, Array2<f32>>,
    pub f64: BTreeMap<String, Array2<f64>>,
    pub meta: BTreeMap<String, String>,
}

impl Arrays {
    pub fn with_f32(mut self, name: &str, a: Array2<f32>) -> Self {
        self.f32.insert(name.into(), a);
        self
    }
    pub fn with_f64(mut self, name: &str, a: Array2<f64>) -> Self {
        self.f64.insert(name.into(), a);
        self
    }
    pub fn with_meta(mut self, k: &str, v: impl Into<String>) -> Self {
        self.meta.insert(k.into(), v.into());
        self
    }
    pub fn f32(&self, name: &str) -> Result<ArrayView2<'_, f32>> {
        self.f32
            .get(name)
            .map(|a| a.view())
            .ok_or_else(|| Error::Invalid(format!("artifact has no f32 array `{name}`")))
    }
    pub fn f64(&self, name: &str) -> Result<ArrayView2<'_, f64>> {
        self.f64
            .get(name)
            .map(|a| a.view())
            .ok_or_else(|| Error::Invalid(format!("artifact has no f64 array `{name}`")))
    }

    fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut bufs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (k, a) in &self.f32 {
            bufs.push((
                k.clone(),
                Dtype::F32,
                a.shape().to_vec(),
                a.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ));
        }
        for (k, a) in &self.f64 {
            bufs.push((
                k.clone(),
                Dtype::F64,
                a.shape().to_vec(),
                a.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ));
        }
        let views = bufs
            .iter()
            .map(|(k, dt, shape, data)| {
                TensorView::new(*dt, shape.clone(), data)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| Error::Invalid(e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let meta: HashMap<String, String> = self.meta.clone().into_iter().collect();
        safetensors::serialize(views, Some(meta)).map_err(|e| Error::Invalid(format!("safetensors: {e}")))
    }

    fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let bad = |m: String| Error::parse(path, "safetensors", m);
        let (_, md) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        let mut out = Arrays {
            meta: md.metadata().clone().unwrap_or_default().into_iter().collect(),
            ..Default::default()
        };
        for (name, t) in st.tensors() {
            let shape = t.shape();
            if shape.len() != 2 {
                return Err(bad(format!("tensor `{name}` has rank {}, expected 2", shape.len())));
            }
            let dims = (shape[0], shape[1]);
            match t.dtype() {
                Dtype::F32 => {
                    let v: Vec<f32> = t
                        .data()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect();
                    out.f32
                        .insert(name, Array2::from_shape_vec(dims, v).map_err(|e| bad(e.to_string()))?);
                }
                Dtype::F64 => {
                    let v: Vec<f64> = t
                        .data()
                        .chunks_exact(8)
                        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                        .collect();
                    out.f64
                        .insert(name, Array2::from_shape_vec(dims, v).map_err(|e| bad(e.to_string()))?);
                }
                other => return Err(bad(format!("tensor `{name}` has dtype {other:?}, expected F32 or F64"))),
            }
        }
        Ok(out)
    }
}

/// Per-stage counts of artifacts computed and reused in this process.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StoreStats {
    pub computed: BTreeMap<String, usize>,
    pub reused: BTreeMap<String, usize>,
}

/// The store: a folder, plus counters.
#[derive(Clone)]
pub struct ArtifactStore {
    root: PathBuf,
    stats: Arc<Mutex<StoreStats>>,
    seconds: Arc<Mutex<BTreeMap<String, f64>>>,
    /// Store-relative paths read or written since the last [`ArtifactStore::take_touched`].
    touched: Arc<Mutex<BTreeSet<String>>>,
}

impl ArtifactStore {
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
        Ok(ArtifactStore {
            root: root.to_path_buf(),
            stats: Arc::default(),
            seconds: Arc::default(),
            touched: Arc::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, stage: &str, id: &str, ext: &str) -> PathBuf {
        self.root.join(Self::relative(stage, id, ext))
    }

    /// An artifact's path inside the store (`ext` empty for a folder artifact).
    pub fn relative(stage: &str, id: &str, ext: &str) -> String {
        match ext {
            "" => format!("{stage}/{}/{id}", &id[..2]),
            _ => format!("{stage}/{}/{id}.{ext}", &id[..2]),
        }
    }

    fn touch(&self, stage: &str, id: &str, ext: &str) {
        self.touched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(Self::relative(stage, id, ext));
    }

    /// Whether artifact `id` of `stage` exists (a use of it: it is recorded as touched).
    pub fn has(&self, stage: &str, id: &str, ext: &str) -> bool {
        self.touch(stage, id, ext);
        self.path(stage, id, ext).exists()
    }

    /// The store-relative paths of the artifacts read or written since the last call: what a run
    /// needs kept (see `cortexflow prune`).
    pub fn take_touched(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.touched.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn stats(&self) -> StoreStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Seconds spent computing each stage's artifacts in this process (summed over workers).
    pub fn seconds(&self) -> BTreeMap<String, f64> {
        self.seconds.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs `f`, adding its duration to `stage`'s compute time.
    pub fn timed<T>(&self, stage: &str, id: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t0 = std::time::Instant::now();
        let out = f()?;
        let dt = t0.elapsed().as_secs_f64();
        *self
            .seconds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(stage.to_string())
            .or_default() += dt;
        tracing::info!("{stage} {} computed in {dt:.2} s", &id[..12]);
        Ok(out)
    }

    fn count(&self, stage: &str, computed: bool) {
        self.add_count(stage, computed, 1);
    }

    /// Adds `n` to the computed (or reused) count of `stage`: work that is not one artifact, e.g.
    /// the decompositions a voxelwise fit computed or read from its cache.
    pub fn add_count(&self, stage: &str, computed: bool, n: usize) {
        if n == 0 {
            return;
        }
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        let m = if computed { &mut s.computed } else { &mut s.reused };
        *m.entry(stage.to_string()).or_default() += n;
    }

    fn write(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        crate::paths::write_atomic(path, bytes)
    }

    /// The arrays artifact `id` of `stage`, computing and storing it if absent.
    pub fn arrays(&self, stage: &str, id: &str, compute: impl FnOnce() -> Result<Arrays>) -> Result<Arrays> {
        let path = self.path(stage, id, "safetensors");
        self.touch(stage, id, "safetensors");
        if let Ok(bytes) = std::fs::read(&path) {
            if let Ok(a) = Arrays::from_bytes(&bytes, &path) {
                self.count(stage, false);
                return Ok(a);
            }
            tracing::warn!("artifact {} is unreadable; recomputing it", path.display());
        }
        let a = self.timed(stage, id, compute)?;
        self.write(&path, &a.to_bytes()?)?;
        self.count(stage, true);
        Ok(a)
    }

    /// Stores arrays computed elsewhere (e.g. one of several outputs of a timed computation),
    /// counting them as computed without timing them again.
    pub fn put_arrays(&self, stage: &str, id: &str, a: &Arrays) -> Result<()> {
        self.write(&self.path(stage, id, "safetensors"), &a.to_bytes()?)?;
        self.touch(stage, id, "safetensors");
        self.count(stage, true);
        Ok(())
    }

    /// Reads an arrays artifact that must exist.
    pub fn load_arrays(&self, stage: &str, id: &str) -> Result<Arrays> {
        let path = self.path(stage, id, "safetensors");
        self.touch(stage, id, "safetensors");
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        Arrays::from_bytes(&bytes, &path)
    }

    /// The JSON artifact `id` of `stage`, computing and storing it if absent.
    pub fn json<T: Serialize + DeserializeOwned>(
        &self,
        stage: &str,
        id: &str,
        compute: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let path = self.path(stage, id, "json");
        self.touch(stage, id, "json");
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Ok(v) = serde_json::from_str(&text) {
                self.count(stage, false);
                return Ok(v);
            }
            tracing::warn!("artifact {} is unreadable; recomputing it", path.display());
        }
        let v = self.timed(stage, id, compute)?;
        self.write(&path, &serde_json::to_vec(&v).expect("artifact serialises"))?;
        self.count(stage, true);
        Ok(v)
    }

    /// The folder artifact `id` of `stage` (e.g. a saved SAE), filled by `compute` into a temporary
    /// sibling folder that is renamed into place only when complete.
    pub fn dir(&self, stage: &str, id: &str, compute: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
        let path = self.root.join(Self::relative(stage, id, ""));
        self.touch(stage, id, "");
        if path.is_dir() {
            self.count(stage, false);
            return Ok(path);
        }
        let tmp = crate::paths::temp_sibling(&path);
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        if let Err(e) = self.timed(stage, id, || compute(&tmp)) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        if let Err(e) = std::fs::rename(&tmp, &path) {
            let _ = std::fs::remove_dir_all(&tmp);
            if !path.is_dir() {
                return Err(Error::io(&path, e));
            }
        }
        self.count(stage, true);
        Ok(path)
    }

    /// Reads a JSON artifact that must exist.
    pub fn load_json<T: DeserializeOwned>(&self, stage: &str, id: &str) -> Result<T> {
        let path = self.path(stage, id, "json");
        self.touch(stage, id, "json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::parse(&path, "json", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_every_part_and_on_part_boundaries() {
        let a = KeyBuilder::new("s", 1).part("x", "ab").part("y", "c").finish();
        let b = KeyBuilder::new("s", 1).part("x", "a").part("y", "bc").finish();
        let c = KeyBuilder::new("s", 2).part("x", "ab").part("y", "c").finish();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, KeyBuilder::new("s", 1).part("x", "ab").part("y", "c").finish());
    }

    #[test]
    fn arrays_round_trip_and_are_computed_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let a = Arrays::default()
            .with_f32("x", ndarray::array![[1.0f32, 2.0], [3.0, 4.5]])
            .with_f64("y", ndarray::array![[0.25f64, -1.0, 1e-300]])
            .with_meta("k", "v");
        let id = KeyBuilder::new("t", 1).finish();
        let got = store.arrays("t", &id, || Ok(a.clone())).unwrap();
        assert_eq!(got, a);
        let again = store.arrays("t", &id, || panic!("must be reused")).unwrap();
        assert_eq!(again, a);
        assert_eq!(store.stats().computed["t"], 1);
        assert_eq!(store.stats().reused["t"], 1);
        // No temp files are left next to the artifact.
        let dir_entries: Vec<_> = std::fs::read_dir(store.path("t", &id, "x").parent().unwrap())
            .unwrap()
            .collect();
        assert_eq!(dir_entries.len(), 1);
    }

    #[test]
    fn a_failed_computation_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let id = KeyBuilder::new("t", 1).finish();
        assert!(store
            .json::<u32>("t", &id, || Err(Error::Invalid("boom".into())))
            .is_err());
        assert!(!store.path("t", &id, "json").exists());
        assert_eq!(store.json::<u32>("t", &id, || Ok(7)).unwrap(), 7);
    }
}
