//! Command implementations behind `cortexflow`'s numeric subcommands, kept in the library so they
//! are testable and the binary (`main.rs`) only parses and prints.
//!
//! * [`ridge`]: `cortexflow ridge` — per-target ridge CV on `.npy` / Parquet matrices.
//! * [`simulate`]: `cortexflow simulate` — BOLD-like responses with planted weights and known ceiling.

pub mod ridge;
pub mod simulate;

pub use ridge::{run_ridge, RidgeArgs, RidgeSummary};
pub use simulate::{run_simulate, SimulateArgs, SimulateSummary};
