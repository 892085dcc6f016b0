//! `cortexflow watch PIPELINE`: a long-running dataflow that keeps an output folder current.
//!
//! Every `poll` the pipeline file is read again (stories, the subject pattern's matches, the
//! corpus). What differs from the running state goes into the graph as one epoch: a new subject
//! file adds that subject's responses (only its fits and the summaries are computed), a new
//! `[[story]]` streams that story through the LM and SAE, a changed file retracts its old record
//! and adds the new one, a removed file retracts its record and every result derived from it.
//! After each epoch the outputs are republished ([`super::publish`]): tables, then the `changes`
//! log, then the manifest, each file atomically. Settings changes (anything but the input lists)
//! are not applied to a running graph: watch says so and keeps the old settings until restarted.
//!
//! Reading-time pipelines are watched the same way: a story added to the `[reading]` word table
//! streams through the LM and the SAE, and any change to the reading data's files (words, reading
//! times, parses, frequencies, norms) is a new reading-data record, registered in the context
//! ([`crate::stages::Ctx::reading_data`]) before its epoch, so the baseline and every layer's
//! models are refitted on the new data and the old ones retracted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{context, incremental, input_changes, input_records, prepare_inputs, publish, single_epoch, Inputs};
use crate::config::Plan;
use crate::dataflow::{self, EpochFeed, EpochResult, Topology};
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct WatchOptions {
    pub workers: usize,
    /// How often the inputs are looked at.
    pub poll: Duration,
    /// Stop after this many updates after the first (None: run until killed).
    pub updates: Option<usize>,
}

/// What one published update was.
#[derive(Debug, Clone)]
pub struct Update {
    /// The output folder's update number.
    pub epoch: u64,
    pub added: usize,
    pub retracted: usize,
    pub files: Vec<PathBuf>,
}

fn summary_line(r: &EpochResult) -> String {
    let s = &r.snapshot;
    format!(
        "{} stories, {} subjects, {} fits, {} summaries",
        s.stories.len(),
        s.responses.len(),
        s.fits.len(),
        s.summaries.len()
    )
}

/// Watches `pipeline` until killed (or `opts.updates` updates after the first). `on_update` is
/// told of each published update (the CLI prints it).
pub fn watch(pipeline: &Path, opts: &WatchOptions, mut on_update: impl FnMut(&Update) + Send + 'static) -> Result<()> {
    let plan = Plan::load(pipeline)?;
    let ctx = context(plan)?;
    let _lock = incremental::lock_shared(&ctx.plan.store)?;
    let inputs = prepare_inputs(&ctx)?;
    let settings = incremental::settings(&ctx.plan);
    let feed = EpochFeed::new();
    let pending: Arc<Mutex<BTreeMap<u64, Inputs>>> = Arc::default();
    pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(0, inputs.clone());
    feed.push(single_epoch(&inputs));
    let (done_tx, done_rx) = mpsc::channel::<u64>();

    let (c2, p2) = (ctx.clone(), pending.clone());
    let sink = move |r: EpochResult| {
        let inputs = p2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&r.epoch)
            .unwrap_or_default();
        if !r.errors.is_empty() {
            eprintln!(
                "update {} not published: {} stage(s) failed (the outputs stay as they were; fix the input and it is retried):\n  {}",
                r.epoch,
                r.errors.len(),
                r.errors.join("\n  ")
            );
        } else {
            match publish(&c2, &inputs, &r) {
                Ok((files, epoch)) => {
                    let added = r.changes.iter().filter(|(_, d)| *d > 0).count();
                    let retracted = r.changes.len() - added;
                    eprintln!(
                        "update {epoch}: {added} record(s) added, {retracted} retracted; now {}",
                        summary_line(&r)
                    );
                    on_update(&Update {
                        epoch,
                        added,
                        retracted,
                        files,
                    });
                }
                Err(e) => eprintln!("update {} not published: {e}", r.epoch),
            }
        }
        let _ = done_tx.send(r.epoch);
    };
    let topology = Topology::local(opts.workers);
    let (c3, f3) = (ctx.clone(), feed.clone());
    let dataflow = std::thread::spawn(move || dataflow::run_stream(c3, f3, &topology, Box::new(sink)));

    let mut current = inputs;
    let mut next_epoch = 1u64;
    let mut done = 0usize;
    let mut last_problem = String::new();
    let mut say = |msg: String| {
        if msg != last_problem {
            eprintln!("{msg}");
            last_problem = msg;
        }
    };
    eprintln!(
        "watching {} every {:.1} s (new, changed and removed stories, subject files and corpus files)",
        pipeline.display(),
        opts.poll.as_secs_f64()
    );
    loop {
        while let Ok(e) = done_rx.try_recv() {
            if e > 0 {
                done += 1;
            }
        }
        if opts.updates.is_some_and(|n| done >= n) || dataflow.is_finished() {
            break;
        }
        std::thread::sleep(opts.poll);
        let plan = match Plan::load(pipeline) {
            Ok(p) => p,
            Err(e) => {
                say(format!(
                    "cannot use the inputs as they are now ({e}); waiting for a fix"
                ));
                continue;
            }
        };
        if incremental::settings(&plan) != settings {
            say(
                "the pipeline's settings changed: restart `cortexflow watch` to apply them (inputs are still followed)"
                    .into(),
            );
        }
        // a changed [reading] data set (its files) is a new record; its stages find the new
        // inputs in the context's registry
        if let Err(e) = crate::stages::reading::register_reading_data(&ctx, &plan) {
            say(format!("cannot read the reading data now ({e}); waiting for a fix"));
            continue;
        }
        let next = match input_records(&plan, Some(&ctx.store)) {
            Ok(i) => i,
            Err(e) => {
                say(format!("cannot read the inputs now ({e}); waiting for a fix"));
                continue;
            }
        };
        let epoch = input_changes(&current, &next);
        if epoch.is_empty() {
            continue;
        }
        fn count<T>(v: &[(T, isize)], sign: isize) -> usize {
            v.iter().filter(|(_, d)| d.signum() == sign).count()
        }
        eprintln!(
            "inputs changed: stories +{} −{}, responses +{} −{}, corpus +{} −{}, reading data +{} −{}, \
             voxelwise subjects +{} −{}",
            count(&epoch.stories, 1),
            count(&epoch.stories, -1),
            count(&epoch.responses, 1),
            count(&epoch.responses, -1),
            count(&epoch.corpus, 1),
            count(&epoch.corpus, -1),
            count(&epoch.reading, 1),
            count(&epoch.reading, -1),
            count(&epoch.voxel_subjects, 1),
            count(&epoch.voxel_subjects, -1)
        );
        pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(next_epoch, next.clone());
        feed.push(epoch);
        current = next;
        next_epoch += 1;
    }
    feed.close();
    dataflow
        .join()
        .map_err(|_| Error::Invalid("the dataflow thread panicked".into()))?
}
