//! vigil-train: the offline pipeline that turns normal images into a served model bundle.
//!
//! It writes bundles through the `vigil` library (bundle contract, ONNX writer, engines,
//! preprocessing), so training, evaluation and serving share one code path.

pub mod reference;
