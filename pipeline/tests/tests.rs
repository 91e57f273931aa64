//! vigil-train's integration tests: small synthetic runs on the CPU, real files, real engines.

mod cli;
mod training;
