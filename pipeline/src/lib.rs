//! vigil-train: the offline pipeline that turns normal images into a served model bundle.
//!
//! It writes bundles through the `vigil` library (bundle contract, ONNX writer, engines,
//! preprocessing), so training, evaluation and serving share one code path.
//!
//! - [`data`]: finding images, the train/validation split, loading through vigil's preprocessing.
//! - [`model`]: the families as burn modules; [`device`]: GPU or CPU.
//! - [`config`], [`train`]: the training loop, checkpoints, resume; [`corrupt`]: synthetic defects.
//! - [`forward`]: burn's own eval-mode scoring (the parity reference for the export).
//! - [`layers`]: the strided convolutions as matrix products, and their per-layer benchmark.
//! - [`export`], [`calibrate`], [`evaluate`], [`metrics`]: from a run to a calibrated, evaluated bundle.
//! - [`report`]: curves, histograms and heatmap overlays as PNG with a Markdown page.
//! - [`retrain`]: fine-tuning a bundle on new data into its next version.
//! - [`reference`]: untrained reference bundles for benchmarks.

pub mod calibrate;
pub mod config;
pub mod corrupt;
pub mod data;
pub mod device;
pub mod elpv;
pub mod evaluate;
pub mod export;
pub mod forward;
pub mod layers;
pub mod metrics;
pub mod model;
pub mod reference;
pub mod report;
pub mod retrain;
pub mod ssim;
pub mod train;
