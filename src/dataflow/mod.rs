//! The analysis as a timely/differential dataflow over coarse records. This is the only module
//! that imports timely and differential-dataflow.
//!
//! Records carry artifact ids (content hashes); the arrays live in the artifact store. The graph:
//! ```text
//! stories(story, art) ∪ corpus(doc, art) ──reduce per text: LM──▶ acts(text, layer, act)
//! acts ──reduce per (language, layer): train SAE──▶ saes((language, layer), sae)
//!   (`[sae] training = "tokens"`, the default: corpus ──reduce per language: Spool (one LM pass
//!   over the corpus files, every layer)──▶ spools((language, layer), spool) ──reduce per
//!   (language, layer): SAE trained on the spool (shared through the store)──▶ saes)
//! acts ⋈ saes ──reduce per (story, layer): encode──▶ codes(story, layer, codes)
//! (acts ∪ codes) ⋈ stories ──reduce per (story, layer, set): HRF + TR average──▶ designs
//! designs ⋈ responses(story, subject, roi) ──reduce per (subject, story, layer, set): ridge──▶ fits
//! fits ──reduce per (story, layer, set) over subjects: mean r, bootstrap CI──▶ summaries
//! ```
//! With `[voxelwise]`: designs ──reduce per (layer, set) over stories: trim, concatenate, z-score
//! per story──▶ voxel designs; voxel designs × voxel subjects(subject, files) ──reduce per (layer,
//! set) over subjects: nested leave-stories-out CV per voxel, decompositions shared and kept in
//! the store──▶ voxel fits (subject, layer, set). A subject added later is fitted alone.
//! The language is a key: each text's language comes out of the LM stage, and SAEs and labels
//! are per (language, layer) (`[sae] per-language`, the default; otherwise one SAE group
//! `all`), so the stories of one language never reach another language's SAE.
//! With `[taxonomy]`: (acts, codes, words) per (story, layer) ⋈ saes ──reduce per (language,
//! layer): Label──▶
//! labels and feature sets; sets ⋈ SAE designs ──reduce per (story, layer, set): DerivedDesign──▶
//! designs; (story, ℓ) ⋈ (story, ℓ − Δ) ⋈ raw design ──reduce per (story, ℓ): PredError──▶ the
//! `raw+pred-error` design; SAE designs ⋈ labels ⋈ responses ──reduce per (subject, story, layer):
//! Partition──▶ variance partitions by category.
//! Each heavy step is a `reduce` keyed by its output key, so work is partitioned across workers
//! by key and recomputed only when that key's inputs change: a subject added at a later time
//! produces exactly that subject's fits, plus the (cheap) summaries. Every stage but the LM goes
//! through one of two generic keyed-stage operators (`StageEnv::per_value`: one artifact per
//! input value; `StageEnv::per_key`: one result from all of a key's values), which call the
//! stage function of [`crate::stages`], run it in the worker's thread pool and collect its error:
//! stage closures do not fail, the run is reported as failed after the dataflow drains. Keys are
//! named structs ([`records`]: [`SaeKey`], [`StoryLayerKey`], [`DesignKey`], [`FitKey`],
//! [`PartitionKey`], [`ResponseKey`]); feature sets are [`FeatureSet`]s.
//!
//! Time: epoch `t` of the inputs is applied at timestamp `2t`; at `2t + 1` each process adds what
//! its workers recorded during the epoch (stage errors, artifacts touched). Every output record,
//! with those, is exchanged to worker 0, so on several processes (`Topology`) the first process
//! sees the whole state and is the one that writes outputs.
//!
//! May import: `stages` and everything below it (`config`, the analyses, `store`, `lm` …); never
//! `report`, `outputs`, `pipeline` or `cli`, and it knows nothing of tables or reports.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex};

use differential_dataflow::input::Input;
use differential_dataflow::{ExchangeData, Hashable, VecCollection};
use timely::dataflow::operators::{Exchange, Inspect, Probe};
use timely::dataflow::ProbeHandle;

use crate::features::FeatureSet;
use crate::lm::LanguageModel;
use crate::stages::taxonomy::StoryLayer;
use crate::stages::{self, Ctx, StoredStory};
use crate::store::artifacts::{ArtifactId, StoreStats};
use crate::{Error, Result};

pub mod records;
pub use records::{
    DesignKey, FitKey, Out, PartitionKey, ReadingRec, Record, ResponseKey, ResponseRec, SaeKey, Snapshot,
    StoryLayerKey, StoryRec, SummaryKey, VoxelFitKey, VoxelKey, VoxelSubjectRec, SHARED_SAE_GROUP,
};

/// Input changes applied at one timestamp.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Epoch {
    pub stories: Vec<(StoryRec, isize)>,
    pub corpus: Vec<(StoryRec, isize)>,
    pub responses: Vec<(ResponseRec, isize)>,
    /// The reading data of a `[reading]` pipeline: (language, reading-data id).
    pub reading: Vec<(ReadingRec, isize)>,
    /// The subjects of a `[voxelwise]` pipeline.
    pub voxel_subjects: Vec<(VoxelSubjectRec, isize)>,
}

impl Epoch {
    pub fn is_empty(&self) -> bool {
        self.stories.is_empty()
            && self.corpus.is_empty()
            && self.responses.is_empty()
            && self.reading.is_empty()
            && self.voxel_subjects.is_empty()
    }
}

/// One epoch's result, seen by the first process.
#[derive(Debug, Clone)]
pub struct EpochResult {
    /// The epoch's index (0 for the first input).
    pub epoch: u64,
    pub snapshot: Snapshot,
    /// Records added (+1) and retracted (−1) by this epoch, sorted.
    pub changes: Vec<(Record, isize)>,
    /// Stages that failed during this epoch (on any process).
    pub errors: Vec<String>,
    /// Store-relative paths of every artifact read or written so far (on any process).
    pub touched: BTreeSet<String>,
    /// The first process's store counters, accumulated so far.
    pub stats: StoreStats,
}

/// Where the dataflow's workers run: `threads` per process, `processes` processes (this one
/// being `process`), connected over TCP at `hosts` (one `host:port` per process; empty means
/// `localhost:2101`, `localhost:2102`, …, as timely's own `-h`). Results do not depend on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub threads: usize,
    pub processes: usize,
    pub process: usize,
    pub hosts: Vec<String>,
}

impl Topology {
    /// `threads` workers in this process alone.
    pub fn local(threads: usize) -> Topology {
        Topology {
            threads: threads.max(1),
            processes: 1,
            process: 0,
            hosts: Vec::new(),
        }
    }

    /// Reads a hostfile: one `host:port` per line (blank lines and `#` comments skipped).
    pub fn read_hostfile(path: &std::path::Path) -> Result<Vec<String>> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect())
    }

    /// Checks the numbers; errors say what is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.threads == 0 || self.processes == 0 {
            return Err(Error::Invalid(
                "workers (-w) and processes (-n) must be at least 1".into(),
            ));
        }
        if self.process >= self.processes {
            return Err(Error::Invalid(format!(
                "process index -p {} is out of range for -n {} (0 to {})",
                self.process,
                self.processes,
                self.processes - 1
            )));
        }
        if !self.hosts.is_empty() && self.hosts.len() < self.processes {
            return Err(Error::Invalid(format!(
                "the hostfile lists {} address(es), but -n is {}",
                self.hosts.len(),
                self.processes
            )));
        }
        Ok(())
    }

    /// Whether this process sees the results (and writes the outputs).
    pub fn is_leader(&self) -> bool {
        self.process == 0
    }

    fn config(&self) -> timely::Config {
        if self.processes <= 1 {
            return timely::Config::process(self.threads);
        }
        let addresses = if self.hosts.is_empty() {
            (0..self.processes).map(|i| format!("localhost:{}", 2101 + i)).collect()
        } else {
            self.hosts[..self.processes].to_vec()
        };
        timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads: self.threads,
                process: self.process,
                addresses,
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        }
    }
}

/// The epochs a dataflow consumes, shared by the process's workers: a fixed list, or a queue that
/// a watcher fills while the dataflow runs ([`EpochFeed::push`], then [`EpochFeed::close`]).
#[derive(Default)]
pub struct EpochFeed {
    state: Mutex<(Vec<Epoch>, bool)>,
    ready: Condvar,
}

impl EpochFeed {
    /// An open, empty feed.
    pub fn new() -> Arc<EpochFeed> {
        Arc::default()
    }

    /// A closed feed holding `epochs`.
    pub fn fixed(epochs: Vec<Epoch>) -> Arc<EpochFeed> {
        Arc::new(EpochFeed {
            state: Mutex::new((epochs, true)),
            ready: Condvar::new(),
        })
    }

    pub fn push(&self, e: Epoch) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0.push(e);
        self.ready.notify_all();
    }

    /// No more epochs: the dataflow finishes once it has run those pushed.
    pub fn close(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.ready.notify_all();
    }

    /// Epoch `t`, waiting for it; `None` once the feed is closed before it.
    fn get(&self, t: usize) -> Option<Epoch> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(e) = s.0.get(t) {
                return Some(e.clone());
            }
            if s.1 {
                return None;
            }
            s = self.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Called on the first process after each epoch.
pub type Sink = Box<dyn FnMut(EpochResult) + Send>;

fn record_error(errors: &Arc<Mutex<Vec<String>>>, what: String, e: Error) {
    errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(format!("{what}: {e}"));
}

/// A collection of the graph: records of type `D` at epoch times, counted by `isize`.
type Coll<'s, D> = VecCollection<'s, u64, D, isize>;

/// What every stage of the graph shares: the worker's context, and where failed stages put their
/// errors (closures in the graph do not fail; the run reports the errors after the epoch).
#[derive(Clone)]
struct StageEnv {
    ctx: Ctx,
    errors: Arc<Mutex<Vec<String>>>,
}

impl StageEnv {
    /// The generic keyed stage for stages that make one artifact from one input: a `reduce` per
    /// key of `input` that runs `stage` on each value present at the key (in the worker's rayon
    /// pool) and outputs (key, artifact id). A failed value adds `"{what(key)}: {error}"` to the
    /// run's errors and outputs nothing. Work is partitioned across workers by key, and a key is
    /// recomputed only when its values change.
    fn per_value<'s, K, V>(
        &self,
        input: Coll<'s, (K, V)>,
        name: &str,
        what: fn(&K) -> String,
        mut stage: impl FnMut(&Ctx, &K, &V) -> Result<ArtifactId> + Send + 'static,
    ) -> Coll<'s, (K, ArtifactId)>
    where
        K: ExchangeData + Hashable + Sync,
        V: ExchangeData + Sync,
    {
        let env = self.clone();
        input.reduce_named(name, move |key, values, output| {
            for (value, diff) in values {
                if *diff > 0 {
                    match env.ctx.install(|| stage(&env.ctx, key, value)) {
                        Ok(id) => output.push((id, 1)),
                        Err(e) => record_error(&env.errors, what(key), e),
                    }
                }
            }
        })
    }

    /// The generic keyed stage for stages that combine every input of a key (an SAE from its
    /// layer's activations, a summary from its fits, labels from a layer's stories): `stage` gets
    /// the values present at the key, in their sorted order, and returns the key's outputs.
    fn per_key<'s, K, V, V2>(
        &self,
        input: Coll<'s, (K, V)>,
        name: &str,
        what: fn(&K) -> String,
        mut stage: impl FnMut(&Ctx, &K, &[&V]) -> Result<Vec<V2>> + Send + 'static,
    ) -> Coll<'s, (K, V2)>
    where
        K: ExchangeData + Hashable + Sync,
        V: ExchangeData + Sync,
        V2: ExchangeData + Send,
    {
        let env = self.clone();
        input.reduce_named(name, move |key, values, output| {
            let present: Vec<&V> = values.iter().filter(|(_, d)| *d > 0).map(|(v, _)| *v).collect();
            match env.ctx.install(|| stage(&env.ctx, key, &present)) {
                Ok(out) => output.extend(out.into_iter().map(|v| (v, 1))),
                Err(e) => record_error(&env.errors, what(key), e),
            }
        })
    }
}

/// Runs the epochs through the graph on `workers` threads; returns one result per epoch, or the
/// failed stages' errors.
pub fn run(ctx: Ctx, epochs: Vec<Epoch>, workers: usize) -> Result<Vec<EpochResult>> {
    run_on(ctx, epochs, &Topology::local(workers))
}

/// [`run`] on any topology. Only the first process gets results; the others return an empty list.
pub fn run_on(ctx: Ctx, epochs: Vec<Epoch>, topology: &Topology) -> Result<Vec<EpochResult>> {
    let results: Arc<Mutex<Vec<EpochResult>>> = Arc::default();
    let r2 = results.clone();
    run_stream(
        ctx,
        EpochFeed::fixed(epochs),
        topology,
        Box::new(move |r| r2.lock().unwrap_or_else(|p| p.into_inner()).push(r)),
    )?;
    let results = std::mem::take(&mut *results.lock().unwrap_or_else(|p| p.into_inner()));
    let errors: Vec<String> = results.iter().flat_map(|r| r.errors.iter().cloned()).collect();
    if !errors.is_empty() {
        return Err(Error::Invalid(format!(
            "{} stage(s) failed:\n  {}",
            errors.len(),
            errors.join("\n  ")
        )));
    }
    Ok(results)
}

/// Runs the graph over the feed's epochs as they come, calling `sink` on the first process after
/// each one. Returns when the feed is closed and drained.
pub fn run_stream(ctx: Ctx, feed: Arc<EpochFeed>, topology: &Topology, sink: Sink) -> Result<()> {
    topology.validate()?;
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let buffer: Arc<Mutex<Vec<(Out, u64, isize)>>> = Arc::default();
    let sink = Arc::new(Mutex::new(Some(sink)));
    let threads = topology.threads;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let feature_sets: Vec<FeatureSet> = ctx.plan.file.encoding.feature_sets.clone();
    let include_stimulus = ctx.plan.file.sae.include_stimulus;
    // `[sae] training = "tokens"`: the SAEs train on corpus tokens (spools), so the corpus texts
    // go through the word-level LM stage only when they are the labels' evidence
    let sae_on_tokens = ctx.plan.file.sae.trains_on_tokens();
    let per_language = ctx.plan.file.sae.per_language;
    let taxonomy_on = ctx.plan.file.taxonomy.is_some();
    let partition_on = ctx.plan.file.taxonomy.as_ref().is_some_and(|t| t.variance_partition);
    let encode_sets = ctx.plan.file.taxonomy.as_ref().is_some_and(|t| t.encode_sets);
    let pe_delta = ctx.plan.file.taxonomy.as_ref().and_then(|t| t.prediction_error_delta);
    let reading_on = ctx.plan.reading.is_some();
    let export_designs = ctx.plan.file.encoding.export_designs;
    let voxel_section = ctx.plan.voxelwise.clone();
    // the texts whose words are the labels' evidence ([taxonomy] evidence)
    let (evidence_stories, evidence_corpus) = match &ctx.plan.file.taxonomy {
        Some(t) => t.evidence_texts(&ctx.plan.file.sae),
        None => (false, false),
    };

    // One ONNX session per process, shared by its workers (a text's LM call holds it): the
    // weights, their pre-packed copies and Runtime's arenas are in memory once, not once per
    // worker (the Alice demo at -w 2 peaked at 3.03 million kB with a session per worker). A call
    // uses the process's cores, and ONNX Runtime's outputs do not depend on its thread count
    // (Alice, 1 and 2 threads: byte-identical tables). Loaded by the LM stage when it has work,
    // dropped once the LM output's frontier has passed the epoch (SAE training and the fits that
    // follow run without the model's weights and Runtime arenas in memory; a later epoch with new
    // texts loads it again).
    let lm_session: Arc<Mutex<Option<LanguageModel>>> = Arc::default();

    let guards = timely::execute(topology.config(), move |worker| {
        let index = worker.index();
        let errors = errors.clone();
        let lm_session = lm_session.clone();
        let buffer = buffer.clone();
        let mut ctx = ctx.clone();
        // each worker computes on its share of the cores: coarse parallelism (independent fits on
        // different workers) rather than every worker's numerics contending for one pool
        ctx.pool = rayon::ThreadPoolBuilder::new()
            .num_threads((cores / threads).max(1))
            .thread_name(move |i| format!("cortexflow-w{index}-{i}"))
            .build()
            .ok()
            .map(Arc::new);
        let feature_sets = feature_sets.clone();
        let probe = ProbeHandle::new();
        let lm_probe = ProbeHandle::new();
        let session_in_graph = lm_session.clone();
        let (mut stories_in, mut corpus_in, mut resp_in, mut reading_in, mut voxel_in, mut aux_in) = worker
            .dataflow::<u64, _, _>(|scope| {
                let env = StageEnv {
                    ctx: ctx.clone(),
                    errors: errors.clone(),
                };
                let (stories_in, stories) = scope.new_collection::<StoryRec, isize>();
                let (corpus_in, corpus) = scope.new_collection::<StoryRec, isize>();
                let (resp_in, responses) = scope.new_collection::<ResponseRec, isize>();
                let (reading_in, reading) = scope.new_collection::<ReadingRec, isize>();
                let (voxel_in, voxel_subjects) = scope.new_collection::<VoxelSubjectRec, isize>();
                let (aux_in, aux) = scope.new_collection::<Out, isize>();
                let rec_inputs = stories.clone().map(|(s, a)| Record::Story(s, a)).concat(
                    responses
                        .clone()
                        .map(|(story, (subject, a))| Record::Response(ResponseKey { story, subject }, a)),
                );

                // ---- LM over every text (stories and corpus documents): its words and one activation
                // artifact per layer. Not a generic stage: the worker's ONNX session is its state.
                let texts = stories.clone().map(|(s, a)| ((true, s), a)).concat(
                    corpus
                        .clone()
                        .filter(move |_| !sae_on_tokens || evidence_corpus)
                        .map(|(c, a)| ((false, c), a)),
                );
                let lm_env = env.clone();
                let model = session_in_graph;
                let acts = texts.reduce_named("LM", move |(_, text), input, output| {
                    for (art, diff) in input {
                        if *diff <= 0 {
                            continue;
                        }
                        let ctx = &lm_env.ctx;
                        let run = || -> Result<(String, stages::LmOutputs)> {
                            let st: StoredStory = ctx.store.load_json("story", art)?;
                            let group = match per_language {
                                true => st.story.language.clone(),
                                false => SHARED_SAE_GROUP.to_string(),
                            };
                            let mut session = model.lock().unwrap_or_else(|p| p.into_inner());
                            Ok((group, stages::lm_stage(ctx, &mut session, &st.story)?))
                        };
                        match run() {
                            Ok((group, out)) => {
                                output.push(((group.clone(), None, out.words), 1));
                                for (l, id) in out.layers {
                                    output.push(((group.clone(), Some(l), id), 1));
                                }
                            }
                            Err(e) => record_error(&lm_env.errors, format!("LM on `{text}`"), e),
                        }
                    }
                });
                acts.clone().inner.probe_with(&lm_probe);
                let story_words = acts
                    .clone()
                    .flat_map(|((is_story, text), (_, layer, id))| (is_story && layer.is_none()).then_some((text, id)));
                let rec_words = story_words.clone().map(|(s, a)| Record::Words(s, a));
                let reading_words = story_words.clone();

                // ---- one SAE per (language, layer), its training rows in the order of the texts'
                // names (not of their artifact ids, which change with the model's manifest)
                // (with `training = "tokens"`: the layer's corpus-token spool, the `None` text,
                // first; the stories' rows only say which (language, layer) SAEs are needed)
                let sae_inputs = acts.clone().flat_map(move |((is_story, text), (group, layer, id))| {
                    layer
                        .filter(|_| match sae_on_tokens {
                            true => is_story,
                            false => !is_story || include_stimulus,
                        })
                        .map(|layer| (SaeKey { group, layer }, (Some(text), id)))
                });
                let spools = env.per_key(
                    sae_inputs
                        .clone()
                        .filter(move |_| sae_on_tokens)
                        .map(|(k, _)| (k.group, k.layer))
                        .distinct(),
                    "Spool",
                    |g| format!("corpus-token spools of `{g}`"),
                    |ctx, group, layers| {
                        let layers: Vec<usize> = layers.iter().map(|l| **l).collect();
                        stages::sae_tokens::spool_stage(ctx, group, &layers)
                    },
                );
                let sae_inputs = sae_inputs
                    .concat(spools.map(|(group, (layer, spool))| (SaeKey { group, layer }, (None::<String>, spool))));
                let saes = env.per_key(
                    sae_inputs,
                    "SAE",
                    |k| format!("SAE of `{}` layer {}", k.group, k.layer),
                    move |ctx, k, inputs| {
                        if !sae_on_tokens {
                            let ids: Vec<ArtifactId> = inputs.iter().map(|(_, a)| a.clone()).collect();
                            return Ok(vec![stages::sae_stage(ctx, &k.group, k.layer, &ids)?]);
                        }
                        // the spool sorts first (`None`); absent when its stage failed. The
                        // stories' rows only make the key present: the SAE does not depend on them
                        match inputs.first() {
                            Some((None, spool)) => Ok(vec![stages::sae_tokens::token_sae_stage(
                                ctx, &k.group, k.layer, spool,
                            )?]),
                            _ => Ok(vec![]),
                        }
                    },
                );
                let rec_saes = saes.clone().map(|(k, a)| Record::Sae(k, a));

                // ---- per (corpus text, layer), when the corpus is the labels' evidence: SAE codes,
                // and the text's words and activations beside them
                let corpus_acts =
                    acts.clone()
                        .filter(move |_| evidence_corpus)
                        .flat_map(|((is_story, doc), (group, layer, id))| {
                            layer
                                .filter(|_| !is_story)
                                .map(|layer| (SaeKey { group, layer }, (doc, id)))
                        });
                let corpus_codes = env.per_value(
                    corpus_acts.clone().join(saes.clone()).map(|(k, ((doc, act), sae))| {
                        (
                            StoryLayerKey {
                                story: doc,
                                layer: k.layer,
                            },
                            (act, sae),
                        )
                    }),
                    "Encode",
                    |k| format!("codes of corpus text `{}` layer {}", k.story, k.layer),
                    |ctx, _, (act, sae)| stages::codes_stage(ctx, act, sae),
                );
                let corpus_words = acts
                    .clone()
                    .filter(move |_| evidence_corpus)
                    .flat_map(|((is_story, doc), (_, layer, id))| (!is_story && layer.is_none()).then_some((doc, id)));
                let corpus_layers = corpus_acts
                    .map(|(k, (doc, act))| {
                        (
                            StoryLayerKey {
                                story: doc,
                                layer: k.layer,
                            },
                            (k.group, act),
                        )
                    })
                    .join(corpus_codes)
                    .map(|(k, ((group, act), codes))| (k.story, (group, k.layer, act, codes)))
                    .join(corpus_words)
                    .join(corpus)
                    .map(|(doc, (((group, layer, act, codes), words), doc_art))| {
                        let sl = StoryLayer {
                            story: doc,
                            story_art: doc_art,
                            act,
                            codes,
                            words,
                        };
                        (SaeKey { group, layer }, sl)
                    });

                // ---- per (story, layer): SAE codes, and reconstructions for the `sae-recon` set
                let story_acts = acts.flat_map(|((is_story, story), (group, layer, id))| {
                    layer
                        .filter(|_| is_story)
                        .map(|layer| (SaeKey { group, layer }, (story, id)))
                });
                let with_sae = story_acts
                    .clone()
                    .join(saes.clone())
                    .map(|(k, ((story, act), sae))| (StoryLayerKey { story, layer: k.layer }, (act, sae)));
                let codes = env.per_value(
                    with_sae.clone(),
                    "Encode",
                    |k| format!("codes of `{}` layer {}", k.story, k.layer),
                    |ctx, _, (act, sae)| stages::codes_stage(ctx, act, sae),
                );
                let want_recon = feature_sets.contains(&FeatureSet::SaeRecon);
                let recons = env
                    .per_value(
                        with_sae.filter(move |_| want_recon),
                        "Reconstruct",
                        |k| format!("reconstruction of `{}` layer {}", k.story, k.layer),
                        |ctx, _, (act, sae)| stages::recon_stage(ctx, act, sae),
                    )
                    .map(|(k, id)| (k.story, (k.layer, FeatureSet::SaeRecon, id)));

                // ---- per story: lexical controls (feature set `controls`), the same design at every
                // layer (its fits are computed once: same design and responses, same fit artifact)
                let want_controls = feature_sets.contains(&FeatureSet::Controls);
                let layers = ctx.plan.layers.clone();
                let controls = env
                    .per_value(
                        stories.clone().filter(move |_| want_controls),
                        "Controls",
                        |story| format!("controls of `{story}`"),
                        |ctx, _, art| stages::controls_stage(ctx, art),
                    )
                    .flat_map(move |(story, id)| {
                        layers
                            .iter()
                            .map(|l| (story.clone(), (*l, FeatureSet::Controls, id.clone())))
                            .collect::<Vec<_>>()
                    });

                // ---- designs per (story, layer, feature set)
                let want_raw = feature_sets.contains(&FeatureSet::Raw);
                let want_sae = feature_sets.contains(&FeatureSet::Sae);
                let reading_codes = codes.clone();
                let raw = story_acts
                    .clone()
                    .filter(move |_| want_raw)
                    .map(|(k, (story, id))| (story, (k.layer, FeatureSet::Raw, id)));
                let sae_feats = codes
                    .clone()
                    .filter(move |_| want_sae)
                    .map(|(k, id)| (k.story, (k.layer, FeatureSet::Sae, id)));
                let design_in = raw
                    .concat(sae_feats)
                    .concat(recons)
                    .concat(controls)
                    .join(stories.clone())
                    .map(|(story, ((layer, feature_set, id), story_art))| {
                        (
                            DesignKey {
                                story,
                                layer,
                                feature_set,
                            },
                            (story_art, id),
                        )
                    });
                let designs = env.per_value(
                    design_in,
                    "Design",
                    |k| format!("design `{}` layer {} {}", k.story, k.layer, k.feature_set),
                    |ctx, k, (story_art, id)| {
                        stages::design_stage(ctx, story_art, stages::feature_source(&k.feature_set)?, id)
                    },
                );
                let rec_designs = designs
                    .clone()
                    .filter(move |_| export_designs)
                    .map(|(k, a)| Record::Design(k, a));

                // ---- taxonomy (with [taxonomy]): labels and feature sets per layer, derived designs
                // per (story, layer, set): categories, subcategories and their baselines
                let story_layers = story_acts
                    .filter(move |_| taxonomy_on)
                    .map(|(k, (story, act))| (StoryLayerKey { story, layer: k.layer }, (k.group, act)))
                    .join(codes.clone())
                    .map(|(k, ((group, act), codes))| (k.story, (group, k.layer, act, codes)))
                    .join(story_words)
                    .join(stories.clone())
                    .map(|(story, (((group, layer, act, codes), words), story_art))| {
                        let key = StoryLayerKey {
                            story: story.clone(),
                            layer,
                        };
                        let sl = StoryLayer {
                            story,
                            story_art,
                            act,
                            codes,
                            words,
                        };
                        (key, (group, sl))
                    });
                // the labels' evidence: the stories and/or the corpus texts ([taxonomy] evidence)
                let label_in = story_layers
                    .clone()
                    .filter(move |_| evidence_stories)
                    .map(|(k, (group, sl))| (SaeKey { group, layer: k.layer }, sl))
                    .concat(corpus_layers)
                    .join(saes.clone());
                let labels = env.per_key(
                    label_in,
                    "Label",
                    |k| format!("labels of `{}` layer {}", k.group, k.layer),
                    |ctx, k, items| {
                        let Some((_, sae)) = items.last() else {
                            return Ok(Vec::new());
                        };
                        let layers: Vec<StoryLayer> = items.iter().map(|(sl, _)| sl.clone()).collect();
                        let (id, sets) = stages::taxonomy::label_stage(ctx, &k.group, k.layer, sae, &layers)?;
                        Ok(sets.into_iter().map(|s| (FeatureSet::named(&s), id.clone())).collect())
                    },
                );
                let labels_by_key = labels.clone().map(|(key, (_, id))| (key, id)).distinct();
                let rec_labels = labels_by_key.clone().map(|(k, a)| Record::Labels(k, a));
                // (story, layer) → its SAE key, for the joins below
                let story_key = story_layers
                    .clone()
                    .map(|(k, (group, _))| (k.clone(), SaeKey { group, layer: k.layer }));
                let derived_in = designs
                    .clone()
                    .filter(move |(k, _)| encode_sets && k.feature_set == FeatureSet::Sae)
                    .map(|(k, d)| {
                        (
                            StoryLayerKey {
                                story: k.story,
                                layer: k.layer,
                            },
                            d,
                        )
                    })
                    .join(story_layers.clone())
                    .map(|(k, (d, (group, sl)))| (SaeKey { group, layer: k.layer }, (k.story, d, sl)))
                    .join(saes.clone())
                    .join(labels)
                    .map(|(k, (((story, d, sl), sae), (feature_set, lid)))| {
                        (
                            DesignKey {
                                story,
                                layer: k.layer,
                                feature_set,
                            },
                            (d, sl, sae, lid),
                        )
                    });
                let derived = env.per_value(
                    derived_in,
                    "DerivedDesign",
                    |k| format!("design `{}` layer {} {}", k.story, k.layer, k.feature_set),
                    |ctx, k, (d, sl, sae, lid)| {
                        stages::taxonomy::derived_design_stage(ctx, sl, d, sae, lid, k.feature_set.as_str())
                    },
                );
                let designs = designs.concat(derived);

                // ---- voxelwise (with [voxelwise]): per (layer, set) one design over all the
                // stories (word-feature sets, and the taxonomy's subsets with `taxonomy-sets`),
                // then every subject's nested leave-stories-out fit of it
                let voxel_section = voxel_section.clone();
                let voxel_designs = env.per_key(
                    designs
                        .clone()
                        .filter(move |(k, _)| voxel_section.as_ref().is_some_and(|v| v.fits(&k.feature_set)))
                        .map(|(k, id)| {
                            let key = VoxelKey {
                                layer: k.layer,
                                feature_set: k.feature_set,
                            };
                            (key, (k.story, id))
                        }),
                    "VoxelDesign",
                    |k| format!("voxelwise design layer {} {}", k.layer, k.feature_set),
                    |ctx, _, designs| {
                        let designs: Vec<(String, ArtifactId)> = designs.iter().map(|d| (*d).clone()).collect();
                        Ok(stages::voxelwise::voxel_design_stage(ctx, &designs)?
                            .into_iter()
                            .collect())
                    },
                );
                let rec_voxel_designs = voxel_designs.clone().map(|(k, a)| Record::VoxelDesign(k, a));
                let rec_voxel_subjects = voxel_subjects.clone().map(|(s, a)| Record::VoxelSubject(s, a));
                let voxel_fits = env
                    .per_key(
                        voxel_designs
                            .map(|(k, d)| ((), (k, d)))
                            .join(voxel_subjects.map(|s| ((), s)))
                            .map(|((), ((k, d), (subject, art)))| (k, (d, subject, art))),
                        "VoxelFit",
                        |k| format!("voxelwise fits layer {} {}", k.layer, k.feature_set),
                        |ctx, _, present: &[&(ArtifactId, String, ArtifactId)]| {
                            // one design per key; grouped anyway, so a key never mixes two
                            let mut out = Vec::with_capacity(present.len());
                            for group in present.chunk_by(|a, b| a.0 == b.0) {
                                let subjects: Vec<(String, ArtifactId)> =
                                    group.iter().map(|(_, s, a)| (s.clone(), a.clone())).collect();
                                out.extend(stages::voxelwise::voxel_fit_stage(ctx, &group[0].0, &subjects)?);
                            }
                            Ok(out)
                        },
                    )
                    .map(|(k, (subject, id))| {
                        let key = VoxelFitKey {
                            subject,
                            layer: k.layer,
                            feature_set: k.feature_set,
                        };
                        (key, id)
                    });
                let rec_voxel_fits = voxel_fits.map(|(k, a)| Record::VoxelFit(k, a));

                // ---- prediction-error features (METHOD.md §9): (story, ℓ) ⋈ (story, ℓ − Δ) ⋈ the raw
                // design of (story, ℓ) ──per (story, ℓ)──▶ the `raw+pred-error` design
                let delta = pe_delta.unwrap_or(0);
                let pe_base = story_layers
                    .filter(move |_| pe_delta.is_some())
                    .map(|(k, (group, sl))| (SaeKey { group, layer: k.layer }, (k.story, sl)))
                    .join(saes.clone())
                    .map(|(k, ((story, sl), sae))| {
                        (StoryLayerKey { story, layer: k.layer }, (sl.story_art, sl.codes, sae))
                    });
                let pe_from = pe_base.clone().map(move |(k, (_, codes, sae))| {
                    let key = StoryLayerKey {
                        story: k.story,
                        layer: k.layer + delta,
                    };
                    (key, (codes, sae))
                });
                let raw_designs = designs
                    .clone()
                    .filter(|(k, _)| k.feature_set == FeatureSet::Raw)
                    .map(|(k, d)| {
                        (
                            StoryLayerKey {
                                story: k.story,
                                layer: k.layer,
                            },
                            d,
                        )
                    });
                let pe_pairs = pe_base.join(pe_from);
                let pred_errors = env.per_value(
                    pe_pairs.clone().join(raw_designs),
                    "PredError",
                    |k| format!("prediction error `{}` layer {}", k.story, k.layer),
                    move |ctx, k, (((story_art, codes, sae), (codes_from, sae_from)), raw)| {
                        stages::taxonomy::pred_error_stage(
                            ctx,
                            &k.story,
                            story_art,
                            k.layer,
                            (codes, sae),
                            k.layer - delta,
                            (codes_from, sae_from),
                            raw,
                        )
                    },
                );
                let rec_pe = pred_errors.clone().map(|(k, a)| Record::PredError(k, a));
                let designs = designs.concat(pred_errors.map(|(k, id)| {
                    let key = DesignKey {
                        story: k.story,
                        layer: k.layer,
                        feature_set: FeatureSet::RawPredError,
                    };
                    (key, id)
                }));
                // the paper's sets (the semantic set's codes + its ε) and their two controls, per
                // (story, ℓ) with the layer's labels
                let pe_sets = env.per_key(
                    pe_pairs
                        .join(story_key.clone())
                        .map(|(k, (pair, sae_key))| (sae_key, (k.story, pair)))
                        .join(labels_by_key.clone())
                        .map(|(sae_key, ((story, pair), lid))| {
                            (
                                StoryLayerKey {
                                    story,
                                    layer: sae_key.layer,
                                },
                                (pair, lid),
                            )
                        }),
                    "PredErrorSets",
                    |k| format!("prediction-error sets `{}` layer {}", k.story, k.layer),
                    |ctx, _, present| {
                        let mut out = Vec::new();
                        for (((story_art, codes, sae), (codes_from, sae_from)), lid) in present {
                            out.extend(stages::taxonomy::pred_error_sets_stage(
                                ctx,
                                story_art,
                                (codes, sae),
                                (codes_from, sae_from),
                                lid,
                            )?);
                        }
                        Ok(out)
                    },
                );
                let designs = designs.concat(pe_sets.map(|(k, (name, id))| {
                    let key = DesignKey {
                        story: k.story,
                        layer: k.layer,
                        feature_set: FeatureSet::named(&name),
                    };
                    (key, id)
                }));

                // ---- variance partition by category per (subject, story, layer)
                let partition_in = designs
                    .clone()
                    .filter(move |(k, _)| partition_on && k.feature_set == FeatureSet::Sae)
                    .map(|(k, d)| {
                        (
                            StoryLayerKey {
                                story: k.story,
                                layer: k.layer,
                            },
                            d,
                        )
                    })
                    .join(story_key)
                    .map(|(k, (d, key))| (key, (k.story, d)))
                    .join(labels_by_key.clone())
                    .map(|(key, ((story, d), lid))| (story, (key.layer, d, lid)))
                    .join(responses.clone())
                    .map(|(story, ((layer, d, lid), (subject, roi)))| {
                        (StoryLayerKey { story, layer }, (d, lid, subject, roi))
                    });
                // computed per (story, layer) over subjects: each column subset's decompositions
                // serve every subject
                let partitions = env
                    .per_key(
                        partition_in,
                        "Partition",
                        |k| format!("variance partitions {k:?}"),
                        |ctx, _, present: &[&(ArtifactId, ArtifactId, String, ArtifactId)]| {
                            let mut out = Vec::with_capacity(present.len());
                            for group in present.chunk_by(|a, b| (&a.0, &a.1) == (&b.0, &b.1)) {
                                let rois: Vec<&str> = group.iter().map(|v| v.3.as_str()).collect();
                                let ids = stages::taxonomy::partition_stage(ctx, &group[0].0, &group[0].1, &rois)?;
                                out.extend(group.iter().zip(ids).map(|(v, id)| (v.2.clone(), id)));
                            }
                            Ok(out)
                        },
                    )
                    .map(|(k, (subject, id))| {
                        let key = PartitionKey {
                            subject,
                            story: k.story,
                            layer: k.layer,
                        };
                        (key, id)
                    });
                let rec_parts = partitions.map(|(k, a)| Record::Partition(k, a));

                // ---- fits per (subject, story, layer, feature set), computed per design: the
                // design's decompositions serve all its subjects
                let fit_in = designs
                    .map(|(k, design)| (k.story.clone(), (k, design)))
                    .join(responses)
                    .map(|(_, ((key, design), (subject, roi)))| (key, (design, subject, roi)));
                let fits = env
                    .per_key(
                        fit_in,
                        "Fit",
                        |k| format!("fits {k:?}"),
                        move |ctx, k, present: &[&(ArtifactId, String, ArtifactId)]| {
                            // the full SAE design's feature weights feed the taxonomy's feature cards
                            let weights = taxonomy_on && k.feature_set == FeatureSet::Sae;
                            // one design per key; grouped anyway, so a key never mixes two
                            let mut out = Vec::with_capacity(present.len());
                            for group in present.chunk_by(|a, b| a.0 == b.0) {
                                let rois: Vec<&str> = group.iter().map(|(_, _, roi)| roi.as_str()).collect();
                                let ids = stages::fit_stage(ctx, &group[0].0, &rois, weights)?;
                                out.extend(group.iter().zip(ids).map(|((_, subject, _), id)| (subject.clone(), id)));
                            }
                            Ok(out)
                        },
                    )
                    .map(|(k, (subject, fit))| {
                        let key = FitKey {
                            subject,
                            story: k.story,
                            layer: k.layer,
                            feature_set: k.feature_set,
                        };
                        (key, fit)
                    });
                let rec_fits = fits.clone().map(|(k, a)| Record::Fit(k, a));

                // ---- summaries over subjects
                let summaries = env.per_key(
                    fits.map(|(k, fit)| (k.summary_key(), (k.subject, fit))),
                    "Summary",
                    |k| format!("summary {k:?}"),
                    |ctx, _, fits| {
                        let ids: Vec<ArtifactId> = fits.iter().map(|(_, f)| f.clone()).collect();
                        Ok(vec![stages::summary_stage(ctx, &ids)?])
                    },
                );
                let rec_sums = summaries.map(|(k, a)| Record::Summary(k, a));

                // ---- reading times (with [reading]): the baseline mixed model per reading data set
                // (language) from the stories' words, then per (language, layer) the SAE features'
                // models against it. Every story of a reading pipeline is a reading story.
                let base_in = reading_words
                    .filter(move |_| reading_on)
                    .map(|(story, words)| ((), (story, words)))
                    .join(reading.clone().map(|(language, data)| ((), (language, data))))
                    .map(|((), ((story, words), (language, data)))| (language, (data, story, words)));
                let reading_base = env.per_key(
                    base_in,
                    "ReadingBase",
                    |language| format!("reading baseline of `{language}`"),
                    |ctx, _, values| {
                        let Some((data, _, _)) = values.first() else {
                            return Ok(Vec::new());
                        };
                        let words: Vec<(String, ArtifactId)> =
                            values.iter().map(|(_, s, w)| (s.clone(), w.clone())).collect();
                        Ok(vec![stages::reading::base_stage(ctx, data, &words)?])
                    },
                );
                let rec_reading_base = reading_base.clone().map(|(l, a)| Record::ReadingBase(l, a));
                let layer_in = reading_codes
                    .filter(move |_| reading_on)
                    .map(|(k, codes)| ((), (k.story, k.layer, codes)))
                    .join(reading_base.map(|(language, base)| ((), (language, base))))
                    .map(|((), ((story, layer, codes), (group, base)))| {
                        (SaeKey { group, layer }, (base, story, codes))
                    });
                // `[reading] features = "taxonomy"`: each layer's labels join its codes (the
                // taxonomy is on exactly then in a reading pipeline)
                let layer_in = match reading_on && taxonomy_on {
                    true => layer_in
                        .join(labels_by_key.clone())
                        .map(|(k, ((base, story, codes), labels))| (k, (base, story, codes, Some(labels)))),
                    false => layer_in.map(|(k, (base, story, codes))| (k, (base, story, codes, None))),
                };
                let reading_layers = env.per_key(
                    layer_in,
                    "ReadingLayer",
                    |k| format!("reading models of `{}` layer {}", k.group, k.layer),
                    |ctx, k, values| {
                        let Some((base, _, _, labels)) = values.first() else {
                            return Ok(Vec::new());
                        };
                        let codes: Vec<(String, ArtifactId)> =
                            values.iter().map(|(_, s, c, _)| (s.clone(), c.clone())).collect();
                        Ok(vec![stages::reading::layer_stage(
                            ctx,
                            k.layer,
                            base,
                            &codes,
                            labels.as_ref(),
                        )?])
                    },
                );
                let rec_reading = reading_layers.map(|(k, a)| Record::Reading(k, a));
                let buffer = buffer.clone();
                rec_inputs
                    .concat(rec_words)
                    .concat(rec_saes)
                    .concat(rec_labels)
                    .concat(rec_pe)
                    .concat(rec_parts)
                    .concat(rec_fits)
                    .concat(rec_designs)
                    .concat(rec_sums)
                    .concat(rec_reading_base)
                    .concat(rec_reading)
                    .concat(rec_voxel_subjects)
                    .concat(rec_voxel_designs)
                    .concat(rec_voxel_fits)
                    .map(Out::Rec)
                    .concat(aux)
                    .inner
                    .exchange(|_| 0)
                    .inspect(move |(d, t, r)| {
                        buffer
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((d.clone(), *t, *r))
                    })
                    .probe_with(&probe);
                (stories_in, corpus_in, resp_in, reading_in, voxel_in, aux_in)
            });

        let mut sink = if index == 0 {
            sink.lock().unwrap_or_else(|p| p.into_inner()).take()
        } else {
            None
        };
        let mut state: BTreeMap<Record, isize> = BTreeMap::new();
        let mut touched: BTreeSet<String> = BTreeSet::new();
        let mut t = 0usize;
        while let Some(epoch) = feed.get(t) {
            let (data_time, aux_time) = (2 * t as u64, 2 * t as u64 + 1);
            if index == 0 {
                for (r, d) in &epoch.stories {
                    stories_in.update(r.clone(), *d);
                }
                for (r, d) in &epoch.corpus {
                    corpus_in.update(r.clone(), *d);
                }
                for (r, d) in &epoch.responses {
                    resp_in.update(r.clone(), *d);
                }
                for (r, d) in &epoch.reading {
                    reading_in.update(r.clone(), *d);
                }
                for (r, d) in &epoch.voxel_subjects {
                    voxel_in.update(r.clone(), *d);
                }
            }
            for next in [aux_time, aux_time + 1] {
                if next == aux_time + 1 && index % threads == 0 {
                    // this process's account of the epoch, added by its first worker
                    let errs = std::mem::take(&mut *errors.lock().unwrap_or_else(|p| p.into_inner()));
                    for e in errs {
                        aux_in.update(Out::Error(e), 1);
                    }
                    for p in ctx.store.take_touched() {
                        aux_in.update(Out::Touched(p), 1);
                    }
                }
                stories_in.advance_to(next);
                corpus_in.advance_to(next);
                resp_in.advance_to(next);
                reading_in.advance_to(next);
                voxel_in.advance_to(next);
                aux_in.advance_to(next);
                stories_in.flush();
                corpus_in.flush();
                resp_in.flush();
                reading_in.flush();
                voxel_in.flush();
                aux_in.flush();
                worker.step_while(|| {
                    if !lm_probe.less_than(&next) {
                        // every worker's LM work for the epoch is done (the frontier is global)
                        *lm_session.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    }
                    probe.less_than(&next)
                });
            }
            if let Some(sink) = sink.as_mut() {
                let batch = std::mem::take(&mut *buffer.lock().unwrap_or_else(|p| p.into_inner()));
                let mut delta: BTreeMap<Record, isize> = BTreeMap::new();
                let mut errs = Vec::new();
                for (out, time, diff) in batch {
                    debug_assert!(time <= aux_time && (time == aux_time || time >= data_time));
                    match out {
                        Out::Rec(r) => *delta.entry(r).or_default() += diff,
                        Out::Error(e) if diff > 0 => errs.push(e),
                        Out::Touched(p) if diff > 0 => _ = touched.insert(p),
                        _ => {}
                    }
                }
                let changes: Vec<(Record, isize)> = delta.into_iter().filter(|(_, d)| *d != 0).collect();
                for (r, d) in &changes {
                    let c = state.entry(r.clone()).or_default();
                    *c += d;
                    if *c == 0 {
                        state.remove(r);
                    }
                }
                errs.sort();
                sink(EpochResult {
                    epoch: t as u64,
                    snapshot: Snapshot::from_records(state.iter().filter(|(_, c)| **c > 0).map(|(r, _)| r)),
                    changes,
                    errors: errs,
                    touched: touched.clone(),
                    stats: ctx.store.stats(),
                });
            }
            t += 1;
        }
    })
    .map_err(|e| Error::Invalid(format!("dataflow: {e}")))?;
    for r in guards.join() {
        r.map_err(|e| Error::Invalid(format!("a dataflow worker failed: {e}")))?;
    }
    Ok(())
}
