//! The run's tables: the dataflow's final state (a [`crate::dataflow::Snapshot`]) read back from
//! the artifact store and written as Parquet (schemas in data-schemas/), with the plot and the
//! Markdown report beside them.
//!
//! * [`write`]: [`write::write_outputs`] writes every table of a run, the plot and the report.
//! * [`tables`]: fits (q-values BH per language), summaries with ISC noise ceilings, SAE quality.
//! * [`columns`]: column builders and the schema-checked table writer; [`rows`]: shared rows.
//! * [`taxonomy_tables`]: feature labels and sets, baselines, topography, label agreement.
//! * [`feature_weights`]: each labelled feature's encoding weight per ROI (the feature cards').
//! * [`partition_tables`]: variance partitions by category, prediction-error comparisons.
//! * [`language_tables`]: per-language counts, peak layers, category proportions.
//! * [`reading_tables`]: the tables of a reading-time run (`[reading]`).
//! * [`voxelwise_tables`]: the voxelwise tables (`[voxelwise]`, `cortexflow voxelwise fit`).
//!
//! May import: everything below `dataflow` and `report` (`stages`, `dataflow::Snapshot`,
//! `report`, the analyses, `store`, `stats`); never `pipeline` or `cli`.

pub mod columns;
pub mod feature_weights;
pub mod language_tables;
pub mod partition_tables;
pub mod reading_tables;
pub mod rows;
pub mod tables;
pub mod taxonomy_tables;
pub mod voxelwise_tables;
pub mod write;
