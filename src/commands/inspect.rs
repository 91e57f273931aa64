//! `vigil inspect`: the manifest and the model's declared inputs and outputs, as JSON.

use serde::Serialize;

use vigil_model::bundle::{Bundle, Manifest};
use vigil_model::onnx::graph::{declared_dims, default_opset, format_dims, image_inputs};

/// A declared graph input or output.
#[derive(Debug, Serialize)]
pub struct Port {
    /// Tensor name.
    pub name: String,
    /// Shape, `N` for free dimensions.
    pub shape: String,
}

/// What `vigil inspect` prints.
#[derive(Debug, Serialize)]
pub struct Inspection {
    /// Where the bundle was loaded from.
    pub bundle: String,
    /// The model file.
    pub model_file: String,
    /// SHA-256 of the model file.
    pub model_sha256: String,
    /// Size of the model file in bytes.
    pub model_bytes: usize,
    /// Default-domain opset.
    pub opset: Option<i64>,
    /// Who wrote the ONNX file.
    pub producer: String,
    /// Graph inputs (initializers excluded).
    pub inputs: Vec<Port>,
    /// Graph outputs.
    pub outputs: Vec<Port>,
    /// The manifest.
    pub manifest: Manifest,
}

/// Describes a loaded bundle.
pub fn inspect(bundle: &Bundle) -> anyhow::Result<Inspection> {
    let model = bundle.model_proto()?;
    let graph = model.graph.clone().unwrap_or_default();
    let port = |v: &vigil_model::onnx::pb::ValueInfoProto| Port {
        name: v.name.clone(),
        shape: format_dims(&declared_dims(v)),
    };
    Ok(Inspection {
        bundle: bundle.path.display().to_string(),
        model_file: bundle.model_path.display().to_string(),
        model_sha256: bundle.model_sha256.clone(),
        model_bytes: bundle.model_bytes.len(),
        opset: default_opset(&model),
        producer: format!("{} {}", model.producer_name, model.producer_version).trim().to_string(),
        inputs: image_inputs(&graph).into_iter().map(port).collect(),
        outputs: graph.output.iter().map(port).collect(),
        manifest: bundle.manifest.clone(),
    })
}
