//! tract's form of the 4×4, stride-2 transposed convolution: one convolution over its four output phases.
//!
//! tract runs a transposed convolution as a matrix product followed by `DeconvSum`, a
//! single-threaded scatter of every product column into the output; on the reference
//! autoencoder those scatters took 1.7 ms of tract's 4.3 ms a frame. A 4×4 kernel at stride 2
//! and padding 1 touches each output pixel from a 2×2 input window, a different 2×2 slice of
//! the kernel for each of the four phases (even/odd row, even/odd column). So the same values
//! come from one 2×2 convolution over the input padded by 1, with the four phases' kernels
//! stacked as `4·O` output channels, each phase cropped from its own offset and interleaved by
//! `DepthToSpace`: a convolution tract threads and packs like any other, with the
//! multiply-adds of the original. ONNX Runtime keeps the model as written: this form is no
//! faster there (measured; CHANGELOG.md).

use tract_onnx::pb;

use crate::onnx::values::floats;

use crate::onnx::graph::{
    Tensor, attr_int, attr_ints, attr_string, default_opset, f32_tensor_proto, i64_tensor_proto, node_proto,
};

/// Kernel rows (or columns) that feed output phase 0 and phase 1, for the window's first and
/// second input row: an output row `2m` reads input rows `m-1, m` through kernel rows 3, 1;
/// a row `2m+1` reads rows `m, m+1` through kernel rows 2, 0.
const TAPS: [[usize; 2]; 2] = [[3, 1], [2, 0]];

/// Rewrites every transposed convolution of `model` that has this form (kernel 4×4, stride
/// 2, padding 1, no dilation or groups, float weights stored in the file) and returns how
/// many it rewrote. Anything else is left as it is, so a foreign model loses nothing.
pub fn rewrite_for_tract(model: &mut pb::ModelProto) -> usize {
    // `DepthToSpace` with a mode and `Slice` with input ranges need opset 11.
    if default_opset(model).is_none_or(|v| v < 11) {
        return 0;
    }
    let Some(graph) = model.graph.as_mut() else { return 0 };
    let mut nodes = Vec::with_capacity(graph.node.len());
    let (mut rewritten, mut replaced) = (0, vec![]);
    for node in std::mem::take(&mut graph.node) {
        match phase_form(&node, &graph.initializer) {
            Some(phases) => {
                nodes.extend(phase_nodes(&node, phases, &mut graph.initializer));
                rewritten += 1;
                replaced.extend(node.input.into_iter().skip(1));
            }
            None => nodes.push(node),
        }
    }
    graph.node = nodes;
    // The original kernels would be parsed too, raising the load's memory peak by their
    // size, unless another node still reads them.
    let mut read = std::collections::HashSet::new();
    inputs_read(graph, &mut read);
    // Older exporters also list initializers as graph inputs; outputs may name one too.
    read.extend(graph.input.iter().chain(&graph.output).map(|v| v.name.clone()));
    graph.initializer.retain(|t| !replaced.contains(&t.name) || read.contains(t.name.as_str()));
    rewritten
}

/// Every value name a node of `graph` or of its subgraphs reads.
pub(crate) fn inputs_read(graph: &pb::GraphProto, read: &mut std::collections::HashSet<String>) {
    for node in &graph.node {
        read.extend(node.input.iter().cloned());
        for a in &node.attribute {
            for g in a.g.iter().chain(&a.graphs) {
                inputs_read(g, read);
            }
        }
    }
}

/// A transposed convolution's weights rearranged for its phase convolution.
struct Phases {
    /// `[4·O, C, 2, 2]`: phase (a, b)'s kernels are output channels `(2·a + b)·O ..`.
    weight: Vec<f32>,
    /// The bias, repeated for each phase.
    bias: Option<Vec<f32>>,
    inputs: usize,
    outputs: usize,
}

/// The phase form of `node`, when it is a transposed convolution this rewrite covers.
fn phase_form(node: &pb::NodeProto, initializers: &[pb::TensorProto]) -> Option<Phases> {
    if node.op_type != "ConvTranspose"
        || !(node.domain.is_empty() || node.domain == "ai.onnx")
        || node.output.len() != 1
        || node.output[0].is_empty()
    {
        return None;
    }
    for a in &node.attribute {
        let fits = match a.name.as_str() {
            "kernel_shape" => a.ints == [4, 4],
            "strides" => a.ints == [2, 2],
            "pads" => a.ints == [1, 1, 1, 1],
            "dilations" => a.ints.iter().all(|&d| d == 1),
            "group" => a.i == 1,
            "auto_pad" => a.s.is_empty() || a.s == b"NOTSET",
            "output_padding" => a.ints.iter().all(|&p| p == 0),
            // `output_shape` and anything newer: leave the node to tract.
            _ => false,
        };
        if !fits {
            return None;
        }
    }
    // Strides and pads default to 1 and 0: both must be stated.
    let has = |name: &str| node.attribute.iter().any(|a| a.name == name);
    if !has("strides") || !has("pads") {
        return None;
    }
    let init = |name: &str| initializers.iter().find(|t| t.name == name);
    let w = init(node.input.get(1)?)?;
    let dims: Vec<usize> = w.dims.iter().map(|&d| usize::try_from(d).ok()).collect::<Option<_>>()?;
    let [c, o, 4, 4] = dims[..] else { return None };
    let w = floats(w)?;
    let mut phases = vec![0f32; 4 * o * c * 4];
    for (k, (a, b)) in [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
        for oc in 0..o {
            for ic in 0..c {
                for (r, &ky) in TAPS[a].iter().enumerate() {
                    for (s, &kx) in TAPS[b].iter().enumerate() {
                        phases[(((k * o + oc) * c + ic) * 2 + r) * 2 + s] = w[((ic * o + oc) * 4 + ky) * 4 + kx];
                    }
                }
            }
        }
    }
    let bias = match node.input.get(2).filter(|n| !n.is_empty()) {
        None => None,
        Some(name) => {
            let b = floats(init(name)?)?;
            if b.len() != o {
                return None;
            }
            Some(b.repeat(4))
        }
    };
    Some(Phases { weight: phases, bias, inputs: c, outputs: o })
}

/// The nodes that replace `node`: the phase convolution, a crop per phase, their
/// concatenation and `DepthToSpace`, which writes `node`'s output.
fn phase_nodes(node: &pb::NodeProto, phases: Phases, initializers: &mut Vec<pb::TensorProto>) -> Vec<pb::NodeProto> {
    let out = &node.output[0];
    let name = |part: &str| format!("{out}__phase_{part}");
    let Phases { weight, bias, inputs: c, outputs: o } = phases;
    let w_name = name("w");
    initializers.push(f32_tensor_proto(&w_name, &Tensor::new(vec![4 * o, c, 2, 2], weight)));
    let mut conv_inputs = vec![node.input[0].clone(), w_name];
    if let Some(b) = bias {
        let b_name = name("b");
        initializers.push(f32_tensor_proto(&b_name, &Tensor::new(vec![4 * o], b)));
        conv_inputs.push(b_name);
    }
    let z = name("conv");
    let mut nodes = vec![node_proto(
        "Conv",
        conv_inputs,
        &z,
        vec![
            attr_ints("kernel_shape", &[2, 2]),
            attr_ints("strides", &[1, 1]),
            attr_ints("pads", &[1, 1, 1, 1]),
            attr_ints("dilations", &[1, 1]),
            attr_int("group", 1),
        ],
    )];
    // The convolution's output is one row and column larger than the input; phase (a, b)
    // starts at row a and column b of it and is as large as the input.
    let (o64, end) = (o as i64, i64::MAX);
    let mut crops = vec![];
    for (k, (a, b)) in [(0i64, 0i64), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
        let k = k as i64;
        let crop = name(&format!("p{a}{b}"));
        let starts = format!("{crop}_starts");
        let ends = format!("{crop}_ends");
        let axes = format!("{crop}_axes");
        initializers.push(i64_tensor_proto(&starts, &[k * o64, a, b]));
        initializers.push(i64_tensor_proto(
            &ends,
            &[(k + 1) * o64, if a == 0 { -1 } else { end }, if b == 0 { -1 } else { end }],
        ));
        initializers.push(i64_tensor_proto(&axes, &[1, 2, 3]));
        nodes.push(node_proto("Slice", vec![z.clone(), starts, ends, axes], &crop, vec![]));
        crops.push(crop);
    }
    let cat = name("cat");
    nodes.push(node_proto("Concat", crops, &cat, vec![attr_int("axis", 1)]));
    // DCR puts input channel (2·a + b)·O + o at output row 2h + a, column 2w + b.
    nodes.push(node_proto("DepthToSpace", vec![cat], out, vec![attr_int("blocksize", 2), attr_string("mode", "DCR")]));
    nodes
}

#[cfg(test)]
mod tests {
    use tract_onnx::prelude::{Framework, InferenceModelExt, IntoRunnable, IntoTensor, tract_ndarray, tvec};

    use super::*;
    use crate::onnx::graph::{ConvParams, Dim, GraphBuilder, OPSET};
    use crate::rng::Rng;

    fn random(shape: Vec<usize>, rng: &mut Rng) -> Tensor {
        let n = shape.iter().product();
        Tensor::new(shape, (0..n).map(|_| rng.range(-1.0, 1.0)).collect())
    }

    /// A 3-channel input through a 4×4 stride-2 transposed convolution with a bias, one
    /// without, then a 3×3 stride-1 one (not this rewrite's form) as the output.
    fn model(opset: i64) -> pb::ModelProto {
        let mut rng = Rng::new(3);
        let mut g = GraphBuilder::new("t", opset);
        let x = g.input("x", &[Dim::Fixed(1), Dim::Fixed(3), Dim::Fixed(5), Dim::Fixed(7)]);
        let p = ConvParams { stride: 2, pad: 1 };
        let y = g.conv_transpose(&x, &random(vec![3, 4, 4, 4], &mut rng), Some(&random(vec![4], &mut rng)), p);
        let y = g.conv_transpose(&y, &random(vec![4, 2, 4, 4], &mut rng), None, p);
        let y = g.conv_transpose(&y, &random(vec![2, 2, 3, 3], &mut rng), None, ConvParams { stride: 1, pad: 1 });
        g.output(&y, "y", &[Dim::Fixed(1), Dim::Fixed(2), Dim::Fixed(20), Dim::Fixed(28)]);
        g.finish()
    }

    fn run(model: &pb::ModelProto) -> Vec<f32> {
        let optimized = tract_onnx::onnx().model_for_proto_model(model).unwrap().into_optimized().unwrap();
        let plan = optimized.into_runnable().unwrap();
        let mut rng = Rng::new(9);
        let x = tract_ndarray::Array4::from_shape_fn((1, 3, 5, 7), |_| rng.uniform()).into_tensor();
        let y = plan.run(tvec!(x.into())).unwrap();
        y[0].to_plain_array_view::<f32>().unwrap().iter().copied().collect()
    }

    #[test]
    fn the_phase_form_computes_what_the_transposed_convolutions_did() {
        let original = model(OPSET);
        let mut rewritten = original.clone();
        assert_eq!(rewrite_for_tract(&mut rewritten), 2, "the two 4x4 stride-2 layers, not the 3x3 one");
        let ops: Vec<_> = rewritten.graph.as_ref().unwrap().node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops.iter().filter(|&&o| o == "ConvTranspose").count(), 1, "{ops:?}");
        assert_eq!(ops.iter().filter(|&&o| o == "DepthToSpace").count(), 2, "{ops:?}");
        let kernels =
            |m: &pb::ModelProto| m.graph.as_ref().unwrap().initializer.iter().filter(|t| t.dims.len() == 4).count();
        assert_eq!((kernels(&original), kernels(&rewritten)), (3, 3), "the replaced kernels are dropped");
        let (a, b) = (run(&original), run(&rewritten));
        assert_eq!(a.len(), 2 * 20 * 28);
        let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        assert!(d < 1e-5, "outputs differ by {d}");
    }

    #[test]
    fn other_forms_and_old_opsets_are_left_alone() {
        let mut old = model(10);
        assert_eq!(rewrite_for_tract(&mut old), 0);
        assert_eq!(old, model(10));
        let mut shaped = model(OPSET);
        let node = shaped.graph.as_mut().unwrap().node.iter_mut().find(|n| n.op_type == "ConvTranspose").unwrap();
        node.attribute.push(attr_ints("output_shape", &[10, 14]));
        assert_eq!(rewrite_for_tract(&mut shaped), 1, "only the second layer");
        // A kernel that an older exporter also lists as a graph input stays.
        let mut listed = model(OPSET);
        let g = listed.graph.as_mut().unwrap();
        let kernel = g.node.iter().find(|n| n.op_type == "ConvTranspose").unwrap().input[1].clone();
        g.input.push(crate::onnx::graph::value_info(
            &kernel,
            &[Dim::Fixed(3), Dim::Fixed(4), Dim::Fixed(4), Dim::Fixed(4)],
        ));
        assert_eq!(rewrite_for_tract(&mut listed), 2);
        assert!(listed.graph.as_ref().unwrap().initializer.iter().any(|t| t.name == kernel));
    }
}
