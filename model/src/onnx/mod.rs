//! The ONNX writer: vigil's own graphs, with the anomaly score computed inside the graph.
//!
//! - [`backbone`]: pretrained ImageNet backbones (EfficientNet-Lite) from their weights.
//! - [`features`]: the pretrained-feature families' graphs (backbone, PaDiM, PatchCore,
//!   feature autoencoder).
//! - [`graph`]: a builder over the ONNX protobuf types (tract's prost-generated `pb`).
//! - [`net`]: networks as layer lists, batch-norm folding.
//! - [`reference`]: the reference architectures, with seeded random weights.
//! - [`head`]: the score head and the complete scoring graph of each family.
//! - [`values`]: initializers' values read back from a file.
//! - [`wrap`]: the score head on a foreign autoencoder, checks for foreign scorers.

pub mod backbone;
pub mod features;
pub mod graph;
pub mod head;
pub mod net;
pub mod reference;
pub mod values;
pub mod wrap;

pub use tract_onnx::pb;
