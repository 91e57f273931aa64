//! The reference encoder and decoder (`REFERENCE-ARCHITECTURES.md`) as burn modules, and
//! their hand-over to the ONNX writer as layer lists.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::tensor::activation::{leaky_relu, relu, sigmoid};
use burn::tensor::{Device, Tensor};
use vigil_model::onnx::graph::{ConvParams, Tensor as OnnxTensor};
use vigil_model::onnx::net::{BatchNorm as OnnxBatchNorm, Layer, Sequential};
use vigil_model::onnx::reference::ArchSpec;

use crate::family::layers::{conv_down, conv_up};

const SLOPE: f64 = 0.2;

fn down(cin: usize, cout: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [4, 4])
        .with_stride([2, 2])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device)
}

fn up(cin: usize, cout: usize, k: usize, stride: usize, pad: usize, device: &Device) -> ConvTranspose2d {
    ConvTranspose2dConfig::new([cin, cout], [k, k]).with_stride([stride, stride]).with_padding([pad, pad]).init(device)
}

/// Encoder `E(out)`: `C x S x S -> out x 1 x 1`, four strided convolutions then a projection.
#[derive(Module, Debug)]
pub struct Encoder {
    c1: Conv2d,
    c2: Conv2d,
    c3: Conv2d,
    c4: Conv2d,
    c5: Conv2d,
    bn2: Option<BatchNorm>,
    bn3: Option<BatchNorm>,
    bn4: Option<BatchNorm>,
}

impl Encoder {
    /// A new encoder with `out` output channels; `bn` adds batch norm after convolutions 2–4.
    pub fn new(spec: &ArchSpec, out: usize, bn: bool, device: &Device) -> Self {
        let w = spec.width;
        let norm = |c: usize| bn.then(|| BatchNormConfig::new(c).init(device));
        Encoder {
            c1: down(spec.channels + spec.classes, w, device),
            c2: down(w, 2 * w, device),
            c3: down(2 * w, 4 * w, device),
            c4: down(4 * w, 8 * w, device),
            c5: Conv2dConfig::new([8 * w, out], [spec.bottom(), spec.bottom()]).init(device),
            bn2: norm(2 * w),
            bn3: norm(4 * w),
            bn4: norm(8 * w),
        }
    }

    fn block(x: Tensor<4>, conv: &Conv2d, bn: &Option<BatchNorm>) -> Tensor<4> {
        let x = conv_down(conv, x);
        let x = match bn {
            Some(bn) => bn.forward(x),
            None => x,
        };
        leaky_relu(x, SLOPE)
    }

    /// The features before the projection: `[B, 8w, S/16, S/16]`.
    pub fn features(&self, x: Tensor<4>) -> Tensor<4> {
        let x = leaky_relu(conv_down(&self.c1, x), SLOPE); // [B, w, S/2, S/2]
        let x = Self::block(x, &self.c2, &self.bn2); // [B, 2w, S/4, S/4]
        let x = Self::block(x, &self.c3, &self.bn3); // [B, 4w, S/8, S/8]
        Self::block(x, &self.c4, &self.bn4) // [B, 8w, S/16, S/16]
    }

    /// `[B, C, S, S] -> [B, out, 1, 1]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.c5.forward(self.features(x))
    }

    /// The same function as a layer list for the ONNX writer (batch norm unfolded).
    pub fn to_sequential(&self) -> Sequential {
        let mut layers = vec![conv_layer(&self.c1, 2, 1), Layer::LeakyRelu(SLOPE as f32)];
        for (c, bn) in [(&self.c2, &self.bn2), (&self.c3, &self.bn3), (&self.c4, &self.bn4)] {
            layers.push(conv_layer(c, 2, 1));
            if let Some(bn) = bn {
                layers.push(bn_layer(bn));
            }
            layers.push(Layer::LeakyRelu(SLOPE as f32));
        }
        layers.push(conv_layer(&self.c5, 1, 0));
        Sequential::new(layers)
    }

    /// How many leading layers of [`Self::to_sequential`] compute [`Self::features`].
    pub fn feature_layers(&self) -> usize {
        self.to_sequential().layers.len() - 1
    }
}

/// Decoder / generator `G`: `latent x 1 x 1 -> C x S x S`, sigmoid output.
#[derive(Module, Debug)]
pub struct Decoder {
    t1: ConvTranspose2d,
    t2: ConvTranspose2d,
    t3: ConvTranspose2d,
    t4: ConvTranspose2d,
    t5: ConvTranspose2d,
    bn1: BatchNorm,
    bn2: BatchNorm,
    bn3: BatchNorm,
    bn4: BatchNorm,
}

impl Decoder {
    /// A new decoder for `spec`.
    pub fn new(spec: &ArchSpec, device: &Device) -> Self {
        let w = spec.width;
        Decoder {
            t1: up(spec.latent + spec.classes, 8 * w, spec.bottom(), 1, 0, device),
            t2: up(8 * w, 4 * w, 4, 2, 1, device),
            t3: up(4 * w, 2 * w, 4, 2, 1, device),
            t4: up(2 * w, w, 4, 2, 1, device),
            t5: up(w, spec.channels, 4, 2, 1, device),
            bn1: BatchNormConfig::new(8 * w).init(device),
            bn2: BatchNormConfig::new(4 * w).init(device),
            bn3: BatchNormConfig::new(2 * w).init(device),
            bn4: BatchNormConfig::new(w).init(device),
        }
    }

    /// `[B, latent, 1, 1] -> [B, C, S, S]` in [0, 1].
    pub fn forward(&self, z: Tensor<4>) -> Tensor<4> {
        let x = relu(self.bn1.forward(self.t1.forward(z))); // [B, 8w, S/16, S/16]
        let x = relu(self.bn2.forward(conv_up(&self.t2, x))); // [B, 4w, S/8, S/8]
        let x = relu(self.bn3.forward(conv_up(&self.t3, x))); // [B, 2w, S/4, S/4]
        let x = relu(self.bn4.forward(conv_up(&self.t4, x))); // [B, w, S/2, S/2]
        sigmoid(conv_up(&self.t5, x)) // [B, C, S, S]
    }

    /// The same function as a layer list for the ONNX writer.
    pub fn to_sequential(&self) -> Sequential {
        let mut layers = vec![];
        for (t, bn, stride, pad) in [
            (&self.t1, &self.bn1, 1, 0),
            (&self.t2, &self.bn2, 2, 1),
            (&self.t3, &self.bn3, 2, 1),
            (&self.t4, &self.bn4, 2, 1),
        ] {
            layers.push(conv_t_layer(t, stride, pad));
            layers.push(bn_layer(bn));
            layers.push(Layer::Relu);
        }
        layers.push(conv_t_layer(&self.t5, 2, 1));
        layers.push(Layer::Sigmoid);
        Sequential::new(layers)
    }
}

pub(crate) fn tensor_of<const D: usize>(t: Tensor<D>) -> OnnxTensor {
    let shape = t.dims().to_vec();
    let data = t.try_into_vec_as::<f32>().expect("float weights");
    OnnxTensor::new(shape, data)
}

pub(crate) fn conv_layer(c: &Conv2d, stride: usize, pad: usize) -> Layer {
    Layer::Conv {
        weight: tensor_of(c.weight.val()),
        bias: c.bias.as_ref().map(|b| tensor_of(b.val())),
        params: ConvParams { stride, pad },
    }
}

fn conv_t_layer(c: &ConvTranspose2d, stride: usize, pad: usize) -> Layer {
    Layer::ConvTranspose {
        weight: tensor_of(c.weight.val()),
        bias: c.bias.as_ref().map(|b| tensor_of(b.val())),
        params: ConvParams { stride, pad },
    }
}

pub(crate) fn bn_layer(bn: &BatchNorm) -> Layer {
    Layer::BatchNorm(OnnxBatchNorm {
        gamma: tensor_of(bn.gamma.val()),
        beta: tensor_of(bn.beta.val()),
        mean: tensor_of(bn.running_mean.value_sync()),
        var: tensor_of(bn.running_var.value_sync()),
        eps: bn.epsilon as f32,
    })
}

impl Encoder {
    /// Output channels of the projection.
    pub fn forward_channels(&self) -> usize {
        self.c5.weight.val().dims()[0]
    }
}

/// Folds pending batch-norm statistics updates into the stored values. burn applies a
/// running-statistics update lazily, on the next one, so a checkpoint written without this
/// would miss the last step's update and a resumed run would drift from an uninterrupted one.
fn sync_bn(bn: &BatchNorm) {
    bn.running_mean.value_sync();
    bn.running_var.value_sync();
}

impl Encoder {
    /// See [`sync_bn`].
    pub fn sync_running_stats(&self) {
        for bn in [&self.bn2, &self.bn3, &self.bn4].into_iter().flatten() {
            sync_bn(bn);
        }
    }
}

impl Decoder {
    /// See [`sync_bn`].
    pub fn sync_running_stats(&self) {
        for bn in [&self.bn1, &self.bn2, &self.bn3, &self.bn4] {
            sync_bn(bn);
        }
    }
}
