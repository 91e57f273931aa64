//! The `vigil-train` subcommands, one module each: its flags (a clap `Args` struct) and its
//! `run`. The binary only parses the command line and dispatches here.

pub mod args;
pub mod augment;
pub mod backbone;
pub mod bench_conditional;
pub mod bench_cyclegan;
pub mod bench_layers;
pub mod bench_quality;
pub mod bench_train;
pub mod console;
pub mod cyclegan;
pub mod elpv;
pub mod eval;
pub mod export;
pub mod kolektor;
pub mod reference_bundle;
pub mod retrain;
pub mod synth;
pub mod train;
