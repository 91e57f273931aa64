//! vigil-train's integration tests: small synthetic runs on the CPU, real files, real engines.

mod common;

mod backbone;
mod charts;
mod cli;
mod conditional;
mod cyclegan;
mod features;
mod gate;
mod retrain_shape;
mod training;
