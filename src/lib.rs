//! vigil: edge anomaly detection for factory cameras.
//!
//! The data path, and where each part lives:
//!
//! ```text
//! source -> decode/preprocess -> engine -> score/decide -> sink
//! (source)  (scoring, preprocess) (engine) (decide, alert)  (sink, broker)
//! ```
//!
//! - [`config`]: the daemon's documented config and its validation.
//! - [`daemon`]: `run(config, shutdown)`, which wires the parts below together.
//! - [`source`]: watched folders and MQTT topics; [`frame`]: what they produce.
//! - [`scoring`]: decode workers and the batching inference thread; [`tiling`]: frames to
//!   model inputs (resized or tiled) and model outputs back to frame scores and maps.
//! - [`decide`]: thresholds, cooldown and hysteresis, the anomalous region.
//! - [`alert`]: the alert JSON and its ULID; [`snapshot`]: the heatmap JPEG.
//! - [`sink`]: JSON lines and stdout; [`broker`]: the MQTT connection (alerts out, frames
//!   and threshold changes in).
//! - [`state`]: what survives a restart; [`metrics`]: Prometheus and `/healthz`.
//!
//! - [`bundle`]: the model bundle contract (ONNX model + versioned manifest), shared with
//!   `vigil-train`.
//! - [`onnx`]: the ONNX writer that puts the anomaly score inside the graph.
//! - [`preprocess`]: image decoding and the manifest's preprocessing, shared with training.
//! - [`engine`]: ONNX Runtime and tract, behind one `Engine` interface.
//! - [`commands`]: the one-shot commands (`score`, `inspect`, `wrap`).
//! - [`overlay`]: heatmaps drawn over frames (snapshots, reports).
//! - [`synth`]: the procedural data set of textured surfaces and defects (tests, demo).

pub mod alert;
pub mod broker;
pub mod bundle;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod decide;
pub mod engine;
pub mod frame;
pub mod fuzz_targets;
pub mod guard;
pub mod memory;
pub mod metrics;
pub mod onnx;
pub mod overlay;
pub mod preprocess;
pub mod rng;
pub mod scoring;
pub mod sink;
pub mod snapshot;
pub mod source;
pub mod state;
pub mod synth;
pub mod tiling;

/// This build's version, recorded in manifests.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
