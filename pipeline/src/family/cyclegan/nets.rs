//! CycleGAN's networks (Zhu et al. 2017), narrower than the paper's so that they train on a
//! CPU: a ResNet generator (7×7 reflect-padded convolution, two stride-2 downsamplings,
//! residual blocks, two upsamplings, 7×7 convolution, tanh) with instance norm, and a
//! 70×70-style PatchGAN discriminator (4×4 stride-2 convolutions, instance norm, leaky ReLU)
//! that scores overlapping patches.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{InstanceNorm, InstanceNormConfig, PaddingConfig2d};
use burn::tensor::activation::{leaky_relu, relu, tanh};
use burn::tensor::ops::PadMode;
use burn::tensor::{Device, Tensor};

use crate::family::layers::{conv_down, conv_up};

/// Sizes of the networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CycleSpec {
    /// Image channels.
    pub channels: usize,
    /// Channels of the generator's first convolution (doubled by each downsampling) and of the
    /// discriminator's first.
    pub width: usize,
    /// Residual blocks of the generator.
    pub blocks: usize,
}

fn conv(cin: usize, cout: usize, k: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [k, k]).with_padding(PaddingConfig2d::Valid).init(device)
}

fn down(cin: usize, cout: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([cin, cout], [4, 4])
        .with_stride([2, 2])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device)
}

fn up(cin: usize, cout: usize, device: &Device) -> ConvTranspose2d {
    ConvTranspose2dConfig::new([cin, cout], [4, 4]).with_stride([2, 2]).with_padding([1, 1]).init(device)
}

fn norm(c: usize, device: &Device) -> InstanceNorm {
    InstanceNormConfig::new(c).init(device)
}

/// Reflect padding of `p` pixels on each side (the paper's, against border artefacts).
fn reflect(x: Tensor<4>, p: usize) -> Tensor<4> {
    x.pad((p, p, p, p), PadMode::Reflect)
}

/// A residual block: two reflect-padded 3×3 convolutions with instance norm.
#[derive(Module, Debug)]
pub struct Residual {
    c1: Conv2d,
    n1: InstanceNorm,
    c2: Conv2d,
    n2: InstanceNorm,
}

impl Residual {
    fn new(c: usize, device: &Device) -> Self {
        Residual { c1: conv(c, c, 3, device), n1: norm(c, device), c2: conv(c, c, 3, device), n2: norm(c, device) }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = relu(self.n1.forward(self.c1.forward(reflect(x.clone(), 1))));
        let y = self.n2.forward(self.c2.forward(reflect(y, 1)));
        x + y
    }
}

/// The generator: images in [-1, 1] to images in [-1, 1] of the same size (a multiple of 4).
#[derive(Module, Debug)]
pub struct Generator {
    stem: Conv2d,
    n0: InstanceNorm,
    d1: Conv2d,
    n1: InstanceNorm,
    d2: Conv2d,
    n2: InstanceNorm,
    blocks: Vec<Residual>,
    u1: ConvTranspose2d,
    n3: InstanceNorm,
    u2: ConvTranspose2d,
    n4: InstanceNorm,
    head: Conv2d,
}

impl Generator {
    /// A new generator for `spec`.
    pub fn new(spec: &CycleSpec, device: &Device) -> Self {
        let w = spec.width;
        Generator {
            stem: conv(spec.channels, w, 7, device),
            n0: norm(w, device),
            d1: down(w, 2 * w, device),
            n1: norm(2 * w, device),
            d2: down(2 * w, 4 * w, device),
            n2: norm(4 * w, device),
            blocks: (0..spec.blocks).map(|_| Residual::new(4 * w, device)).collect(),
            u1: up(4 * w, 2 * w, device),
            n3: norm(2 * w, device),
            u2: up(2 * w, w, device),
            n4: norm(w, device),
            head: conv(w, spec.channels, 7, device),
        }
    }

    /// `[B, C, S, S]` in [-1, 1] to the translated images.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = relu(self.n0.forward(self.stem.forward(reflect(x, 3))));
        let x = relu(self.n1.forward(conv_down(&self.d1, x)));
        let mut x = relu(self.n2.forward(conv_down(&self.d2, x)));
        for b in &self.blocks {
            x = b.forward(x);
        }
        let x = relu(self.n3.forward(conv_up(&self.u1, x)));
        let x = relu(self.n4.forward(conv_up(&self.u2, x)));
        tanh(self.head.forward(reflect(x, 3)))
    }
}

/// The PatchGAN discriminator: a map of real/fake scores, one per overlapping patch.
#[derive(Module, Debug)]
pub struct Discriminator {
    c1: Conv2d,
    c2: Conv2d,
    n2: InstanceNorm,
    c3: Conv2d,
    n3: InstanceNorm,
    c4: Conv2d,
    n4: InstanceNorm,
    out: Conv2d,
}

impl Discriminator {
    /// A new discriminator for `spec`.
    pub fn new(spec: &CycleSpec, device: &Device) -> Self {
        let w = spec.width;
        let same4 = |cin: usize, cout: usize| {
            Conv2dConfig::new([cin, cout], [4, 4]).with_padding(PaddingConfig2d::Explicit(1, 1, 2, 2)).init(device)
        };
        Discriminator {
            c1: down(spec.channels, w, device),
            c2: down(w, 2 * w, device),
            n2: norm(2 * w, device),
            c3: down(2 * w, 4 * w, device),
            n3: norm(4 * w, device),
            c4: same4(4 * w, 8 * w),
            n4: norm(8 * w, device),
            out: same4(8 * w, 1),
        }
    }

    /// `[B, C, S, S]` to `[B, 1, S/8, S/8]` scores (1 = real).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        const SLOPE: f64 = 0.2;
        let x = leaky_relu(conv_down(&self.c1, x), SLOPE);
        let x = leaky_relu(self.n2.forward(conv_down(&self.c2, x)), SLOPE);
        let x = leaky_relu(self.n3.forward(conv_down(&self.c3, x)), SLOPE);
        let x = leaky_relu(self.n4.forward(self.c4.forward(x)), SLOPE);
        self.out.forward(x)
    }
}
