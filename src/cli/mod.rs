//! Command implementations behind `cortexflow`'s numeric subcommands, kept in the library so they
//! are testable and the binary (`main.rs`) only parses and prints.
//!
//! * [`ridge`]: `cortexflow ridge` — per-target ridge CV on `.npy` / Parquet matrices.

pub mod ridge;

pub use ridge::{run_ridge, RidgeArgs, RidgeSummary};
