//! `cortexflow run PIPELINE`: the validated plan's inputs go into the artifact store, flow through
//! the dataflow (src/dataflow), and the final state is written as Parquet tables (schemas in
//! data-schemas/), a PNG plot and a Markdown report under the plan's output folder.
//! [`seeds`]: the same pipeline over several SAE seeds, with the spread of its results.
//!
//! May import: `outputs`, `report`, `dataflow`, `stages`, `config` and everything below them;
//! never `cli`.

pub mod incremental;
pub mod seeds;
pub mod simulated;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::config::Plan;
use crate::dataflow::{self, Epoch, EpochResult, ReadingRec, ResponseRec, StoryRec, Topology, VoxelSubjectRec};
use crate::stages::{self, Ctx, StoredStory};
use crate::stimulus::{self, ReadOptions, StimulusFormat, Story};
use crate::store::artifacts::ArtifactStore;
use crate::Result;
use incremental::Manifest;

/// Words per corpus record: the corpus is cut into chunks so that workers share the LM work
/// (each chunk is run with its own windows; the first window of a chunk starts without context).
pub const CORPUS_CHUNK_WORDS: usize = 2_500;

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Timely worker threads (results do not depend on it).
    pub workers: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { workers: 1 }
    }
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub output: PathBuf,
    pub files: Vec<PathBuf>,
    /// The output folder's update number (0 for its first run).
    pub epoch: u64,
    pub result: EpochResult,
    pub seconds: f64,
    /// Compute seconds per stage, summed over workers.
    pub stage_seconds: std::collections::BTreeMap<String, f64>,
    /// The SAEs (language, layer, held-out R²) under the floor `[sae] min-r2`: the run's closing
    /// message repeats the report's warning about them.
    pub poor_saes: Vec<(String, usize, f64)>,
    /// That floor.
    pub sae_min_r2: f64,
}

/// The context of a plan: store opened; the LM session, which a process's workers share, runs on
/// all of its cores.
pub fn context(plan: Plan) -> Result<Ctx> {
    let store = ArtifactStore::open(&plan.store)?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let lm_threads = plan.file.model.threads.unwrap_or(cores);
    let ctx = Ctx {
        plan: Arc::new(plan),
        store,
        lm_threads,
        pool: None,
        reading_data: Default::default(),
    };
    stages::reading::register_reading_data(&ctx, &ctx.plan)?;
    Ok(ctx)
}

/// The plan's inputs as dataflow records, with the file each came from.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub stories: Vec<StoryRec>,
    pub corpus: Vec<StoryRec>,
    pub responses: Vec<ResponseRec>,
    /// The reading data of a `[reading]` pipeline: (language, reading-data id).
    pub reading: Vec<ReadingRec>,
    /// The subjects of a `[voxelwise]` pipeline: (subject, `voxel-subject` artifact).
    pub voxel_subjects: Vec<VoxelSubjectRec>,
    /// Source file of each story (by story id) and response table (by (story, subject); none
    /// for simulated responses).
    pub story_files: BTreeMap<String, PathBuf>,
    pub subject_files: BTreeMap<(String, String), PathBuf>,
}

/// The plan's inputs as records, stored in the artifact store first.
pub fn prepare_inputs(ctx: &Ctx) -> Result<Inputs> {
    input_records(&ctx.plan, Some(&ctx.store))
}

/// The plan's inputs as records; stored in `store` when given (without it, nothing is written:
/// `cortexflow status` only compares ids).
pub fn input_records(plan: &Plan, store: Option<&ArtifactStore>) -> Result<Inputs> {
    let mut inputs = Inputs::default();
    for (cfg, story) in &plan.stories {
        let st = StoredStory {
            story: story.clone(),
            n_trs: cfg.n_trs,
            tr_s: cfg.tr_s,
            t0_s: cfg.t0_s,
        };
        let id = match store {
            Some(s) => stages::put_story(s, &st)?,
            None => stages::story_id(&st),
        };
        inputs.stories.push((cfg.id.clone(), id));
        inputs
            .story_files
            .insert(cfg.id.clone(), plan.data_root.join(&cfg.stimulus));
    }
    let language = plan.corpus_language().to_string();
    for path in &plan.corpus {
        let opts = ReadOptions {
            language: language.clone(),
            ..Default::default()
        };
        let mut doc: Story = stimulus::read_story(path, Some(StimulusFormat::PlainText), &opts)?;
        doc.words.truncate(plan.file.sae.corpus_max_words);
        // Chunks of CORPUS_CHUNK_WORDS words are separate records, so workers share the LM work.
        for (k, words) in doc.words.chunks(CORPUS_CHUNK_WORDS).enumerate() {
            let id = format!("{}#{k:04}", doc.id);
            let story = Story {
                id: id.clone(),
                language: doc.language.clone(),
                words: words.to_vec(),
            };
            let st = StoredStory {
                story,
                n_trs: 0,
                tr_s: 0.0,
                t0_s: 0.0,
            };
            let art = match store {
                Some(s) => stages::put_story(s, &st)?,
                None => stages::story_id(&st),
            };
            inputs.corpus.push((format!("corpus:{id}"), art));
        }
    }
    for s in &plan.subjects {
        let id = match store {
            Some(st) => stages::put_roi(st, &s.table)?,
            None => stages::roi_id(&s.table),
        };
        inputs.responses.push((s.story.clone(), (s.id.clone(), id)));
        inputs
            .subject_files
            .insert((s.story.clone(), s.id.clone()), s.path.clone());
    }
    if let (Some(r), Some(id)) = (&plan.reading, stages::reading::reading_data_id(plan)?) {
        inputs.reading.push((r.section.language.clone(), id));
    }
    for (story, table) in simulated::responses(plan)? {
        let id = match store {
            Some(st) => stages::put_roi(st, &table)?,
            None => stages::roi_id(&table),
        };
        inputs.responses.push((story, (table.subject.clone(), id)));
    }
    if let Some(v) = &plan.voxelwise {
        for subject in &v.subjects {
            let id = stages::voxelwise::voxel_subject(plan, subject, store)?;
            inputs.voxel_subjects.push((subject.clone(), id));
        }
    }
    Ok(inputs)
}

/// The epoch that turns the inputs `from` into `to`: records only in `to` added, records only in
/// `from` retracted (a changed file is both: its old record retracted, its new one added).
pub fn input_changes(from: &Inputs, to: &Inputs) -> Epoch {
    fn diff<T: Ord + Clone>(a: &[T], b: &[T]) -> Vec<(T, isize)> {
        let (a, b): (BTreeSet<&T>, BTreeSet<&T>) = (a.iter().collect(), b.iter().collect());
        let mut v: Vec<(T, isize)> = b.difference(&a).map(|r| ((*r).clone(), 1)).collect();
        v.extend(a.difference(&b).map(|r| ((*r).clone(), -1)));
        v
    }
    Epoch {
        stories: diff(&from.stories, &to.stories),
        corpus: diff(&from.corpus, &to.corpus),
        responses: diff(&from.responses, &to.responses),
        reading: diff(&from.reading, &to.reading),
        voxel_subjects: diff(&from.voxel_subjects, &to.voxel_subjects),
    }
}

/// Everything in one epoch.
pub fn single_epoch(inputs: &Inputs) -> Epoch {
    Epoch {
        stories: inputs.stories.iter().map(|r| (r.clone(), 1)).collect(),
        corpus: inputs.corpus.iter().map(|r| (r.clone(), 1)).collect(),
        responses: inputs.responses.iter().map(|r| (r.clone(), 1)).collect(),
        reading: inputs.reading.iter().map(|r| (r.clone(), 1)).collect(),
        voxel_subjects: inputs.voxel_subjects.iter().map(|r| (r.clone(), 1)).collect(),
    }
}

/// Runs a validated plan end to end and writes its outputs.
pub fn run(plan: Plan, opts: &RunOptions) -> Result<RunReport> {
    run_on(plan, &Topology::local(opts.workers))?
        .ok_or_else(|| crate::Error::Invalid("a single process leads its run".into()))
}

/// [`run`] on any topology: every process runs its share of the dataflow; the first one writes
/// the outputs and returns the report (the others return `None`).
pub fn run_on(plan: Plan, topology: &Topology) -> Result<Option<RunReport>> {
    let started = Instant::now();
    let ctx = context(plan)?;
    let _lock = incremental::lock_shared(&ctx.plan.store)?;
    let inputs = prepare_inputs(&ctx)?;
    let mut results = dataflow::run_on(ctx.clone(), vec![single_epoch(&inputs)], topology)?;
    let Some(result) = results.pop() else {
        return Ok(None);
    };
    let (files, epoch) = publish(&ctx, &inputs, &result)?;
    let poor_saes = crate::report::saes_under_floor(&ctx, &result.snapshot)?;
    Ok(Some(RunReport {
        output: ctx.plan.output.clone(),
        files,
        epoch,
        result,
        seconds: started.elapsed().as_secs_f64(),
        stage_seconds: ctx.store.seconds(),
        poor_saes,
        sae_min_r2: ctx.plan.file.sae.min_r2,
    }))
}

/// Writes the outputs of a state into the plan's output folder: the tables, plot and report, then
/// the `changes` log (what changed since the folder's last update), then the manifest. Returns
/// the files and the folder's new update number.
pub fn publish(ctx: &Ctx, inputs: &Inputs, result: &EpochResult) -> Result<(Vec<PathBuf>, u64)> {
    let out = &ctx.plan.output;
    let previous = match Manifest::load(out) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!("ignoring the previous manifest: {e}");
            None
        }
    };
    let mut files = crate::outputs::write::write_outputs(ctx, &result.snapshot, out)?;
    let (epoch, before) = match &previous {
        Some(m) => (m.epoch + 1, m.snapshot()),
        None => (0, dataflow::Snapshot::default()),
    };
    let now = incremental::unix_ms();
    let rows: Vec<incremental::ChangeRow> = before
        .changes_to(&result.snapshot)
        .into_iter()
        .map(|(record, diff)| incremental::ChangeRow {
            epoch,
            unix_ms: now,
            record,
            diff,
        })
        .collect();
    files.extend(incremental::append_changes(out, &rows)?);
    files.push(crate::report::html::write_report_html(out, Some(&ctx.plan.file.name))?);
    let mut touched = result.touched.clone();
    touched.extend(ctx.store.take_touched());
    let m = incremental::manifest(&ctx.plan, inputs, &result.snapshot, &touched, epoch);
    files.push(m.save(out)?);
    Ok((files, epoch))
}
