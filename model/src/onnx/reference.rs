//! The reference encoder, decoder and discriminator shapes (`REFERENCE-ARCHITECTURES.md`),
//! as layer lists with seeded random weights, for benchmarks and writer tests.
//!
//! Training builds the same shapes in burn and exports its learned weights through
//! [`Sequential`]; these constructors give the untrained twins, so the writer, the engines
//! and the benchmarks can be exercised without a training run.

use super::graph::{ConvParams, Tensor};
use super::net::{BatchNorm, Layer, Sequential};

/// Sizes of the reference networks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchSpec {
    /// Image channels (1 gray, 3 RGB).
    pub channels: usize,
    /// Square input side; a power of two, at least 32.
    pub size: usize,
    /// Latent size.
    pub latent: usize,
    /// Channels of the first encoder convolution; the others double from it.
    pub width: usize,
    /// Classes of a conditional model (0: not conditional): the encoders and the critic
    /// read that many extra input planes, the decoder that many extra latent channels.
    pub classes: usize,
}

impl Default for ArchSpec {
    fn default() -> Self {
        ArchSpec { channels: 3, size: 128, latent: 128, width: 32, classes: 0 }
    }
}

impl ArchSpec {
    /// Checks that the sizes make the reference shapes work.
    pub fn validate(&self) -> Result<(), String> {
        if !matches!(self.channels, 1 | 3) {
            return Err(format!("channels is {}, expected 1 or 3", self.channels));
        }
        if self.size < 32 || !self.size.is_power_of_two() || self.size > 1024 {
            return Err(format!(
                "size is {}, expected a power of two from 32 to 1024 (the networks halve it four times)",
                self.size
            ));
        }
        if self.latent == 0 || self.width == 0 {
            return Err("latent and width must be positive".into());
        }
        Ok(())
    }

    /// Side of the last feature map before the projection (size / 16).
    pub fn bottom(&self) -> usize {
        self.size / 16
    }
}

/// The seeded generator weights are drawn from.
pub use crate::rng::Rng as WeightRng;

impl WeightRng {
    /// A tensor of uniform values in [lo, hi).
    pub fn tensor(&mut self, shape: Vec<usize>, lo: f32, hi: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor::new(shape, (0..n).map(|_| self.range(lo, hi)).collect())
    }
}

fn conv(rng: &mut WeightRng, cin: usize, cout: usize, k: usize, stride: usize, pad: usize) -> Layer {
    let bound = 1.0 / ((cin * k * k) as f32).sqrt();
    Layer::Conv {
        weight: rng.tensor(vec![cout, cin, k, k], -bound, bound),
        bias: Some(rng.tensor(vec![cout], -bound, bound)),
        params: ConvParams { stride, pad },
    }
}

fn conv_t(rng: &mut WeightRng, cin: usize, cout: usize, k: usize, stride: usize, pad: usize) -> Layer {
    // Fan-in of a transposed convolution output pixel is cin * (k / stride)².
    let fan_in = cin * (k / stride).max(1).pow(2);
    let bound = 1.0 / (fan_in as f32).sqrt();
    Layer::ConvTranspose {
        weight: rng.tensor(vec![cin, cout, k, k], -bound, bound),
        bias: Some(rng.tensor(vec![cout], -bound, bound)),
        params: ConvParams { stride, pad },
    }
}

fn batch_norm(rng: &mut WeightRng, c: usize) -> Layer {
    // Non-trivial statistics, so that folding is actually exercised.
    Layer::BatchNorm(BatchNorm {
        gamma: rng.tensor(vec![c], 0.5, 1.5),
        beta: rng.tensor(vec![c], -0.1, 0.1),
        mean: rng.tensor(vec![c], -0.1, 0.1),
        var: rng.tensor(vec![c], 0.5, 1.5),
        eps: 1e-5,
    })
}

/// Encoder `E(out)`: `C x S x S -> out x 1 x 1`; `bn` puts batch norm after convolutions 2–4.
pub fn encoder(spec: &ArchSpec, out: usize, bn: bool, rng: &mut WeightRng) -> Sequential {
    let w = spec.width;
    let mut layers = vec![conv(rng, spec.channels + spec.classes, w, 4, 2, 1), Layer::LeakyRelu(0.2)];
    for (cin, cout) in [(w, 2 * w), (2 * w, 4 * w), (4 * w, 8 * w)] {
        layers.push(conv(rng, cin, cout, 4, 2, 1));
        if bn {
            layers.push(batch_norm(rng, cout));
        }
        layers.push(Layer::LeakyRelu(0.2));
    }
    layers.push(conv(rng, 8 * w, out, spec.bottom(), 1, 0));
    Sequential::new(layers)
}

/// Decoder / generator `G`: `latent x 1 x 1 -> C x S x S`, sigmoid output.
pub fn decoder(spec: &ArchSpec, rng: &mut WeightRng) -> Sequential {
    let w = spec.width;
    let mut layers =
        vec![conv_t(rng, spec.latent + spec.classes, 8 * w, spec.bottom(), 1, 0), batch_norm(rng, 8 * w), Layer::Relu];
    for (cin, cout) in [(8 * w, 4 * w), (4 * w, 2 * w), (2 * w, w)] {
        layers.push(conv_t(rng, cin, cout, 4, 2, 1));
        layers.push(batch_norm(rng, cout));
        layers.push(Layer::Relu);
    }
    layers.push(conv_t(rng, w, spec.channels, 4, 2, 1));
    layers.push(Layer::Sigmoid);
    Sequential::new(layers)
}

/// How many leading layers of a reference discriminator give the features f-AnoGAN compares
/// (everything before the final projection: `8w x S/16 x S/16`).
pub fn discriminator_feature_layers(d: &Sequential) -> usize {
    d.layers.len() - 1
}

/// The scoring networks of a family with random weights: what an untrained export of
/// `vigil-train` would contain. `encoder_features` picks the f-AnoGAN score for GANs.
pub fn scoring_net(
    family: crate::bundle::manifest::Family,
    spec: &ArchSpec,
    encoder_features: bool,
    seed: u64,
) -> Result<super::head::ScoreNet, String> {
    use super::head::ScoreNet;
    use crate::bundle::manifest::Family;
    spec.validate()?;
    let mut rng = WeightRng::new(seed);
    Ok(match family {
        Family::Dae => ScoreNet::Reconstruction {
            encoder: encoder(spec, spec.latent, true, &mut rng),
            decoder: decoder(spec, &mut rng),
        },
        Family::Vae => ScoreNet::Reconstruction {
            encoder: encoder(spec, 2 * spec.latent, true, &mut rng)
                .keep_last_conv_channels(0..spec.latent)
                .map_err(|e| e.to_string())?,
            decoder: decoder(spec, &mut rng),
        },
        Family::Gan | Family::Wgan => {
            let critic = encoder(spec, 1, family == Family::Gan, &mut rng);
            if encoder_features {
                let feature_layers = discriminator_feature_layers(&critic);
                ScoreNet::EncoderFeatures {
                    encoder: encoder(spec, spec.latent, true, &mut rng),
                    generator: decoder(spec, &mut rng),
                    critic,
                    feature_layers,
                }
            } else {
                ScoreNet::Discriminator { critic }
            }
        }
        Family::Padim | Family::Patchcore | Family::Fae | Family::Fdisc | Family::Student => {
            return Err(format!("{} needs a pretrained backbone; it has no reference architecture", family.as_str()));
        }
        Family::External => return Err("external models are not built by vigil".into()),
    })
}
