//! tract's form of half-precision constants: widened to float32 once, at load.
//!
//! vigil's graphs store their largest constants (PaDiM's inverse covariances) in half
//! precision behind a `Cast` to float32, which ONNX Runtime folds when it builds its session.
//! tract does not: it ran the cast on every frame, 65 against 28 ms a frame for the default
//! bundle on 2 cores (measured, docs/performance.md). Each `Cast` to float32 whose input is a
//! half-precision initializer becomes a float32 initializer under the cast's output name.

use tract_onnx::pb;

use crate::onnx::graph::f32_tensor_proto;
use crate::onnx::values::halves;

/// Rewrites every `Cast` to float32 of a half-precision initializer of `model`'s main graph
/// into a float32 initializer, and returns how many it rewrote.
pub fn widen_half_constants(model: &mut pb::ModelProto) -> usize {
    let Some(graph) = model.graph.as_mut() else { return 0 };
    let float = pb::tensor_proto::DataType::Float as i64;
    let mut widened = vec![];
    let mut kept = Vec::with_capacity(graph.node.len());
    for node in std::mem::take(&mut graph.node) {
        let to_float = node.op_type == "Cast" && node.attribute.iter().any(|a| a.name == "to" && a.i == float);
        let source = (to_float && node.input.len() == 1 && node.output.len() == 1)
            .then(|| graph.initializer.iter().position(|t| t.name == node.input[0]))
            .flatten()
            .and_then(|i| halves(&graph.initializer[i]).map(|t| (i, t)));
        match source {
            Some((i, values)) => {
                widened.push((graph.initializer[i].name.clone(), f32_tensor_proto(&node.output[0], &values)));
            }
            None => kept.push(node),
        }
    }
    graph.node = kept;
    let count = widened.len();
    // The half-precision copy goes unless something else still reads it.
    let mut still_read = std::collections::HashSet::new();
    super::deconv::inputs_read(graph, &mut still_read);
    still_read.extend(graph.input.iter().chain(&graph.output).map(|v| v.name.clone()));
    for (half_name, wide) in widened {
        if !still_read.contains(&half_name) {
            graph.initializer.retain(|t| t.name != half_name);
        }
        graph.initializer.push(wide);
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::graph::{Dim, GraphBuilder, OPSET, Tensor};

    #[test]
    fn a_cast_half_constant_becomes_a_float_one_and_the_graph_computes_the_same() {
        let mut g = GraphBuilder::new("t", OPSET);
        let x = g.input("x", &[Dim::Fixed(2)]);
        let c = g.constant_f16("c", &Tensor::new(vec![2], vec![1.5, -0.25]));
        let y = g.add(&x, &c);
        g.output(&y, "y", &[Dim::Fixed(2)]);
        let mut model = g.finish();
        assert_eq!(widen_half_constants(&mut model), 1);
        let graph = model.graph.as_ref().unwrap();
        assert!(graph.node.iter().all(|n| n.op_type != "Cast"), "the cast is gone");
        assert_eq!(graph.initializer.len(), 1, "the half-precision copy is gone");
        let t = &graph.initializer[0];
        assert_eq!((t.name.as_str(), t.data_type), (c.as_str(), pb::tensor_proto::DataType::Float as i32));
        assert_eq!(crate::onnx::values::floats(t), Some(vec![1.5, -0.25]));
    }
}
