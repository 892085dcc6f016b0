//! Keeping an output folder current across runs: its manifest (what the last update computed
//! from which inputs and settings), the `changes` log, `cortexflow status` (what is cached, what
//! is stale and why) and `cortexflow prune` (delete what no listed pipeline uses).
//!
//! The manifest is written last, after the tables, so a folder whose manifest exists holds the
//! complete outputs of that manifest's state; every file is written atomically.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray, UInt16Array, UInt64Array};
use serde::{Deserialize, Serialize};

use super::{Inputs, Plan};
use crate::dataflow::{
    DesignKey, FitKey, PartitionKey, Record, ResponseKey, SaeKey, Snapshot, StoryLayerKey, VoxelFitKey, VoxelKey,
};
use crate::features::FeatureSet;
use crate::outputs::columns::{batch, utf8};
use crate::store::artifacts::ArtifactId;
use crate::store::{write_table_arrow_stream, write_table_parquet, TableSchema};
use crate::{Error, Result};

/// File name of the manifest inside the output folder.
pub const MANIFEST: &str = "manifest.json";
/// 2: records with named keys (`dataflow::records`), the reading data of `[reading]` pipelines.
const FORMAT: u32 = 2;

/// What an output folder holds: written after every successful update.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub pipeline: PathBuf,
    /// The pipeline file's settings, one JSON value per section, without the input lists
    /// (stories, subjects): a change here makes results stale.
    pub settings: BTreeMap<String, serde_json::Value>,
    pub store: PathBuf,
    /// Update number: 0 for the folder's first run.
    pub epoch: u64,
    pub unix_ms: u64,
    /// (story, story artifact, file)
    pub stories: Vec<(String, ArtifactId, PathBuf)>,
    /// (story, subject, response artifact, file)
    pub responses: Vec<(String, String, ArtifactId, PathBuf)>,
    /// (corpus chunk, artifact)
    pub corpus: Vec<(String, ArtifactId)>,
    /// (language, reading-data id) of a `[reading]` pipeline
    #[serde(default)]
    pub reading: Vec<(String, ArtifactId)>,
    /// (subject, `voxel-subject` artifact) of a `[voxelwise]` pipeline
    #[serde(default)]
    pub voxel_subjects: Vec<(String, ArtifactId)>,
    /// The state: every record.
    pub records: Vec<Record>,
    /// Store-relative paths of every artifact the state was computed from or reads.
    pub touched: Vec<String>,
}

impl Manifest {
    pub fn load(output: &Path) -> Result<Option<Manifest>> {
        let path = output.join(MANIFEST);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let m: Manifest = serde_json::from_str(&text).map_err(|e| Error::parse(&path, "manifest", e.to_string()))?;
        if m.format != FORMAT {
            return Err(Error::parse(
                &path,
                "format",
                format!("manifest format {} (this build reads {FORMAT})", m.format),
            ));
        }
        Ok(Some(m))
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot::from_records(&self.records)
    }

    pub fn save(&self, output: &Path) -> Result<PathBuf> {
        let path = output.join(MANIFEST);
        let text = serde_json::to_vec_pretty(self).expect("manifest serialises");
        crate::paths::write_atomic(&path, &text)?;
        Ok(path)
    }
}

/// The pipeline's settings by section, without the input lists.
pub fn settings(plan: &Plan) -> BTreeMap<String, serde_json::Value> {
    let mut v = serde_json::to_value(&plan.file).expect("pipeline serialises");
    let mut out = BTreeMap::new();
    if let Some(obj) = v.as_object_mut() {
        for key in ["name", "output", "story"] {
            obj.remove(key);
        }
        if let Some(f) = obj.get_mut("fmri").and_then(|f| f.as_object_mut()) {
            for key in ["subjects", "exclude-subjects", "only-subjects"] {
                f.remove(key);
            }
        }
        if let Some(f) = obj.get_mut("voxelwise").and_then(|f| f.as_object_mut()) {
            f.remove("subjects");
        }
        for (k, v) in obj {
            if !v.is_null() {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The manifest of `snapshot`, computed from `inputs` under `plan`.
pub fn manifest(plan: &Plan, inputs: &Inputs, snapshot: &Snapshot, touched: &BTreeSet<String>, epoch: u64) -> Manifest {
    let file = |m: &BTreeMap<String, PathBuf>, k: &str| m.get(k).cloned().unwrap_or_default();
    Manifest {
        format: FORMAT,
        pipeline: plan.source.clone(),
        settings: settings(plan),
        store: plan.store.clone(),
        epoch,
        unix_ms: unix_ms(),
        stories: inputs
            .stories
            .iter()
            .map(|(s, a)| (s.clone(), a.clone(), file(&inputs.story_files, s)))
            .collect(),
        responses: inputs
            .responses
            .iter()
            .map(|(st, (sub, a))| {
                let f = inputs.subject_files.get(&(st.clone(), sub.clone()));
                (st.clone(), sub.clone(), a.clone(), f.cloned().unwrap_or_default())
            })
            .collect(),
        corpus: inputs.corpus.clone(),
        reading: inputs.reading.clone(),
        voxel_subjects: inputs.voxel_subjects.clone(),
        records: snapshot.records(),
        touched: touched.iter().cloned().collect(),
    }
}

/// One row of the `changes` table.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRow {
    pub epoch: u64,
    pub unix_ms: u64,
    pub record: Record,
    pub diff: isize,
}

/// (kind, story, subject, layer, feature set, artifact, SAE group) of a record.
type RecordCells<'a> = (
    &'static str,
    Option<&'a str>,
    Option<&'a str>,
    Option<usize>,
    Option<&'a str>,
    &'a str,
    Option<&'a str>,
);

fn cells(r: &Record) -> RecordCells<'_> {
    match r {
        Record::Story(s, a) => ("story", Some(s), None, None, None, a, None),
        Record::Response(k, a) => ("response", Some(&k.story), Some(&k.subject), None, None, a, None),
        Record::Words(s, a) => ("words", Some(s), None, None, None, a, None),
        Record::Sae(k, a) => ("sae", None, None, Some(k.layer), None, a, Some(&k.group)),
        Record::Fit(k, a) => (
            "fit",
            Some(&k.story),
            Some(&k.subject),
            Some(k.layer),
            Some(k.feature_set.as_str()),
            a,
            None,
        ),
        Record::Design(k, a) => (
            "design",
            Some(&k.story),
            None,
            Some(k.layer),
            Some(k.feature_set.as_str()),
            a,
            None,
        ),
        Record::Summary(k, a) => (
            "summary",
            Some(&k.story),
            None,
            Some(k.layer),
            Some(k.feature_set.as_str()),
            a,
            None,
        ),
        Record::Labels(k, a) => ("labels", None, None, Some(k.layer), None, a, Some(&k.group)),
        Record::ReadingBase(l, a) => ("reading_base", None, None, None, None, a, Some(l)),
        Record::Reading(k, a) => ("reading", None, None, Some(k.layer), None, a, Some(&k.group)),
        Record::Partition(k, a) => (
            "partition",
            Some(&k.story),
            Some(&k.subject),
            Some(k.layer),
            None,
            a,
            None,
        ),
        Record::PredError(k, a) => ("pred_error", Some(&k.story), None, Some(k.layer), None, a, None),
        Record::VoxelSubject(s, a) => ("voxel_subject", None, Some(s), None, None, a, None),
        Record::VoxelDesign(k, a) => (
            "voxel_design",
            None,
            None,
            Some(k.layer),
            Some(k.feature_set.as_str()),
            a,
            None,
        ),
        Record::VoxelFit(k, a) => (
            "voxel_fit",
            None,
            Some(&k.subject),
            Some(k.layer),
            Some(k.feature_set.as_str()),
            a,
            None,
        ),
    }
}

pub fn changes_batch(rows: &[ChangeRow]) -> Result<arrow::record_batch::RecordBatch> {
    let c: Vec<RecordCells<'_>> = rows.iter().map(|r| cells(&r.record)).collect();
    let opt = |f: &dyn Fn(&RecordCells<'_>) -> Option<String>| -> ArrayRef {
        Arc::new(StringArray::from(c.iter().map(f).collect::<Vec<_>>()))
    };
    batch(vec![
        (
            "epoch",
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.epoch))),
            false,
        ),
        (
            "unix_ms",
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.unix_ms))),
            false,
        ),
        (
            "change",
            utf8(
                rows.iter()
                    .map(|r| if r.diff > 0 { "added" } else { "retracted" }.to_string())
                    .collect(),
            ),
            false,
        ),
        ("kind", utf8(c.iter().map(|x| x.0.to_string()).collect()), false),
        ("language", opt(&|x| x.6.map(String::from)), true),
        ("story", opt(&|x| x.1.map(String::from)), true),
        ("subject", opt(&|x| x.2.map(String::from)), true),
        (
            "layer",
            Arc::new(UInt16Array::from(
                c.iter().map(|x| x.3.map(|l| l as u16)).collect::<Vec<_>>(),
            )),
            true,
        ),
        ("feature_set", opt(&|x| x.4.map(String::from)), true),
        ("artifact", utf8(c.iter().map(|x| x.5.to_string()).collect()), false),
    ])
}

/// Reads the `changes` rows already in `output` (none when the file is absent).
pub fn read_changes(output: &Path) -> Result<Vec<ChangeRow>> {
    let path = output.join("changes.parquet");
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let (_, batches, _) = crate::store::read_parquet(&path)?;
    let mut rows = Vec::new();
    for b in &batches {
        let col = |name: &str| {
            b.column_by_name(name)
                .ok_or_else(|| Error::parse(&path, format!("column `{name}`"), "missing"))
        };
        let u64s = |name: &str| -> Result<Vec<u64>> {
            Ok(col(name)?
                .as_any()
                .downcast_ref::<UInt64Array>()
                .ok_or_else(|| Error::parse(&path, format!("column `{name}`"), "expected u64"))?
                .values()
                .to_vec())
        };
        let strs = |name: &str| -> Result<Vec<Option<String>>> {
            let a = col(name)?;
            let a = a
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| Error::parse(&path, format!("column `{name}`"), "expected utf8"))?;
            Ok(a.iter().map(|v| v.map(String::from)).collect())
        };
        let (epoch, ms) = (u64s("epoch")?, u64s("unix_ms")?);
        let (change, kind, language, story, subject, set, art) = (
            strs("change")?,
            strs("kind")?,
            strs("language")?,
            strs("story")?,
            strs("subject")?,
            strs("feature_set")?,
            strs("artifact")?,
        );
        let layer = col("layer")?;
        let layer = layer
            .as_any()
            .downcast_ref::<UInt16Array>()
            .ok_or_else(|| Error::parse(&path, "column `layer`", "expected u16"))?;
        for i in 0..b.num_rows() {
            let bad = |what: &str| Error::parse(&path, format!("row {i}"), what.to_string());
            let s = || story[i].clone().ok_or_else(|| bad("no story"));
            let sub = || subject[i].clone().ok_or_else(|| bad("no subject"));
            let l = || {
                (!layer.is_null(i))
                    .then(|| layer.value(i) as usize)
                    .ok_or_else(|| bad("no layer"))
            };
            let f = || {
                set[i]
                    .clone()
                    .map(FeatureSet::from)
                    .ok_or_else(|| bad("no feature set"))
            };
            let g = || language[i].clone().ok_or_else(|| bad("no language"));
            let a = art[i].clone().unwrap_or_default();
            let record = match kind[i].as_deref().unwrap_or("") {
                "story" => Record::Story(s()?, a),
                "response" => Record::Response(
                    ResponseKey {
                        story: s()?,
                        subject: sub()?,
                    },
                    a,
                ),
                "words" => Record::Words(s()?, a),
                "sae" => Record::Sae(
                    SaeKey {
                        group: g()?,
                        layer: l()?,
                    },
                    a,
                ),
                "fit" => Record::Fit(
                    FitKey {
                        subject: sub()?,
                        story: s()?,
                        layer: l()?,
                        feature_set: f()?,
                    },
                    a,
                ),
                "design" => Record::Design(
                    DesignKey {
                        story: s()?,
                        layer: l()?,
                        feature_set: f()?,
                    },
                    a,
                ),
                "summary" => Record::Summary(
                    DesignKey {
                        story: s()?,
                        layer: l()?,
                        feature_set: f()?,
                    },
                    a,
                ),
                "labels" => Record::Labels(
                    SaeKey {
                        group: g()?,
                        layer: l()?,
                    },
                    a,
                ),
                "partition" => Record::Partition(
                    PartitionKey {
                        subject: sub()?,
                        story: s()?,
                        layer: l()?,
                    },
                    a,
                ),
                "pred_error" => Record::PredError(
                    StoryLayerKey {
                        story: s()?,
                        layer: l()?,
                    },
                    a,
                ),
                "reading_base" => Record::ReadingBase(g()?, a),
                "voxel_subject" => Record::VoxelSubject(sub()?, a),
                "voxel_design" => Record::VoxelDesign(
                    VoxelKey {
                        layer: l()?,
                        feature_set: f()?,
                    },
                    a,
                ),
                "voxel_fit" => Record::VoxelFit(
                    VoxelFitKey {
                        subject: sub()?,
                        layer: l()?,
                        feature_set: f()?,
                    },
                    a,
                ),
                "reading" => Record::Reading(
                    SaeKey {
                        group: g()?,
                        layer: l()?,
                    },
                    a,
                ),
                other => return Err(bad(&format!("unknown kind `{other}`"))),
            };
            rows.push(ChangeRow {
                epoch: epoch[i],
                unix_ms: ms[i],
                record,
                diff: if change[i].as_deref() == Some("added") { 1 } else { -1 },
            });
        }
    }
    Ok(rows)
}

/// Appends `rows` to the folder's `changes` log: `changes.parquet` and `changes.arrows` (Arrow
/// IPC stream), each rewritten atomically.
pub fn append_changes(output: &Path, rows: &[ChangeRow]) -> Result<Vec<PathBuf>> {
    let mut all = read_changes(output)?;
    all.extend_from_slice(rows);
    let b = changes_batch(&all)?;
    let schema = TableSchema::builtin("changes")?;
    let sizes = Default::default();
    schema
        .check(&b.schema(), &sizes)
        .map_err(|e| Error::Invalid(format!("table changes: {e}")))?;
    let pq = output.join("changes.parquet");
    let st = output.join("changes.arrows");
    write_table_parquet(&pq, &schema, &sizes, std::slice::from_ref(&b), &[])?;
    write_table_arrow_stream(&st, &schema, &sizes, std::slice::from_ref(&b))?;
    Ok(vec![pq, st])
}

/// Holds a shared lock on the store while a run uses it (`cortexflow prune` takes it exclusively).
pub struct StoreLock(#[allow(dead_code)] std::fs::File);

fn lock_file(store: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(store).map_err(|e| Error::io(store, e))?;
    let p = store.join(".lock");
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(|e| Error::io(&p, e))
}

/// A shared lock on the store, waiting while a prune holds it.
pub fn lock_shared(store: &Path) -> Result<StoreLock> {
    let f = lock_file(store)?;
    f.lock_shared().map_err(|e| Error::io(store.join(".lock"), e))?;
    Ok(StoreLock(f))
}

// ---- status

/// What `cortexflow status` found.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub manifest: Option<Manifest>,
    /// Reasons the outputs are stale, one line each; empty when up to date.
    pub stale: Vec<String>,
    /// Per stage: (artifacts of the last run present in the store, bytes, missing).
    pub cached: BTreeMap<String, (usize, u64, usize)>,
    /// Artifacts in the store that the last run did not use: (count, bytes).
    pub unused: (usize, u64),
}

fn stage_of(rel: &str) -> &str {
    rel.split('/').next().unwrap_or(rel)
}

fn size_of(path: &Path) -> u64 {
    if path.is_dir() {
        std::fs::read_dir(path)
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| size_of(&e.path())).sum())
            .unwrap_or(0)
    } else {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }
}

/// Every artifact in the store, as store-relative paths (`stage/xx/entry`), with leftover
/// temporary files (from killed writers) listed separately.
pub fn store_entries(store: &Path) -> Result<(Vec<String>, Vec<PathBuf>)> {
    let (mut entries, mut temps) = (Vec::new(), Vec::new());
    let read = |p: &Path| -> Result<Vec<std::fs::DirEntry>> {
        let mut v: Vec<_> = std::fs::read_dir(p)
            .map_err(|e| Error::io(p, e))?
            .filter_map(|e| e.ok())
            .collect();
        v.sort_by_key(|e| e.file_name());
        Ok(v)
    };
    if !store.is_dir() {
        return Ok((entries, temps));
    }
    for stage in read(store)? {
        if !stage.path().is_dir() {
            continue;
        }
        for shard in read(&stage.path())? {
            if !shard.path().is_dir() {
                continue;
            }
            for e in read(&shard.path())? {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') && name.contains(".tmp-") {
                    temps.push(e.path());
                } else {
                    entries.push(format!(
                        "{}/{}/{name}",
                        stage.file_name().to_string_lossy(),
                        shard.file_name().to_string_lossy()
                    ));
                }
            }
        }
    }
    Ok((entries, temps))
}

/// Compares the plan's current inputs and settings with the output folder's manifest.
pub fn status(plan: &Plan) -> Result<Status> {
    let inputs = super::input_records(plan, None)?;
    let mut st = Status::default();
    let (entries, _) = store_entries(&plan.store)?;
    let Some(m) = Manifest::load(&plan.output)? else {
        st.stale
            .push(format!("never run: no {} in {}", MANIFEST, plan.output.display()));
        st.unused = (
            entries.len(),
            entries.iter().map(|e| size_of(&plan.store.join(e))).sum(),
        );
        return Ok(st);
    };
    let affects = |section: &str| match section {
        "model" | "data-root" | "store" => "everything",
        "sae" => "SAEs and everything after them",
        "encoding" => "designs, fits and summaries",
        "summary" => "summaries",
        "fmri" => "fits and summaries",
        "taxonomy" => "labels, taxonomy designs, their fits and tables",
        "voxelwise" => "voxelwise designs and fits",
        _ => "the results",
    };
    let now = settings(plan);
    let keys: BTreeSet<&String> = now.keys().chain(m.settings.keys()).collect();
    for k in keys {
        if now.get(k) != m.settings.get(k) {
            st.stale.push(format!(
                "settings [{k}] changed since the last run: recompute {}",
                affects(k)
            ));
        }
    }
    let old_stories: BTreeMap<&str, &str> = m.stories.iter().map(|(s, a, _)| (s.as_str(), a.as_str())).collect();
    for (s, a) in &inputs.stories {
        let file = inputs
            .story_files
            .get(s)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        match old_stories.get(s.as_str()) {
            None => st.stale.push(format!(
                "new story `{s}` ({file}): LM, SAE codes, designs and fits to compute"
            )),
            Some(old) if *old != a => st.stale.push(format!(
                "story `{s}` changed ({file}): its LM activations and everything after them"
            )),
            _ => {}
        }
    }
    let now_stories: BTreeSet<&str> = inputs.stories.iter().map(|(s, _)| s.as_str()).collect();
    for s in old_stories.keys().filter(|s| !now_stories.contains(*s)) {
        st.stale
            .push(format!("story `{s}` removed: its results are to be retracted"));
    }
    // fits per subject: as many as a subject of the last update has (taxonomy sets included),
    // else layers × feature sets
    let snap = m.snapshot();
    let mut by_subject: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (k, _) in &snap.fits {
        *by_subject.entry((k.story.as_str(), k.subject.as_str())).or_default() += 1;
    }
    let per_subject = by_subject
        .values()
        .copied()
        .max()
        .unwrap_or(plan.layers.len() * plan.file.encoding.feature_sets.len());
    let old_resp: BTreeMap<(&str, &str), &str> = m
        .responses
        .iter()
        .map(|(s, sub, a, _)| ((s.as_str(), sub.as_str()), a.as_str()))
        .collect();
    for (story, (sub, a)) in &inputs.responses {
        let file = inputs
            .subject_files
            .get(&(story.clone(), sub.clone()))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        match old_resp.get(&(story.as_str(), sub.as_str())) {
            None => st.stale.push(format!(
                "new subject `{sub}` ({file}): {per_subject} fits (layers × feature sets) and the summaries to compute"
            )),
            Some(old) if *old != a => st.stale.push(format!(
                "subject `{sub}` changed ({file}): its {per_subject} fits and the summaries"
            )),
            _ => {}
        }
    }
    let now_resp: BTreeSet<(&str, &str)> = inputs
        .responses
        .iter()
        .map(|(s, (sub, _))| (s.as_str(), sub.as_str()))
        .collect();
    for (s, sub) in old_resp.keys().filter(|k| !now_resp.contains(*k)) {
        st.stale.push(format!(
            "subject `{sub}` (story `{s}`) removed: its fits are to be retracted and the summaries recomputed"
        ));
    }
    let old_voxel: BTreeMap<&str, &str> = m.voxel_subjects.iter().map(|(s, a)| (s.as_str(), a.as_str())).collect();
    let voxel_sets = plan.voxelwise.as_ref().map(|v| v.feature_sets.len()).unwrap_or(0) * plan.layers.len();
    let voxel_sets = match plan.voxelwise.as_ref().is_some_and(|v| v.taxonomy_sets) {
        true => format!("{voxel_sets} voxelwise fits (layers × feature sets, plus the taxonomy's sets)"),
        false => format!("{voxel_sets} voxelwise fits (layers × feature sets)"),
    };
    for (sub, a) in &inputs.voxel_subjects {
        match old_voxel.get(sub.as_str()) {
            None => st.stale.push(format!(
                "new voxelwise subject `{sub}`: {voxel_sets} to compute, \
                 with no decomposition when the stories are unchanged"
            )),
            Some(old) if *old != a => st.stale.push(format!(
                "voxelwise subject `{sub}` changed (a response or region file): its {voxel_sets}"
            )),
            _ => {}
        }
    }
    let now_voxel: BTreeSet<&str> = inputs.voxel_subjects.iter().map(|(s, _)| s.as_str()).collect();
    for sub in old_voxel.keys().filter(|s| !now_voxel.contains(*s)) {
        st.stale.push(format!(
            "voxelwise subject `{sub}` removed: its voxelwise fits are to be retracted"
        ));
    }
    if inputs.corpus != m.corpus {
        st.stale
            .push("the SAE corpus changed: SAEs and everything after them".to_string());
    }
    if inputs.reading != m.reading {
        st.stale.push(
            "the reading data changed ([reading] settings or files): the reading baseline and every layer's reading models"
                .to_string(),
        );
    }
    let used: BTreeSet<&str> = m.touched.iter().map(String::as_str).collect();
    for rel in &m.touched {
        let p = plan.store.join(rel);
        let e = st.cached.entry(stage_of(rel).to_string()).or_default();
        if p.exists() {
            e.0 += 1;
            e.1 += size_of(&p);
        } else {
            e.2 += 1;
        }
    }
    let missing: usize = st.cached.values().map(|c| c.2).sum();
    if missing > 0 {
        st.stale.push(format!(
            "{missing} artifact(s) of the last run are no longer in the store (pruned or deleted): a rerun recomputes them"
        ));
    }
    let unused: Vec<&String> = entries.iter().filter(|e| !used.contains(e.as_str())).collect();
    st.unused = (unused.len(), unused.iter().map(|e| size_of(&plan.store.join(e))).sum());
    st.manifest = Some(m);
    Ok(st)
}

/// A byte count for people (KiB, MiB, GiB).
pub fn human_bytes(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// The status as text, for the terminal.
pub fn status_text(plan: &Plan, st: &Status) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "pipeline {} → {}", plan.source.display(), plan.output.display());
    let _ = writeln!(s, "store {}", plan.store.display());
    if let Some(m) = &st.manifest {
        let snap = m.snapshot();
        let _ = writeln!(
            s,
            "last update: epoch {}, {} stories, {} subjects, {} fits, {} summaries",
            m.epoch,
            snap.stories.len(),
            snap.responses.len(),
            snap.fits.len(),
            snap.summaries.len()
        );
        let _ = writeln!(s, "\ncached (artifacts of the last update):");
        let _ = writeln!(s, "  {:<22} {:>8} {:>12} {:>8}", "stage", "present", "size", "missing");
        for (stage, (n, b, miss)) in &st.cached {
            let _ = writeln!(s, "  {stage:<22} {n:>8} {:>12} {miss:>8}", human_bytes(*b));
        }
    }
    let _ = writeln!(
        s,
        "\nnot used by the last update: {} artifact(s), {} (`cortexflow prune {}` deletes them)",
        st.unused.0,
        human_bytes(st.unused.1),
        plan.source.display()
    );
    if st.stale.is_empty() {
        let _ = writeln!(s, "\nup to date: `cortexflow run` would compute nothing new");
    } else {
        let _ = writeln!(s, "\nstale ({}):", st.stale.len());
        for r in &st.stale {
            let _ = writeln!(s, "  - {r}");
        }
        let _ = writeln!(s, "`cortexflow run {}` computes only these", plan.source.display());
    }
    s
}

// ---- prune

/// What a prune removed (or, dry, would remove).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub kept: usize,
    pub removed: Vec<String>,
    pub bytes: u64,
    pub temporaries: usize,
}

/// Deletes from `store` every artifact that none of `manifests` uses, and leftover temporary
/// files. Takes the store's lock exclusively (fails if a run holds it); each artifact is removed
/// on its own (a folder is first renamed aside), so an interrupted prune leaves a consistent store.
pub fn prune(store: &Path, manifests: &[Manifest], dry_run: bool) -> Result<PruneReport> {
    let f = lock_file(store)?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(Error::Invalid(format!(
                "the store {} is in use by a run; prune when it has finished",
                store.display()
            )))
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(store.join(".lock"), e)),
    }
    let keep: BTreeSet<&str> = manifests
        .iter()
        .flat_map(|m| m.touched.iter().map(String::as_str))
        .collect();
    let (entries, temps) = store_entries(store)?;
    let mut rep = PruneReport {
        temporaries: temps.len(),
        ..Default::default()
    };
    for e in entries {
        if keep.contains(e.as_str()) {
            rep.kept += 1;
            continue;
        }
        let p = store.join(&e);
        rep.bytes += size_of(&p);
        if !dry_run {
            if p.is_dir() {
                let aside = crate::paths::temp_sibling(&p);
                std::fs::rename(&p, &aside).map_err(|x| Error::io(&p, x))?;
                std::fs::remove_dir_all(&aside).map_err(|x| Error::io(&aside, x))?;
            } else {
                std::fs::remove_file(&p).map_err(|x| Error::io(&p, x))?;
            }
        }
        rep.removed.push(e);
    }
    if !dry_run {
        for t in &temps {
            let _ = if t.is_dir() {
                std::fs::remove_dir_all(t)
            } else {
                std::fs::remove_file(t)
            };
        }
    }
    Ok(rep)
}

/// `cortexflow prune PIPELINE...`: the pipelines' manifests, grouped by store, then [`prune`].
pub fn prune_pipelines(plans: &[Plan], dry_run: bool) -> Result<Vec<(PathBuf, PruneReport)>> {
    let mut by_store: BTreeMap<PathBuf, Vec<Manifest>> = BTreeMap::new();
    for p in plans {
        let m = Manifest::load(&p.output)?.ok_or_else(|| {
            Error::Invalid(format!(
                "{} has no {MANIFEST} in {}: run it first (pruning without it would delete everything it uses)",
                p.source.display(),
                p.output.display()
            ))
        })?;
        by_store.entry(p.store.clone()).or_default().push(m);
    }
    by_store
        .into_iter()
        .map(|(store, ms)| prune(&store, &ms, dry_run).map(|r| (store, r)))
        .collect()
}
