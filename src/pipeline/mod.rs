//! `cortexflow run PIPELINE`: the validated plan's inputs go into the artifact store, flow through
//! the dataflow (src/dataflow), and the final state is written as Parquet tables (schemas in
//! data-schemas/), a PNG plot and a Markdown report under the plan's output folder.

pub mod partition_tables;
pub mod stages;
pub mod tables;
pub mod taxonomy;
pub mod taxonomy_tables;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::config::Plan;
use crate::dataflow::{self, Epoch, EpochResult, ResponseRec, StoryRec};
use crate::stimulus::{self, ReadOptions, StimulusFormat, Story};
use crate::store::artifacts::ArtifactStore;
use crate::Result;
use stages::{Ctx, StoredStory};

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
    pub result: EpochResult,
    pub seconds: f64,
    /// Compute seconds per stage, summed over workers.
    pub stage_seconds: std::collections::BTreeMap<String, f64>,
}

/// The context of a plan: store opened, LM threads split between workers.
pub fn context(plan: Plan, workers: usize) -> Result<Ctx> {
    let store = ArtifactStore::open(&plan.store)?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let lm_threads = plan.file.model.threads.unwrap_or((cores / workers.max(1)).max(1));
    Ok(Ctx {
        plan: Arc::new(plan),
        store,
        lm_threads,
    })
}

/// The plan's inputs as dataflow records (stored in the artifact store first).
pub struct Inputs {
    pub stories: Vec<StoryRec>,
    pub corpus: Vec<StoryRec>,
    pub responses: Vec<ResponseRec>,
}

pub fn prepare_inputs(ctx: &Ctx) -> Result<Inputs> {
    let plan = &ctx.plan;
    let mut stories = Vec::new();
    for (cfg, story) in &plan.stories {
        let st = StoredStory {
            story: story.clone(),
            n_trs: cfg.n_trs,
            tr_s: cfg.tr_s,
            t0_s: cfg.t0_s,
        };
        stories.push((cfg.id.clone(), stages::put_story(&ctx.store, &st)?));
    }
    let language = plan
        .stories
        .first()
        .map(|(c, _)| c.language.clone())
        .unwrap_or_else(|| "en".into());
    let mut corpus = Vec::new();
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
            corpus.push((format!("corpus:{id}"), stages::put_story(&ctx.store, &st)?));
        }
    }
    let mut responses = Vec::new();
    for s in &plan.subjects {
        responses.push((
            plan.fmri().story.clone(),
            (s.id.clone(), stages::put_roi(&ctx.store, &s.table)?),
        ));
    }
    Ok(Inputs {
        stories,
        corpus,
        responses,
    })
}

/// Everything in one epoch.
pub fn single_epoch(inputs: &Inputs) -> Epoch {
    Epoch {
        stories: inputs.stories.iter().map(|r| (r.clone(), 1)).collect(),
        corpus: inputs.corpus.iter().map(|r| (r.clone(), 1)).collect(),
        responses: inputs.responses.iter().map(|r| (r.clone(), 1)).collect(),
    }
}

/// Runs a validated plan end to end and writes its outputs.
pub fn run(plan: Plan, opts: &RunOptions) -> Result<RunReport> {
    let started = Instant::now();
    let ctx = context(plan, opts.workers)?;
    let inputs = prepare_inputs(&ctx)?;
    let mut results = dataflow::run(ctx.clone(), vec![single_epoch(&inputs)], opts.workers)?;
    let result = results.pop().expect("one epoch");
    let files = tables::write_outputs(&ctx, &result.snapshot, &ctx.plan.output)?;
    Ok(RunReport {
        output: ctx.plan.output.clone(),
        files,
        result,
        seconds: started.elapsed().as_secs_f64(),
        stage_seconds: ctx.store.seconds(),
    })
}
