//! Checks a model's declared inputs and outputs against its manifest, engine-independently.

use super::EngineError;
use crate::bundle::Bundle;
use crate::onnx::graph::{declared_dims, format_dims};

/// The largest batch vigil sends to a model whose batch dimension is free.
pub const MAX_BATCH: usize = 64;

/// The model's interface as vigil uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelIo {
    /// Graph input name.
    pub input: String,
    /// The class input of a conditional model (int64 `[N]`) and how many classes it knows.
    pub class_input: Option<(String, usize)>,
    /// Graph output holding the score.
    pub score: String,
    /// Graph output holding the anomaly map, if any.
    pub map: Option<String>,
    /// Whether the batch dimension is free (symbolic) in the model.
    pub batch_is_free: bool,
    /// The largest batch one call takes.
    pub max_batch: usize,
}

/// Reads the model's declared interface and checks it against the manifest.
pub fn check_model(bundle: &Bundle) -> Result<ModelIo, EngineError> {
    let path = bundle.model_path.clone();
    let model = bundle.model_view().map_err(|e| EngineError::Load {
        engine: "vigil",
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let graph = model.graph.as_ref().ok_or_else(|| EngineError::Load {
        engine: "vigil",
        path: path.clone(),
        reason: "the file holds no graph".into(),
    })?;
    let m = &bundle.manifest;
    let inputs = graph.image_inputs();
    let input_err = |problem: String| EngineError::Input { path: path.clone(), problem };
    let Some(input) = inputs.iter().find(|i| i.name == m.input.name) else {
        let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
        return Err(input_err(format!(
            "the manifest names input `{}` but the model's inputs are {names:?}",
            m.input.name
        )));
    };
    let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
    let class_input = match &m.conditioning {
        Some(c) => {
            if inputs.len() != 2 || !names.contains(&c.input.as_str()) || names[0] != m.input.name {
                return Err(input_err(format!(
                    "the manifest describes a conditional model with inputs [`{}`, `{}`] (image, then class) but the model's inputs are {names:?}",
                    m.input.name, c.input
                )));
            }
            Some((c.input.clone(), c.classes.len()))
        }
        None if inputs.len() != 1 => {
            return Err(input_err(format!(
                "the model needs {} inputs {names:?}; vigil feeds one image tensor (a conditional model's manifest names its class input under `conditioning`)",
                inputs.len()
            )));
        }
        None => None,
    };
    let dims = declared_dims(input);
    let want = [m.input.channels as i64, m.input.height as i64, m.input.width as i64];
    let (batch_is_free, max_batch) = match &dims {
        Some(d) if d.len() == 4 => {
            for (axis, (got, want)) in ["channels", "height", "width"].iter().zip(d[1..].iter().zip(want)) {
                if let Some(got) = got
                    && *got != want
                {
                    return Err(input_err(format!(
                        "input `{}` is {} but the manifest says {axis} = {want} ({}x{}x{})",
                        m.input.name,
                        format_dims(&dims),
                        want,
                        m.input.height,
                        m.input.width
                    )));
                }
            }
            match d[0] {
                Some(n) => (false, n as usize),
                None => (true, MAX_BATCH),
            }
        }
        // Undeclared shapes are allowed (the test batch will tell); batch one at a time.
        None => (false, 1),
        Some(_) => {
            return Err(input_err(format!(
                "input `{}` has shape {}, expected [N, C, H, W]",
                m.input.name,
                format_dims(&dims)
            )));
        }
    };
    let outputs: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let out_err = |key: &str, name: &str| EngineError::Output {
        path: path.clone(),
        problem: format!("the manifest's outputs.{key} is `{name}` but the model's outputs are {outputs:?}"),
    };
    if !outputs.contains(&m.outputs.score.as_str()) {
        return Err(out_err("score", &m.outputs.score));
    }
    if let Some(map) = &m.outputs.anomaly_map
        && !outputs.contains(&map.as_str())
    {
        return Err(out_err("anomaly_map", map));
    }
    Ok(ModelIo {
        input: m.input.name.clone(),
        class_input,
        score: m.outputs.score.clone(),
        map: m.outputs.anomaly_map.clone(),
        batch_is_free,
        max_batch: max_batch.clamp(1, MAX_BATCH),
    })
}
