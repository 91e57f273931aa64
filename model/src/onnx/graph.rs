//! A small builder over the ONNX protobuf types: named values, typed ops, initializers.
//!
//! The builder only knows the operators vigil's networks and score heads use. Each method
//! appends one node and returns the name of its output, so graphs read like the forward pass
//! they encode. Axes-taking reductions are written in the form the target opset expects
//! (attribute before opset 18, input from 18 on), which lets the same head code extend a
//! foreign model of either generation.

use prost::Message;
use tract_onnx::pb;

/// The opset vigil writes its own graphs with.
pub const OPSET: i64 = 17;
/// The IR version that goes with [`OPSET`].
pub const IR_VERSION: i64 = 8;

/// A dense f32 tensor: weights, biases, constants.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values; `data.len()` is the product of `shape`.
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor from its shape and row-major values.
    ///
    /// # Panics
    /// When `data.len()` does not match `shape`: that is a bug in the caller, not bad input.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "tensor data does not match its shape {shape:?}");
        Tensor { shape, data }
    }

    /// A tensor holding one value.
    pub fn scalar(v: f32) -> Self {
        Tensor::new(vec![], vec![v])
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the tensor holds no element.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// One dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A size known only at run time, such as the batch (`N`).
    Symbol(String),
}

/// Builds one ONNX graph, node by node.
#[derive(Debug)]
pub struct GraphBuilder {
    graph: pb::GraphProto,
    opset: i64,
    next_id: usize,
    prefix: String,
}

pub(crate) fn attr_int(name: &str, i: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i,
        ..Default::default()
    }
}

pub(crate) fn attr_ints(name: &str, ints: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: ints.to_vec(),
        ..Default::default()
    }
}

fn attr_float(name: &str, f: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Float as i32,
        f,
        ..Default::default()
    }
}

pub(crate) fn attr_string(name: &str, s: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::String as i32,
        s: s.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// One node writing one output, named after that output.
pub(crate) fn node_proto(
    op: &str,
    input: Vec<String>,
    output: &str,
    attribute: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        input,
        output: vec![output.into()],
        name: format!("node_{output}"),
        op_type: op.into(),
        attribute,
        ..Default::default()
    }
}

/// The ONNX `ValueInfoProto` of an f32 tensor.
pub fn value_info(name: &str, dims: &[Dim]) -> pb::ValueInfoProto {
    typed_value_info(name, dims, pb::tensor_proto::DataType::Float)
}

/// The ONNX `ValueInfoProto` of a tensor of `elem` values.
fn typed_value_info(name: &str, dims: &[Dim], elem: pb::tensor_proto::DataType) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            denotation: String::new(),
            value: Some(match d {
                Dim::Fixed(n) => Value::DimValue(*n as i64),
                Dim::Symbol(s) => Value::DimParam(s.clone()),
            }),
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: elem as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
        }),
        ..Default::default()
    }
}

pub(crate) fn f32_tensor_proto(name: &str, t: &Tensor) -> pb::TensorProto {
    let mut raw = Vec::with_capacity(t.data.len() * 4);
    for v in &t.data {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    pb::TensorProto {
        name: name.into(),
        dims: t.shape.iter().map(|&d| d as i64).collect(),
        data_type: pb::tensor_proto::DataType::Float as i32,
        raw_data: raw,
        ..Default::default()
    }
}

pub(crate) fn i64_tensor_proto(name: &str, values: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: vec![values.len() as i64],
        data_type: pb::tensor_proto::DataType::Int64 as i32,
        int64_data: values.to_vec(),
        ..Default::default()
    }
}

/// Attributes shared by `Conv` and `ConvTranspose`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvParams {
    /// Stride along both axes.
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
}

/// A convolution's stride, explicit pads (`[top, left, bottom, right]`, which may differ, as
/// TensorFlow's "SAME" padding needs) and groups (the channel count for a depthwise one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvSpec {
    /// Stride along both axes.
    pub stride: usize,
    /// Zero padding: top, left, bottom, right.
    pub pads: [usize; 4],
    /// Groups.
    pub group: usize,
}

/// How `Resize` interpolates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpolation {
    /// Bilinear, half-pixel centres (PyTorch's `align_corners=False`).
    Bilinear,
    /// Nearest neighbour.
    Nearest,
}

/// Padding modes of the `Pad` operator that vigil uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PadMode {
    /// Mirror without repeating the edge pixel.
    Reflect,
    /// Repeat the edge pixel.
    Edge,
}

impl GraphBuilder {
    /// An empty graph written for `opset` (use [`OPSET`] for new models).
    pub fn new(name: &str, opset: i64) -> Self {
        GraphBuilder {
            graph: pb::GraphProto { name: name.into(), ..Default::default() },
            opset,
            next_id: 0,
            prefix: String::new(),
        }
    }

    /// Extends an existing graph (a foreign model's), prefixing every new name with
    /// `prefix` so nothing collides with the names already there.
    pub fn extend(graph: pb::GraphProto, opset: i64, prefix: &str) -> Self {
        GraphBuilder { graph, opset, next_id: 0, prefix: prefix.into() }
    }

    /// The opset the graph is written for.
    pub fn opset(&self) -> i64 {
        self.opset
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.next_id += 1;
        format!("{}{}_{}", self.prefix, hint, self.next_id)
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, dims: &[Dim]) -> String {
        self.graph.input.push(value_info(name, dims));
        name.into()
    }

    /// Declares an int64 graph input (a conditional model's class indices).
    pub fn input_i64(&mut self, name: &str, dims: &[Dim]) -> String {
        self.graph.input.push(typed_value_info(name, dims, pb::tensor_proto::DataType::Int64));
        name.into()
    }

    /// The one-hot rows `[N, k]` of the int64 class indices `classes` (`[N]`): a row of the
    /// identity matrix gathered per image, which every engine runs (an index outside `0..k`
    /// fails the run, so callers check indices first).
    pub fn one_hot(&mut self, classes: &str, k: usize) -> String {
        let mut eye = vec![0f32; k * k];
        for i in 0..k {
            eye[i * k + i] = 1.0;
        }
        let eye = self.constant("class_eye", &Tensor::new(vec![k, k], eye));
        self.gather_by(&eye, classes, 0)
    }

    /// Selects per image one of `k` stacked maps: `maps` is `[N, k, H, W]`, `one_hot`
    /// `[N, k]`; the result `[N, 1, H, W]` is the map of each image's class.
    pub fn select_class(&mut self, maps: &str, one_hot: &str, k: usize) -> String {
        let weights = self.reshape(one_hot, &[-1, k as i64, 1, 1]);
        let picked = self.mul(maps, &weights);
        self.reduce_sum(&picked, &[1], true)
    }

    /// Declares `value` as a graph output under `name` (through an `Identity` when renamed).
    pub fn output(&mut self, value: &str, name: &str, dims: &[Dim]) {
        if value != name {
            self.node("Identity", &[value], name, vec![]);
        }
        self.graph.output.push(value_info(name, dims));
    }

    /// Adds an f32 initializer and returns its name.
    pub fn constant(&mut self, hint: &str, t: &Tensor) -> String {
        let name = self.fresh(hint);
        self.graph.initializer.push(f32_tensor_proto(&name, t));
        name
    }

    /// Adds `t` as a half-precision initializer widened to f32 by a `Cast` (which engines fold
    /// at load), and returns the f32 value's name: half the bytes in the file.
    pub fn constant_f16(&mut self, hint: &str, t: &Tensor) -> String {
        let name = self.fresh(hint);
        let raw = t.data.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
        self.graph.initializer.push(pb::TensorProto {
            name: name.clone(),
            dims: t.shape.iter().map(|&d| d as i64).collect(),
            data_type: pb::tensor_proto::DataType::Float16 as i32,
            raw_data: raw,
            ..Default::default()
        });
        self.op("Cast", &[&name], vec![attr_int("to", pb::tensor_proto::DataType::Float as i64)])
    }

    /// Adds an i64 initializer (shapes, axes, k) and returns its name.
    pub fn constant_i64(&mut self, hint: &str, values: &[i64]) -> String {
        let name = self.fresh(hint);
        self.graph.initializer.push(i64_tensor_proto(&name, values));
        name
    }

    fn node(&mut self, op: &str, inputs: &[&str], output: &str, attribute: Vec<pb::AttributeProto>) {
        let inputs = inputs.iter().map(|s| s.to_string()).collect();
        self.graph.node.push(node_proto(op, inputs, output, attribute));
    }

    fn op(&mut self, op: &str, inputs: &[&str], attribute: Vec<pb::AttributeProto>) -> String {
        let out = self.fresh(&op.to_ascii_lowercase());
        self.node(op, inputs, &out, attribute);
        out
    }

    fn conv_attrs(kernel: &[usize], p: ConvParams) -> Vec<pb::AttributeProto> {
        let (s, d) = (p.stride as i64, p.pad as i64);
        vec![
            attr_ints("kernel_shape", &[kernel[2] as i64, kernel[3] as i64]),
            attr_ints("strides", &[s, s]),
            attr_ints("pads", &[d, d, d, d]),
            attr_ints("dilations", &[1, 1]),
            attr_int("group", 1),
        ]
    }

    /// `Conv`: weight `[out, in, kh, kw]`, optional bias `[out]`.
    pub fn conv(&mut self, x: &str, weight: &Tensor, bias: Option<&Tensor>, p: ConvParams) -> String {
        let w = self.constant("conv_w", weight);
        let mut inputs = vec![x.to_string(), w];
        if let Some(b) = bias {
            inputs.push(self.constant("conv_b", b));
        }
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        self.op("Conv", &refs, Self::conv_attrs(&weight.shape, p))
    }

    /// `Conv` with explicit asymmetric pads and groups: weight `[out, in / group, kh, kw]`.
    pub fn conv_with(&mut self, x: &str, weight: &Tensor, bias: Option<&Tensor>, spec: ConvSpec) -> String {
        let w = self.constant("conv_w", weight);
        let mut inputs = vec![x.to_string(), w];
        if let Some(b) = bias {
            inputs.push(self.constant("conv_b", b));
        }
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let [t, l, b, r] = spec.pads.map(|p| p as i64);
        let s = spec.stride as i64;
        let attrs = vec![
            attr_ints("kernel_shape", &[weight.shape[2] as i64, weight.shape[3] as i64]),
            attr_ints("strides", &[s, s]),
            attr_ints("pads", &[t, l, b, r]),
            attr_ints("dilations", &[1, 1]),
            attr_int("group", spec.group as i64),
        ];
        self.op("Conv", &refs, attrs)
    }

    /// `Clip` to `[lo, hi]` (ReLU6 is `clip(x, 0, 6)`).
    pub fn clip(&mut self, x: &str, lo: f32, hi: f32) -> String {
        let lo = self.constant("clip_lo", &Tensor::scalar(lo));
        let hi = self.constant("clip_hi", &Tensor::scalar(hi));
        self.op("Clip", &[x, &lo, &hi], vec![])
    }

    /// `GlobalAveragePool`: `[N, C, H, W]` to `[N, C, 1, 1]`.
    pub fn global_average_pool(&mut self, x: &str) -> String {
        self.op("GlobalAveragePool", &[x], vec![])
    }

    /// `AveragePool` with a square window, stride 1 and `pad` on every side; the border
    /// averages only the pixels inside the map.
    pub fn average_pool(&mut self, x: &str, kernel: usize, pad: usize) -> String {
        let (k, p) = (kernel as i64, pad as i64);
        let attrs = vec![
            attr_ints("kernel_shape", &[k, k]),
            attr_ints("strides", &[1, 1]),
            attr_ints("pads", &[p, p, p, p]),
            attr_int("count_include_pad", 0),
        ];
        self.op("AveragePool", &[x], attrs)
    }

    /// `Concat` along `axis`.
    pub fn concat(&mut self, inputs: &[&str], axis: i64) -> String {
        self.op("Concat", inputs, vec![attr_int("axis", axis)])
    }

    /// `Transpose` by `perm`.
    pub fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.op("Transpose", &[x], vec![attr_ints("perm", perm)])
    }

    /// `Resize` of the two spatial axes of an NCHW tensor by whole factors (`[fh, fw]`), so
    /// the output size is exact on every engine.
    pub fn upsample(&mut self, x: &str, factors: [usize; 2], how: Interpolation) -> String {
        let scales =
            self.constant("scales", &Tensor::new(vec![4], vec![1.0, 1.0, factors[0] as f32, factors[1] as f32]));
        let attrs = match how {
            Interpolation::Bilinear => {
                vec![attr_string("mode", "linear"), attr_string("coordinate_transformation_mode", "half_pixel")]
            }
            Interpolation::Nearest => vec![
                attr_string("mode", "nearest"),
                attr_string("coordinate_transformation_mode", "asymmetric"),
                attr_string("nearest_mode", "floor"),
            ],
        };
        self.op("Resize", &[x, "", &scales], attrs)
    }

    /// `ArgMin` along `axis` (int64 indices, the axis dropped).
    pub fn arg_min(&mut self, x: &str, axis: i64) -> String {
        self.op("ArgMin", &[x], vec![attr_int("axis", axis), attr_int("keepdims", 0)])
    }

    /// `Gather` along `axis` with indices computed by the graph.
    pub fn gather_by(&mut self, x: &str, indices: &str, axis: i64) -> String {
        self.op("Gather", &[x, indices], vec![attr_int("axis", axis)])
    }

    /// `Gather` of constant `indices` along `axis`.
    pub fn gather(&mut self, x: &str, indices: &[i64], axis: i64) -> String {
        let i = self.constant_i64("indices", indices);
        self.op("Gather", &[x, &i], vec![attr_int("axis", axis)])
    }

    /// `Sqrt`.
    pub fn sqrt(&mut self, x: &str) -> String {
        self.op("Sqrt", &[x], vec![])
    }

    /// `Max` of `x` and a constant scalar (clamps from below).
    pub fn max_scalar(&mut self, x: &str, floor: f32) -> String {
        let c = self.constant("floor", &Tensor::scalar(floor));
        self.op("Max", &[x, &c], vec![])
    }

    /// `ConvTranspose`: weight `[in, out, kh, kw]`, optional bias `[out]`.
    pub fn conv_transpose(&mut self, x: &str, weight: &Tensor, bias: Option<&Tensor>, p: ConvParams) -> String {
        let w = self.constant("convt_w", weight);
        let mut inputs = vec![x.to_string(), w];
        if let Some(b) = bias {
            inputs.push(self.constant("convt_b", b));
        }
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        self.op("ConvTranspose", &refs, Self::conv_attrs(&weight.shape, p))
    }

    /// `BatchNormalization` in inference form (vigil's exports fold it away; this exists
    /// for foreign graphs and for testing the fold).
    pub fn batch_norm(
        &mut self,
        x: &str,
        gamma: &Tensor,
        beta: &Tensor,
        mean: &Tensor,
        var: &Tensor,
        eps: f32,
    ) -> String {
        let g = self.constant("bn_scale", gamma);
        let b = self.constant("bn_bias", beta);
        let m = self.constant("bn_mean", mean);
        let v = self.constant("bn_var", var);
        self.op("BatchNormalization", &[x, &g, &b, &m, &v], vec![attr_float("epsilon", eps)])
    }

    /// `Relu`.
    pub fn relu(&mut self, x: &str) -> String {
        self.op("Relu", &[x], vec![])
    }

    /// `LeakyRelu` with the given negative slope.
    pub fn leaky_relu(&mut self, x: &str, alpha: f32) -> String {
        self.op("LeakyRelu", &[x], vec![attr_float("alpha", alpha)])
    }

    /// `Sigmoid`.
    pub fn sigmoid(&mut self, x: &str) -> String {
        self.op("Sigmoid", &[x], vec![])
    }

    /// `Tanh`.
    pub fn tanh(&mut self, x: &str) -> String {
        self.op("Tanh", &[x], vec![])
    }

    /// `Neg`.
    pub fn neg(&mut self, x: &str) -> String {
        self.op("Neg", &[x], vec![])
    }

    /// `Abs`.
    pub fn abs(&mut self, x: &str) -> String {
        self.op("Abs", &[x], vec![])
    }

    /// `Gemm`: `x [N, K] · weightᵀ + bias`, with `weight [M, K]` as in a linear layer.
    pub fn gemm(&mut self, x: &str, weight: &Tensor, bias: Option<&Tensor>) -> String {
        let w = self.constant("gemm_w", weight);
        let mut inputs = vec![x.to_string(), w];
        if let Some(b) = bias {
            inputs.push(self.constant("gemm_b", b));
        }
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        self.op("Gemm", &refs, vec![attr_int("transB", 1)])
    }

    /// `MatMul` with numpy broadcasting.
    pub fn matmul(&mut self, a: &str, b: &str) -> String {
        self.op("MatMul", &[a, b], vec![])
    }

    /// `Add` (broadcasting).
    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.op("Add", &[a, b], vec![])
    }

    /// `Sub` (broadcasting).
    pub fn sub(&mut self, a: &str, b: &str) -> String {
        self.op("Sub", &[a, b], vec![])
    }

    /// `Mul` (broadcasting).
    pub fn mul(&mut self, a: &str, b: &str) -> String {
        self.op("Mul", &[a, b], vec![])
    }

    /// `Div` (broadcasting).
    pub fn div(&mut self, a: &str, b: &str) -> String {
        self.op("Div", &[a, b], vec![])
    }

    /// `Pow` with a constant exponent.
    pub fn pow(&mut self, x: &str, exponent: f32) -> String {
        let e = self.constant("pow_e", &Tensor::scalar(exponent));
        self.op("Pow", &[x, &e], vec![])
    }

    /// Multiplies by a constant scalar.
    pub fn scale(&mut self, x: &str, factor: f32) -> String {
        let c = self.constant("scale", &Tensor::scalar(factor));
        self.mul(x, &c)
    }

    fn reduce(&mut self, op: &str, x: &str, axes: &[i64], keepdims: bool) -> String {
        let keep = attr_int("keepdims", keepdims as i64);
        if self.opset >= 18 {
            let a = self.constant_i64("axes", axes);
            self.op(op, &[x, &a], vec![keep])
        } else {
            self.op(op, &[x], vec![attr_ints("axes", axes), keep])
        }
    }

    /// `ReduceMean` over `axes`.
    pub fn reduce_mean(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        self.reduce("ReduceMean", x, axes, keepdims)
    }

    /// `ReduceMin` over `axes`.
    pub fn reduce_min(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        self.reduce("ReduceMin", x, axes, keepdims)
    }

    /// `ReduceSum` over `axes` (its axes are an input from opset 13).
    pub fn reduce_sum(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        let keep = attr_int("keepdims", keepdims as i64);
        if self.opset >= 13 {
            let a = self.constant_i64("axes", axes);
            self.op("ReduceSum", &[x, &a], vec![keep])
        } else {
            self.op("ReduceSum", &[x], vec![attr_ints("axes", axes), keep])
        }
    }

    /// `ReduceMax` over `axes`.
    pub fn reduce_max(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        self.reduce("ReduceMax", x, axes, keepdims)
    }

    /// `Reshape` to a constant shape (`0` copies a dimension, `-1` infers one).
    pub fn reshape(&mut self, x: &str, shape: &[i64]) -> String {
        let s = self.constant_i64("shape", shape);
        self.op("Reshape", &[x, &s], vec![])
    }

    /// `Flatten` at `axis`.
    pub fn flatten(&mut self, x: &str, axis: i64) -> String {
        self.op("Flatten", &[x], vec![attr_int("axis", axis)])
    }

    /// `TopK` values (largest, sorted) along `axis`; the indices output is discarded.
    pub fn top_k_values(&mut self, x: &str, k: usize, axis: i64) -> String {
        let k = self.constant_i64("k", &[k as i64]);
        let values = self.fresh("topk_values");
        let indices = self.fresh("topk_indices");
        let name = format!("node_{values}");
        self.graph.node.push(pb::NodeProto {
            input: vec![x.into(), k],
            output: vec![values.clone(), indices],
            name,
            op_type: "TopK".into(),
            attribute: vec![attr_int("axis", axis), attr_int("largest", 1), attr_int("sorted", 1)],
            ..Default::default()
        });
        values
    }

    /// `Pad` of the two spatial axes of an NCHW tensor.
    pub fn pad_spatial(
        &mut self,
        x: &str,
        top: usize,
        bottom: usize,
        left: usize,
        right: usize,
        mode: PadMode,
    ) -> String {
        let (t, b, l, r) = (top as i64, bottom as i64, left as i64, right as i64);
        let pads = self.constant_i64("pads", &[0, 0, t, l, 0, 0, b, r]);
        let mode = match mode {
            PadMode::Reflect => "reflect",
            PadMode::Edge => "edge",
        };
        self.op("Pad", &[x, &pads], vec![attr_string("mode", mode)])
    }

    /// A Gaussian blur of a one-channel NCHW map, as two separable convolutions with a
    /// constant kernel over a reflect-padded input, so the map keeps its size and edges are
    /// not darkened by zero padding. Returns `x` unchanged when `sigma` is 0.
    /// `max_radius` must be below the map's smaller side (a reflect pad cannot be wider).
    pub fn gaussian_blur(&mut self, x: &str, sigma: f32, max_radius: usize) -> String {
        if sigma <= 0.0 || max_radius == 0 {
            return x.into();
        }
        let kernel = gaussian_kernel(sigma, max_radius);
        let r = kernel.len() / 2;
        let padded = self.pad_spatial(x, r, r, r, r, PadMode::Reflect);
        let n = kernel.len();
        let vertical = Tensor::new(vec![1, 1, n, 1], kernel.clone());
        let horizontal = Tensor::new(vec![1, 1, 1, n], kernel);
        let unit = ConvParams { stride: 1, pad: 0 };
        let v = self.conv(&padded, &vertical, None, unit);
        self.conv(&v, &horizontal, None, unit)
    }

    /// The finished model, with the default-domain opset and producer set.
    pub fn finish(self) -> pb::ModelProto {
        pb::ModelProto {
            ir_version: IR_VERSION.max(if self.opset >= 18 { 9 } else { 8 }),
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: self.opset }],
            producer_name: "vigil".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(self.graph),
            ..Default::default()
        }
    }

    /// Hands back the graph without wrapping it in a model (for extending foreign models).
    pub fn into_graph(self) -> pb::GraphProto {
        self.graph
    }
}

/// A normalised 1-D Gaussian of radius `ceil(3σ)`, at most `max_radius`.
pub fn gaussian_kernel(sigma: f32, max_radius: usize) -> Vec<f32> {
    let radius = ((3.0 * sigma).ceil() as usize).clamp(1, max_radius.max(1));
    let mut k: Vec<f32> = (0..=2 * radius)
        .map(|i| {
            let x = i as f32 - radius as f32;
            (-(x * x) / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let sum: f32 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= sum);
    k
}

/// Serialises a model to the bytes of an `.onnx` file.
pub fn encode(model: &pb::ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Parses the bytes of an `.onnx` file.
pub fn decode(bytes: &[u8]) -> Result<pb::ModelProto, prost::DecodeError> {
    pb::ModelProto::decode(bytes)
}

/// The default-domain opset a model imports, if any.
pub fn default_opset(model: &pb::ModelProto) -> Option<i64> {
    model.opset_import.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx").map(|o| o.version)
}

/// The declared dimensions of a graph input or output: `Some(size)` when fixed, `None` when
/// free; `None` overall when the shape is not declared.
pub fn declared_dims(v: &pb::ValueInfoProto) -> Option<Vec<Option<i64>>> {
    use pb::tensor_shape_proto::dimension::Value;
    match &v.r#type {
        Some(pb::TypeProto { value: Some(pb::type_proto::Value::TensorType(t)), .. }) => t.shape.as_ref().map(|s| {
            s.dim
                .iter()
                .map(|d| match d.value {
                    Some(Value::DimValue(n)) if n > 0 => Some(n),
                    _ => None,
                })
                .collect()
        }),
        _ => None,
    }
}

/// Formats declared dimensions like `[N, 3, 128, 128]`.
pub fn format_dims(dims: &Option<Vec<Option<i64>>>) -> String {
    match dims {
        None => "[?]".into(),
        Some(d) => {
            let parts: Vec<String> = d.iter().map(|x| x.map_or("N".into(), |n| n.to_string())).collect();
            format!("[{}]", parts.join(", "))
        }
    }
}

/// The graph's real inputs: its declared inputs that are not initializers (older exporters
/// list every weight as an input too).
pub fn image_inputs(graph: &pb::GraphProto) -> Vec<&pb::ValueInfoProto> {
    inputs_besides(&graph.input, graph.initializer.iter().map(|t| t.name.as_str()))
}

/// The declared `inputs` not named in `initializers` (as [`image_inputs`] reads a graph).
pub fn inputs_besides<'a>(
    inputs: &'a [pb::ValueInfoProto],
    initializers: impl Iterator<Item = &'a str>,
) -> Vec<&'a pb::ValueInfoProto> {
    let inits: std::collections::HashSet<&str> = initializers.collect();
    inputs.iter().filter(|i| !inits.contains(i.name.as_str())).collect()
}
