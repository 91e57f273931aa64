//! vigil-model: what the trainer (`vigil-train`) and the daemon (`vigil`) share, so that a
//! bundle is written, checked, preprocessed and scored by one code path.
//!
//! - [`bundle`]: the model bundle contract (ONNX model + versioned manifest).
//! - [`onnx`]: the ONNX writer, the reference networks and the score heads that put the
//!   anomaly map and score inside the graph.
//! - [`engine`]: ONNX Runtime and tract, behind one `Engine` interface.
//! - [`preprocess`]: image decoding and the manifest's preprocessing.
//! - [`tiling`]: frames to model inputs (resized or tiled) and model outputs back to frame
//!   scores and maps.
//! - [`overlay`]: heatmaps drawn over frames (snapshots, reports).
//! - [`synth`]: the procedural data set of textured surfaces and defects (tests, demo).
//! - [`rng`]: the small seeded generator behind weights, data and splits.
//! - [`fsio`]: durable file replacement (write, sync, rename, sync the folder).
//! - [`digest`]: hex (both ways) and SHA-256.

pub mod bundle;
pub mod digest;
pub mod engine;
pub mod fsio;
pub mod onnx;
pub mod overlay;
pub mod preprocess;
pub mod rng;
pub mod synth;
pub mod tiling;

/// This build's version, recorded in manifests.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
