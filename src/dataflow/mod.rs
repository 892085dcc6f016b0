//! The analysis as a timely/differential dataflow over coarse records. This is the only module
//! that imports timely and differential-dataflow.
//!
//! Records carry artifact ids (content hashes); the arrays live in the artifact store. The graph:
//! ```text
//! stories(story, art) ∪ corpus(doc, art) ──reduce per text: LM──▶ acts(text, layer, act)
//! acts ──reduce per (language, layer): train SAE──▶ saes((language, layer), sae)
//! acts ⋈ saes ──reduce per (story, layer): encode──▶ codes(story, layer, codes)
//! (acts ∪ codes) ⋈ stories ──reduce per (story, layer, set): HRF + TR average──▶ designs
//! designs ⋈ responses(story, subject, roi) ──reduce per (subject, story, layer, set): ridge──▶ fits
//! fits ──reduce per (story, layer, set) over subjects: mean r, bootstrap CI──▶ summaries
//! ```
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
//! produces exactly that subject's fits, plus the (cheap) summaries. Stage closures do not fail:
//! errors are collected and the run is reported as failed after the dataflow drains.
//!
//! Time: epoch `t` of the inputs is applied at timestamp `2t`; at `2t + 1` each process adds what
//! its workers recorded during the epoch (stage errors, artifacts touched). Every output record,
//! with those, is exchanged to worker 0, so on several processes (`Topology`) the first process
//! sees the whole state and is the one that writes outputs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex};

use differential_dataflow::input::Input;
use serde::{Deserialize, Serialize};
use timely::dataflow::operators::{Exchange, Inspect, Probe};
use timely::dataflow::ProbeHandle;

use crate::lm::LanguageModel;
use crate::pipeline::stages::{self, Ctx, StoredStory};
use crate::store::artifacts::{ArtifactId, StoreStats};
use crate::{Error, Result};

/// (story id, story artifact)
pub type StoryRec = (String, ArtifactId);
/// (story id, (subject, response artifact))
pub type ResponseRec = (String, (String, ArtifactId));
/// (SAE group, layer): the group is the texts' language with `[sae] per-language` (the default),
/// else [`SHARED_SAE_GROUP`].
pub type SaeKey = (String, usize);
/// The SAE group of every text when one SAE is shared by all languages.
pub const SHARED_SAE_GROUP: &str = "all";

/// Input changes applied at one timestamp.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Epoch {
    pub stories: Vec<(StoryRec, isize)>,
    pub corpus: Vec<(StoryRec, isize)>,
    pub responses: Vec<(ResponseRec, isize)>,
}

impl Epoch {
    pub fn is_empty(&self) -> bool {
        self.stories.is_empty() && self.corpus.is_empty() && self.responses.is_empty()
    }
}

/// Key of one encoding fit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FitKey {
    pub subject: String,
    pub story: String,
    pub layer: usize,
    pub feature_set: String,
}

/// One record of the analysis state: a key and the artifact holding its value. The state after
/// an epoch is a set of these; between epochs, records are added and retracted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Record {
    /// An input story: (story, story artifact)
    Story(String, ArtifactId),
    /// An input response table: (story, subject, response artifact)
    Response(String, String, ArtifactId),
    /// (story, words artifact)
    Words(String, ArtifactId),
    /// ((SAE group: the language, or `all`), layer), SAE artifact)
    Sae(SaeKey, ArtifactId),
    Fit(FitKey, ArtifactId),
    /// ((story, layer, feature set), summary artifact)
    Summary((String, usize, String), ArtifactId),
    /// ((SAE group, layer), labels artifact)
    Labels(SaeKey, ArtifactId),
    /// ((subject, story, layer), variance-partition artifact)
    Partition((String, String, usize), ArtifactId),
    /// ((story, layer), `raw+pred-error` design)
    PredError((String, usize), ArtifactId),
}

/// What flows to worker 0: state records, and at each epoch's second timestamp what the
/// processes recorded (stage errors; artifacts read or written, as store-relative paths).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Out {
    Rec(Record),
    Error(String),
    Touched(String),
}

/// The collections' contents after an epoch (sorted, so equal states compare equal).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The input stories (story, story artifact)
    pub stories: BTreeSet<(String, ArtifactId)>,
    /// The input responses ((story, subject), response artifact)
    pub responses: BTreeSet<((String, String), ArtifactId)>,
    /// (story, words artifact)
    pub words: BTreeSet<(String, ArtifactId)>,
    /// ((SAE group, layer), SAE artifact)
    pub saes: BTreeSet<(SaeKey, ArtifactId)>,
    pub fits: BTreeSet<(FitKey, ArtifactId)>,
    /// ((story, layer, feature set), summary artifact)
    pub summaries: BTreeSet<((String, usize, String), ArtifactId)>,
    /// ((SAE group, layer), feature-taxonomy labels artifact), with `[taxonomy]`
    pub labels: BTreeSet<(SaeKey, ArtifactId)>,
    /// ((subject, story, layer), variance-partition artifact), with `[taxonomy] variance-partition`
    pub partitions: BTreeSet<((String, String, usize), ArtifactId)>,
    /// ((story, layer), `raw+pred-error` design id = its `pred-error-record` id), with
    /// `[taxonomy] prediction-error-delta`
    pub pred_errors: BTreeSet<((String, usize), ArtifactId)>,
}

impl Snapshot {
    /// The snapshot holding `records`.
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a Record>) -> Snapshot {
        let mut s = Snapshot::default();
        for r in records {
            s.insert(r.clone());
        }
        s
    }

    fn insert(&mut self, r: Record) {
        match r {
            Record::Story(k, a) => _ = self.stories.insert((k, a)),
            Record::Response(st, sub, a) => _ = self.responses.insert(((st, sub), a)),
            Record::Words(k, a) => _ = self.words.insert((k, a)),
            Record::Sae(k, a) => _ = self.saes.insert((k, a)),
            Record::Fit(k, a) => _ = self.fits.insert((k, a)),
            Record::Summary(k, a) => _ = self.summaries.insert((k, a)),
            Record::Labels(k, a) => _ = self.labels.insert((k, a)),
            Record::Partition(k, a) => _ = self.partitions.insert((k, a)),
            Record::PredError(k, a) => _ = self.pred_errors.insert((k, a)),
        }
    }

    /// Every record of the snapshot, in a fixed order.
    pub fn records(&self) -> Vec<Record> {
        let mut v: Vec<Record> = Vec::new();
        v.extend(self.stories.iter().map(|(k, a)| Record::Story(k.clone(), a.clone())));
        v.extend(
            self.responses
                .iter()
                .map(|((st, sub), a)| Record::Response(st.clone(), sub.clone(), a.clone())),
        );
        v.extend(self.words.iter().map(|(k, a)| Record::Words(k.clone(), a.clone())));
        v.extend(self.saes.iter().map(|(k, a)| Record::Sae(k.clone(), a.clone())));
        v.extend(self.fits.iter().map(|(k, a)| Record::Fit(k.clone(), a.clone())));
        v.extend(
            self.summaries
                .iter()
                .map(|(k, a)| Record::Summary(k.clone(), a.clone())),
        );
        v.extend(self.labels.iter().map(|(k, a)| Record::Labels(k.clone(), a.clone())));
        v.extend(
            self.partitions
                .iter()
                .map(|(k, a)| Record::Partition(k.clone(), a.clone())),
        );
        v.extend(
            self.pred_errors
                .iter()
                .map(|(k, a)| Record::PredError(k.clone(), a.clone())),
        );
        v.sort();
        v
    }

    /// The records added (+1) and retracted (−1) going from `self` to `next`, sorted.
    pub fn changes_to(&self, next: &Snapshot) -> Vec<(Record, isize)> {
        let (a, b): (BTreeSet<Record>, BTreeSet<Record>) = (
            self.records().into_iter().collect(),
            next.records().into_iter().collect(),
        );
        let mut out: Vec<(Record, isize)> = b.difference(&a).map(|r| (r.clone(), 1)).collect();
        out.extend(a.difference(&b).map(|r| (r.clone(), -1)));
        out.sort();
        out
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

/// (story, story artifact, activations, codes, words) → the taxonomy stage's input.
fn story_layer(t: &(String, ArtifactId, ArtifactId, ArtifactId, ArtifactId)) -> crate::pipeline::taxonomy::StoryLayer {
    crate::pipeline::taxonomy::StoryLayer {
        story: t.0.clone(),
        story_art: t.1.clone(),
        act: t.2.clone(),
        codes: t.3.clone(),
        words: t.4.clone(),
    }
}

fn record_error(errors: &Arc<Mutex<Vec<String>>>, what: String, e: Error) {
    errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(format!("{what}: {e}"));
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
    let feature_sets: Vec<String> = ctx.plan.file.encoding.feature_sets.clone();
    let include_stimulus = ctx.plan.file.sae.include_stimulus;
    let per_language = ctx.plan.file.sae.per_language;
    let taxonomy_on = ctx.plan.file.taxonomy.is_some();
    let partition_on = ctx.plan.file.taxonomy.as_ref().is_some_and(|t| t.variance_partition);
    let encode_sets = ctx.plan.file.taxonomy.as_ref().is_some_and(|t| t.encode_sets);
    let pe_delta = ctx.plan.file.taxonomy.as_ref().and_then(|t| t.prediction_error_delta);

    let guards = timely::execute(topology.config(), move |worker| {
        let index = worker.index();
        let errors = errors.clone();
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
        let (mut stories_in, mut corpus_in, mut resp_in, mut aux_in) = worker.dataflow::<u64, _, _>(|scope| {
            let (stories_in, stories) = scope.new_collection::<StoryRec, isize>();
            let (corpus_in, corpus) = scope.new_collection::<StoryRec, isize>();
            let (resp_in, responses) = scope.new_collection::<ResponseRec, isize>();
            let (aux_in, aux) = scope.new_collection::<Out, isize>();
            let rec_inputs = stories.clone().map(|(s, a)| Record::Story(s, a)).concat(
                responses
                    .clone()
                    .map(|(s, (subject, a))| Record::Response(s, subject, a)),
            );

            // ---- LM over every text (stories and corpus documents)
            let texts = stories
                .clone()
                .map(|(s, a)| ((true, s), a))
                .concat(corpus.map(|(c, a)| ((false, c), a)));
            let (c1, e1) = (ctx.clone(), errors.clone());
            let mut model: Option<LanguageModel> = None;
            let acts = texts.reduce_named("LM", move |(_, text), input, output| {
                for (art, diff) in input {
                    if *diff <= 0 {
                        continue;
                    }
                    let mut run = || -> Result<(String, stages::LmOutputs)> {
                        let st: StoredStory = c1.store.load_json("story", art)?;
                        let group = match per_language {
                            true => st.story.language.clone(),
                            false => SHARED_SAE_GROUP.to_string(),
                        };
                        Ok((group, stages::lm_stage(&c1, &mut model, &st.story)?))
                    };
                    match run() {
                        Ok((group, out)) => {
                            output.push(((group.clone(), None, out.words), 1));
                            for (l, id) in out.layers {
                                output.push(((group.clone(), Some(l), id), 1));
                            }
                        }
                        Err(e) => record_error(&e1, format!("LM on `{text}`"), e),
                    }
                }
            });
            let story_words = acts
                .clone()
                .flat_map(|((is_story, text), (_, layer, id))| (is_story && layer.is_none()).then_some((text, id)));
            let rec_words = story_words.clone().map(|(s, a)| Record::Words(s, a));

            // ---- one SAE per (language, layer)
            let (c2, e2) = (ctx.clone(), errors.clone());
            let saes = acts
                .clone()
                .flat_map(move |((is_story, _), (group, layer, id))| {
                    layer
                        .filter(|_| !is_story || include_stimulus)
                        .map(|l| ((group, l), id))
                })
                .reduce_named("SAE", move |(group, layer), input, output| {
                    let ids: Vec<ArtifactId> = input
                        .iter()
                        .filter(|(_, d)| *d > 0)
                        .map(|(a, _)| (*a).clone())
                        .collect();
                    match c2.install(|| stages::sae_stage(&c2, group, *layer, &ids)) {
                        Ok(id) => output.push((id, 1)),
                        Err(e) => record_error(&e2, format!("SAE of `{group}` layer {layer}"), e),
                    }
                });
            let rec_saes = saes.clone().map(|(k, a)| Record::Sae(k, a));

            // ---- per (story, layer): SAE codes
            let story_acts = acts.flat_map(|((is_story, story), (group, layer, id))| {
                layer.filter(|_| is_story).map(|l| ((group, l), (story, id)))
            });
            let story_acts_tax = story_acts.clone();
            let (c3, e3) = (ctx.clone(), errors.clone());
            let codes = story_acts
                .clone()
                .join(saes.clone())
                .map(|((_, layer), ((story, act), sae))| ((story, layer), (act, sae)))
                .reduce_named("Encode", move |(story, layer), input, output| {
                    for ((act, sae), diff) in input {
                        if *diff > 0 {
                            match c3.install(|| stages::codes_stage(&c3, act, sae)) {
                                Ok(id) => output.push((id, 1)),
                                Err(e) => record_error(&e3, format!("codes of `{story}` layer {layer}"), e),
                            }
                        }
                    }
                });

            // ---- per (story, layer): SAE reconstructions (only for the "sae-recon" feature set)
            let want_recon = feature_sets.iter().any(|f| f == "sae-recon");
            let (c7, e7) = (ctx.clone(), errors.clone());
            let recons = story_acts
                .clone()
                .filter(move |_| want_recon)
                .join(saes.clone())
                .map(|((_, layer), ((story, act), sae))| ((story, layer), (act, sae)))
                .reduce_named("Reconstruct", move |(story, layer), input, output| {
                    for ((act, sae), diff) in input {
                        if *diff > 0 {
                            match c7.install(|| stages::recon_stage(&c7, act, sae)) {
                                Ok(id) => output.push((id, 1)),
                                Err(e) => record_error(&e7, format!("reconstruction of `{story}` layer {layer}"), e),
                            }
                        }
                    }
                })
                .map(|((story, layer), id)| (story, (layer, "sae-recon".to_string(), "recon".to_string(), id)));

            // ---- per story: lexical controls (feature set "controls"), the same design at every
            // layer (its fits are computed once: same design and responses, same fit artifact)
            let want_controls = feature_sets.iter().any(|f| f == "controls");
            let layers = ctx.plan.layers.clone();
            let (c12, e12) = (ctx.clone(), errors.clone());
            let controls = stories
                .clone()
                .filter(move |_| want_controls)
                .reduce_named("Controls", move |story, input, output| {
                    for (art, diff) in input {
                        if *diff > 0 {
                            match c12.install(|| stages::controls_stage(&c12, art)) {
                                Ok(id) => output.push((id, 1)),
                                Err(e) => record_error(&e12, format!("controls of `{story}`"), e),
                            }
                        }
                    }
                })
                .flat_map(move |(story, id)| {
                    layers
                        .iter()
                        .map(|l| {
                            (
                                story.clone(),
                                (*l, "controls".to_string(), "controls".to_string(), id.clone()),
                            )
                        })
                        .collect::<Vec<_>>()
                });

            // ---- designs per (story, layer, feature set)
            let want_raw = feature_sets.iter().any(|f| f == "raw");
            let want_sae = feature_sets.iter().any(|f| f == "sae");
            let raw = story_acts
                .filter(move |_| want_raw)
                .map(|((_, layer), (story, id))| (story, (layer, "raw".to_string(), "lm".to_string(), id)));
            let sae_feats = codes
                .clone()
                .filter(move |_| want_sae)
                .map(|((story, layer), id)| (story, (layer, "sae".to_string(), "codes".to_string(), id)));
            let (c4, e4) = (ctx.clone(), errors.clone());
            let designs = raw
                .concat(sae_feats)
                .concat(recons)
                .concat(controls)
                .join(stories.clone())
                .map(|(story, ((layer, set, stage, id), story_art))| ((story, layer, set), (story_art, stage, id)))
                .reduce_named("Design", move |(story, layer, set), input, output| {
                    for ((story_art, stage, id), diff) in input {
                        if *diff > 0 {
                            match c4.install(|| stages::design_stage(&c4, story_art, stage, id)) {
                                Ok(d) => output.push((d, 1)),
                                Err(e) => record_error(&e4, format!("design `{story}` layer {layer} {set}"), e),
                            }
                        }
                    }
                });

            // ---- taxonomy (with [taxonomy]): labels and feature sets per layer, derived designs
            // per (story, layer, set): categories, subcategories and their baselines
            let story_layers = story_acts_tax
                .filter(move |_| taxonomy_on)
                .map(|((group, layer), (story, act))| ((story, layer), (group, act)))
                .join(codes.clone())
                .map(|((story, layer), ((group, act), codes))| (story, (group, layer, act, codes)))
                .join(story_words)
                .join(stories.clone())
                .map(|(story, (((group, layer, act, codes), words), story_art))| {
                    ((story.clone(), layer), (group, (story, story_art, act, codes, words)))
                });
            let (c8, e8) = (ctx.clone(), errors.clone());
            let labels = story_layers
                .clone()
                .map(|((_, layer), (group, t))| ((group, layer), t))
                .join(saes.clone())
                .reduce_named("Label", move |(group, layer), input, output| {
                    let mut sae = None;
                    let mut items = Vec::new();
                    for ((t, s), d) in input {
                        if *d > 0 {
                            sae = Some(s.clone());
                            items.push(story_layer(t));
                        }
                    }
                    let Some(sae) = sae else { return };
                    match c8.install(|| crate::pipeline::taxonomy::label_stage(&c8, group, *layer, &sae, &items)) {
                        Ok((id, sets)) => {
                            for set in sets {
                                output.push(((set, id.clone()), 1));
                            }
                        }
                        Err(e) => record_error(&e8, format!("labels of `{group}` layer {layer}"), e),
                    }
                });
            let labels_by_key = labels.clone().map(|(key, (_, id))| (key, id)).distinct();
            let rec_labels = labels_by_key.clone().map(|(k, a)| Record::Labels(k, a));
            // (story, layer) → its SAE key, for the joins below
            let story_key = story_layers
                .clone()
                .map(|((story, layer), (group, _))| ((story, layer), (group, layer)));
            let story_layers_pe = story_layers.clone();
            let (c9, e9) = (ctx.clone(), errors.clone());
            let derived = designs
                .clone()
                .filter(move |((_, _, set), _)| encode_sets && set == "sae")
                .map(|((story, layer, _), d)| ((story, layer), d))
                .join(story_layers)
                .map(|((story, layer), (d, (group, t)))| ((group, layer), (story, d, t)))
                .join(saes.clone())
                .join(labels)
                .map(|((_, layer), (((story, d, t), sae), (set, lid)))| ((story, layer, set), (d, t, sae, lid)))
                .reduce_named("DerivedDesign", move |(story, layer, set), input, output| {
                    for ((d, t, sae, lid), diff) in input {
                        if *diff > 0 {
                            match c9.install(|| {
                                crate::pipeline::taxonomy::derived_design_stage(&c9, &story_layer(t), d, sae, lid, set)
                            }) {
                                Ok(id) => output.push((id, 1)),
                                Err(e) => record_error(&e9, format!("design `{story}` layer {layer} {set}"), e),
                            }
                        }
                    }
                });
            let designs = designs.concat(derived);

            // ---- prediction-error features (METHOD.md §9): (story, ℓ) ⋈ (story, ℓ − Δ) ⋈ the raw
            // design of (story, ℓ) ──reduce per (story, ℓ)──▶ the `raw+pred-error` design
            let delta = pe_delta.unwrap_or(0);
            let pe_base = story_layers_pe
                .filter(move |_| pe_delta.is_some())
                .map(|((story, layer), (group, t))| ((group, layer), (story, t)))
                .join(saes.clone())
                .map(|((_, layer), ((story, t), sae))| ((story, layer), (t.1, t.3, sae)));
            let pe_from = pe_base
                .clone()
                .map(move |((story, layer), (_, codes, sae))| ((story, layer + delta), (codes, sae)));
            let raw_designs = designs
                .clone()
                .filter(|((_, _, set), _)| set == "raw")
                .map(|((story, layer, _), d)| ((story, layer), d));
            let (c10, e10) = (ctx.clone(), errors.clone());
            let pred_errors = pe_base.join(pe_from).join(raw_designs).reduce_named(
                "PredError",
                move |(story, layer), input, output| {
                    for ((((story_art, codes, sae), (codes_from, sae_from)), raw), diff) in input {
                        if *diff > 0 {
                            match c10.install(|| {
                                crate::pipeline::taxonomy::pred_error_stage(
                                    &c10,
                                    story,
                                    story_art,
                                    *layer,
                                    (codes, sae),
                                    *layer - delta,
                                    (codes_from, sae_from),
                                    raw,
                                )
                            }) {
                                Ok(id) => output.push((id, 1)),
                                Err(e) => record_error(&e10, format!("prediction error `{story}` layer {layer}"), e),
                            }
                        }
                    }
                },
            );
            let rec_pe = pred_errors.clone().map(|(k, a)| Record::PredError(k, a));
            let designs = designs
                .concat(pred_errors.map(|((story, layer), id)| ((story, layer, "raw+pred-error".to_string()), id)));

            // ---- variance partition by category per (subject, story, layer)
            let (c11, e11) = (ctx.clone(), errors.clone());
            let partitions = designs
                .clone()
                .filter(move |((_, _, set), _)| partition_on && set == "sae")
                .map(|((story, layer, _), d)| ((story, layer), d))
                .join(story_key)
                .map(|((story, _), (d, key))| (key, (story, d)))
                .join(labels_by_key)
                .map(|((_, layer), ((story, d), lid))| (story, (layer, d, lid)))
                .join(responses.clone())
                .map(|(story, ((layer, d, lid), (subject, roi)))| ((subject, story, layer), (d, lid, roi)))
                .reduce_named("Partition", move |key, input, output| {
                    for ((d, lid, roi), diff) in input {
                        if *diff > 0 {
                            match c11.install(|| crate::pipeline::taxonomy::partition_stage(&c11, d, lid, roi)) {
                                Ok(id) => output.push((id, 1)),
                                Err(e) => record_error(&e11, format!("variance partition {key:?}"), e),
                            }
                        }
                    }
                });
            let rec_parts = partitions.map(|(k, a)| Record::Partition(k, a));

            // ---- fits per (subject, story, layer, feature set)
            let (c5, e5) = (ctx.clone(), errors.clone());
            let fits = designs
                .map(|((story, layer, set), design)| (story, (layer, set, design)))
                .join(responses)
                .map(|(story, ((layer, feature_set, design), (subject, roi)))| {
                    (
                        FitKey {
                            subject,
                            story,
                            layer,
                            feature_set,
                        },
                        (design, roi),
                    )
                })
                .reduce_named("Fit", move |key, input, output| {
                    for ((design, roi), diff) in input {
                        if *diff > 0 {
                            match c5.install(|| stages::fit_stage(&c5, design, roi)) {
                                Ok(f) => output.push((f, 1)),
                                Err(e) => record_error(&e5, format!("fit {key:?}"), e),
                            }
                        }
                    }
                });
            let rec_fits = fits.clone().map(|(k, a)| Record::Fit(k, a));

            // ---- summaries over subjects
            let (c6, e6) = (ctx.clone(), errors.clone());
            let summaries = fits
                .map(|(k, fit)| ((k.story, k.layer, k.feature_set), (k.subject, fit)))
                .reduce_named("Summary", move |key, input, output| {
                    let ids: Vec<ArtifactId> = input
                        .iter()
                        .filter(|(_, d)| *d > 0)
                        .map(|((_, f), _)| f.clone())
                        .collect();
                    match c6.install(|| stages::summary_stage(&c6, &ids)) {
                        Ok(s) => output.push((s, 1)),
                        Err(e) => record_error(&e6, format!("summary {key:?}"), e),
                    }
                });
            let rec_sums = summaries.map(|(k, a)| Record::Summary(k, a));
            let buffer = buffer.clone();
            rec_inputs
                .concat(rec_words)
                .concat(rec_saes)
                .concat(rec_labels)
                .concat(rec_pe)
                .concat(rec_parts)
                .concat(rec_fits)
                .concat(rec_sums)
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
            (stories_in, corpus_in, resp_in, aux_in)
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
                aux_in.advance_to(next);
                stories_in.flush();
                corpus_in.flush();
                resp_in.flush();
                aux_in.flush();
                worker.step_while(|| probe.less_than(&next));
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
