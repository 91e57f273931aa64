//! vigil: edge anomaly detection for factory cameras.
//!
//! The data path, and where each part lives:
//!
//! ```text
//! source -> decode/preprocess -> engine -> score/decide -> sink
//!           (preprocess)         (engine)
//! ```
//!
//! - [`bundle`]: the model bundle contract (ONNX model + versioned manifest), shared with
//!   `vigil-train`.
//! - [`onnx`]: the ONNX writer that puts the anomaly score inside the graph.
//! - [`preprocess`]: image decoding and the manifest's preprocessing, shared with training.
//! - [`engine`]: ONNX Runtime and tract, behind one `Engine` interface.
//! - [`commands`]: the one-shot commands (`score`, `inspect`, `wrap`).
//! - [`overlay`]: heatmaps drawn over frames (snapshots, reports).
//! - [`synth`]: the procedural data set of textured surfaces and defects (tests, demo).

pub mod bundle;
pub mod commands;
pub mod engine;
pub mod onnx;
pub mod overlay;
pub mod preprocess;
pub mod rng;
pub mod synth;

/// This build's version, recorded in manifests.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
