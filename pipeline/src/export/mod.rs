//! From a finished run to a served bundle.
//!
//! - [`bundle`]: the export itself: the ONNX graph, calibration, evaluation, the manifest.
//! - [`forward`]: burn's own eval-mode scoring, the parity reference for the export.
//! - [`reference`]: untrained reference bundles for benchmarks.

pub mod bundle;
pub mod forward;
pub mod reference;
