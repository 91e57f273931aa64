//! vigil's integration tests: one binary, a module per topic, real files and real engines.

mod common;

mod bundle;
mod cameras;
mod cli;
mod conditional;
mod config_docs;
mod daemon;
mod demo;
mod drift;
mod engines;
mod faults;
mod fleet;
mod fuzz_corpus;
mod hardening;
mod homeassistant;
mod load;
mod models;
mod onnx_writer;
mod page;
mod preprocess;
mod rollback;
mod security;
mod synth;
mod tiling;
mod trigger;
