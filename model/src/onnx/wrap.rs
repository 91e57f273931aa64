//! Gives a foreign ONNX model vigil's outputs: an autoencoder exported elsewhere gets the
//! score head appended, and a model that already scores is checked and kept as it is.

use tract_onnx::pb;

use super::graph::{Dim, GraphBuilder, declared_dims, default_opset, image_inputs};
use super::head::{MAP_OUTPUT, SCORE_OUTPUT, reconstruction_head};
use crate::bundle::manifest::{InputSpec, ScoreSpec};

/// What the foreign model's single image input looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignInput {
    /// Graph input name.
    pub name: String,
    /// `[C, H, W]` when all three are fixed in the model.
    pub chw: Option<[usize; 3]>,
}

/// Why a foreign model cannot be wrapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WrapError {
    /// The file holds no graph.
    #[error("the model has no graph")]
    NoGraph,
    /// The graph's inputs are not one image tensor.
    #[error("expected one image input, the model has {0:?}; export it with a single [N, C, H, W] input")]
    Inputs(Vec<String>),
    /// The named output does not exist.
    #[error("the model has no output `{wanted}` (it has {available:?}); pass one of those")]
    NoSuchOutput {
        /// The name asked for.
        wanted: String,
        /// The outputs the model has.
        available: Vec<String>,
    },
    /// The opset is outside what the head is written for.
    #[error(
        "the model imports opset {0:?}; vigil appends its head to opsets 11 to 22 only: re-export the model with one of those"
    )]
    Opset(Option<i64>),
}

/// The image input of a foreign model: its graph inputs that are not initializers.
pub fn foreign_input(model: &pb::ModelProto) -> Result<ForeignInput, WrapError> {
    let graph = model.graph.as_ref().ok_or(WrapError::NoGraph)?;
    let inputs = image_inputs(graph);
    let [input] = inputs.as_slice() else {
        return Err(WrapError::Inputs(inputs.iter().map(|i| i.name.clone()).collect()));
    };
    let chw = match declared_dims(input).as_deref() {
        Some([_, Some(c), Some(h), Some(w)]) => Some([*c as usize, *h as usize, *w as usize]),
        _ => None,
    };
    Ok(ForeignInput { name: input.name.clone(), chw })
}

fn output_names(graph: &pb::GraphProto) -> Vec<String> {
    graph.output.iter().map(|o| o.name.clone()).collect()
}

/// Appends vigil's reconstruction score head to an autoencoder whose output
/// `reconstruction` has the input's shape. The model's outputs become `anomaly_map` and
/// `score`; everything else in it is kept. `input` describes what the model is fed (its
/// size, and its value range for SSIM).
pub fn wrap_reconstruction(
    mut model: pb::ModelProto,
    reconstruction: &str,
    spec: &ScoreSpec,
    input_spec: &InputSpec,
) -> Result<pb::ModelProto, WrapError> {
    let (height, width) = (input_spec.height, input_spec.width);
    let opset = default_opset(&model);
    let Some(opset) = opset.filter(|v| (11..=22).contains(v)) else {
        return Err(WrapError::Opset(opset));
    };
    let input = foreign_input(&model)?;
    let mut graph = model.graph.take().ok_or(WrapError::NoGraph)?;
    let available = output_names(&graph);
    if !available.iter().any(|o| o == reconstruction) {
        return Err(WrapError::NoSuchOutput { wanted: reconstruction.into(), available });
    }
    graph.output.clear();
    let mut g = GraphBuilder::extend(graph, opset, "vigil_head/");
    let (map, score) = reconstruction_head(&mut g, &input.name, reconstruction, spec, input_spec);
    let n = Dim::Symbol("N".into());
    g.output(&map, MAP_OUTPUT, &[n.clone(), Dim::Fixed(1), Dim::Fixed(height), Dim::Fixed(width)]);
    g.output(&score, SCORE_OUTPUT, &[n]);
    model.graph = Some(g.into_graph());
    Ok(model)
}

/// Checks that a model which scores by itself (an anomalib export, say) has the outputs a
/// hand-written manifest names.
pub fn check_external(model: &pb::ModelProto, score: &str, map: Option<&str>) -> Result<(), WrapError> {
    let graph = model.graph.as_ref().ok_or(WrapError::NoGraph)?;
    foreign_input(model)?;
    let available = output_names(graph);
    for wanted in std::iter::once(score).chain(map) {
        if !available.iter().any(|o| o == wanted) {
            return Err(WrapError::NoSuchOutput { wanted: wanted.into(), available });
        }
    }
    Ok(())
}
