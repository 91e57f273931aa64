//! The feature autoencoder (`fae`): a small autoencoder of 1x1 convolutions trained with burn
//! on the backbone's frozen features (standardised per channel), which learns to reconstruct
//! normal features; a cell scores by its reconstruction error. Trained as a denoiser: its
//! input is the features of the image with synthetic defects pasted on (or the features plus
//! Gaussian noise), its target the clean features, so it does not learn to copy whatever it
//! is given.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use vigil_model::onnx::net::{Layer, Sequential};
use vigil_model::rng::{Rng, mix};

use super::extract::{Features, progress};
use crate::family::blocks::{bn_layer, conv_layer};

/// The autoencoder: `C → hidden → latent → hidden → C`, 1x1 convolutions, batch norm and ReLU
/// between them, a linear output. Variational when it has a `logvar` head: the bottleneck is
/// then the mean of a Gaussian (linear, no batch norm), sampled in training and decoded as it
/// is when scoring.
#[derive(Module, Debug)]
pub struct FeatureAe {
    e1: Conv2d,
    bn1: BatchNorm,
    e2: Conv2d,
    bn2: BatchNorm,
    logvar: Option<Conv2d>,
    d1: Conv2d,
    bn3: BatchNorm,
    d2: Conv2d,
}

impl FeatureAe {
    /// A new network for `channels` features with a `latent`-channel bottleneck.
    pub fn new(channels: usize, latent: usize, variational: bool, device: &Device) -> FeatureAe {
        let hidden = 2 * latent;
        let conv = |i: usize, o: usize| Conv2dConfig::new([i, o], [1, 1]).init(device);
        FeatureAe {
            e1: conv(channels, hidden),
            bn1: BatchNormConfig::new(hidden).init(device),
            e2: conv(hidden, latent),
            bn2: BatchNormConfig::new(latent).init(device),
            logvar: variational.then(|| conv(hidden, latent)),
            d1: conv(latent, hidden),
            bn3: BatchNormConfig::new(hidden).init(device),
            d2: conv(hidden, channels),
        }
    }

    /// `[B, C, gh, gw]` to its reconstruction, same shape (a VAE decodes the mean).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = self.hidden(x);
        let z = match self.logvar {
            Some(_) => self.e2.forward(h),
            None => relu(self.bn2.forward(self.e2.forward(h))),
        }; // [B, L, gh, gw]
        self.decode(z)
    }

    fn hidden(&self, x: Tensor<4>) -> Tensor<4> {
        relu(self.bn1.forward(self.e1.forward(x))) // [B, 2L, gh, gw]
    }

    /// The training pass: the reconstruction and, for a VAE, the KL divergence of the
    /// bottleneck from N(0, 1) per feature value (summed over the latent channels, averaged
    /// over cells, divided by the feature channels), decoding a sample; 0 for a plain one.
    fn forward_train(&self, x: Tensor<4>) -> (Tensor<4>, Option<Tensor<1>>) {
        let Some(logvar_head) = &self.logvar else {
            return (self.forward(x), None);
        };
        let channels = x.dims()[1];
        let h = self.hidden(x);
        let mu = self.e2.forward(h.clone());
        let logvar = logvar_head.forward(h).clamp(-10.0, 10.0);
        let eps = Tensor::<4>::random(mu.shape(), Distribution::Normal(0.0, 1.0), &mu.device());
        let z = mu.clone() + eps * (logvar.clone() * 0.5).exp();
        let [_, latent, _, _] = mu.dims();
        let kl = (logvar.clone() + 1.0 - mu.powf_scalar(2.0) - logvar.exp()).mean()
            * (-0.5 * latent as f64 / channels as f64);
        (self.decode(z), Some(kl))
    }

    fn decode(&self, z: Tensor<4>) -> Tensor<4> {
        let x = relu(self.bn3.forward(self.d1.forward(z))); // [B, 2L, gh, gw]
        self.d2.forward(x) // [B, C, gh, gw]
    }

    /// The network for the ONNX writer (batch norm still separate; the writer folds it).
    pub fn to_sequential(&self) -> Sequential {
        let bottleneck = match self.logvar {
            Some(_) => vec![conv_layer(&self.e2, 1, 0)],
            None => vec![conv_layer(&self.e2, 1, 0), bn_layer(&self.bn2), Layer::Relu],
        };
        let encoder = [conv_layer(&self.e1, 1, 0), bn_layer(&self.bn1), Layer::Relu];
        Sequential::new(
            [
                encoder.to_vec(),
                bottleneck,
                vec![conv_layer(&self.d1, 1, 0), bn_layer(&self.bn3), Layer::Relu, conv_layer(&self.d2, 1, 0)],
            ]
            .concat(),
        )
    }

    fn sync(&self) {
        for bn in [&self.bn1, &self.bn2, &self.bn3] {
            bn.running_mean.value_sync();
            bn.running_var.value_sync();
        }
    }
}

/// Per-channel mean and standard deviation of the features.
pub fn channel_stats(f: &Features) -> (Vec<f32>, Vec<f32>) {
    let (c, cells) = (f.shape.channels, f.shape.cells());
    let mut sum = vec![0f64; c];
    let mut sq = vec![0f64; c];
    for i in 0..f.len() {
        let img = f.image(i);
        for ch in 0..c {
            for v in &img[ch * cells..(ch + 1) * cells] {
                sum[ch] += *v as f64;
                sq[ch] += (*v as f64) * (*v as f64);
            }
        }
    }
    let n = (f.len() * cells).max(1) as f64;
    let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
    let std = sum.iter().zip(&sq).map(|(s, q)| ((q / n - (s / n).powi(2)).max(0.0).sqrt().max(1e-3)) as f32).collect();
    (mean, std)
}

/// Training settings of the feature autoencoder.
#[derive(Debug, Clone, Copy)]
pub struct FaeTraining {
    /// Bottleneck channels.
    pub latent: usize,
    /// Passes over the images.
    pub epochs: u32,
    /// Images per step.
    pub batch: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Standard deviation of the input noise, in standardised units.
    pub noise: f32,
    /// A variational autoencoder instead of a plain one.
    pub variational: bool,
    /// Weight of the VAE's KL term.
    pub kl_weight: f32,
    /// Seed.
    pub seed: u64,
}

/// Trains the autoencoder on standardised features, restoring `corrupted` (features of the
/// same images with synthetic defects, one block per image) when given, else the features
/// plus Gaussian noise of `t.noise`; `None` when stopped. Returns the network
/// in eval mode and the mean loss of each epoch.
pub fn train(
    f: &Features,
    corrupted: Option<&[f32]>,
    (mean, std): (&[f32], &[f32]),
    t: FaeTraining,
    device: &Device,
    stop: &AtomicBool,
    init: Option<FeatureAe>,
) -> anyhow::Result<Option<(FeatureAe, Vec<f64>)>> {
    let (c, [gh, gw]) = (f.shape.channels, f.shape.grid);
    let cells = gh * gw;
    device.seed(t.seed);
    let mut model = match init {
        // `fork`, not `to_device`: a moved parameter would be the output of a recorded
        // operation rather than a leaf, and the second step's backward pass would find its
        // graph consumed by the first (every retrain of an `fae` bundle panicked so).
        Some(m) => m.fork(device),
        None => FeatureAe::new(c, t.latent, t.variational, device),
    };
    let mut opt = AdamConfig::new().init();
    let n = f.len();
    let batch = t.batch.clamp(1, n.max(1));
    let steps = (n / batch).max(1);
    let mut history = vec![];
    for epoch in 0..t.epochs {
        let mut order: Vec<usize> = (0..n).collect();
        Rng::new(mix(t.seed ^ (epoch as u64 + 1))).shuffle(&mut order);
        let bar = progress(steps, &format!("fae epoch {}/{}", epoch + 1, t.epochs));
        let mut sum = 0f64;
        for step in 0..steps {
            if stop.load(Ordering::SeqCst) {
                bar.abandon();
                return Ok(None);
            }
            let chosen = &order[step * batch..((step + 1) * batch).min(n)];
            let clean = standardised(chosen, |i| f.image(i), mean, std, [c, gh, gw], device);
            let noisy = match corrupted {
                Some(pool) => {
                    standardised(chosen, |i| &pool[i * c * cells..(i + 1) * c * cells], mean, std, [c, gh, gw], device)
                }
                None => {
                    clean.clone()
                        + Tensor::<4>::random(
                            [chosen.len(), c, gh, gw],
                            Distribution::Normal(0.0, t.noise as f64),
                            device,
                        )
                }
            };
            let (recon, kl) = model.forward_train(noisy);
            let mut loss = (recon - clean).powf_scalar(2.0).mean();
            if let Some(kl) = kl {
                loss = loss + kl * t.kl_weight as f64;
            }
            sum += loss.clone().into_scalar::<f32>() as f64;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = opt.step(t.lr, model, grads);
            bar.inc(1);
        }
        bar.finish_and_clear();
        let mean_loss = sum / steps as f64;
        tracing::info!("fae epoch {}/{}: loss {mean_loss:.5}", epoch + 1, t.epochs);
        history.push(mean_loss);
    }
    model.sync();
    Ok(Some((model, history)))
}

/// The images `chosen` as one `[B, C, gh, gw]` tensor, standardised per channel.
fn standardised<'a>(
    chosen: &[usize],
    image: impl Fn(usize) -> &'a [f32],
    mean: &[f32],
    std: &[f32],
    [c, gh, gw]: [usize; 3],
    device: &Device,
) -> Tensor<4> {
    let cells = gh * gw;
    let mut data = Vec::with_capacity(chosen.len() * c * cells);
    for &i in chosen {
        let img = image(i);
        for ch in 0..c {
            data.extend(img[ch * cells..(ch + 1) * cells].iter().map(|v| (v - mean[ch]) / std[ch]));
        }
    }
    Tensor::<4>::from_data(TensorData::new(data, [chosen.len(), c, gh, gw]), device)
}

/// The feature autoencoder's own options (`train.toml`'s `fae_latent`, `fae_lr`, `fae_noise`,
/// `fae_variational`).
#[derive(Debug, Clone, PartialEq)]
pub struct FaeConfig {
    /// Bottleneck channels.
    pub latent: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// With `corruption = "gaussian"`: standard deviation of the noise on its input, in
    /// standardised units.
    pub noise: f32,
    /// A variational autoencoder (the bottleneck a Gaussian, its KL term weighted by
    /// `kl_weight`; scored by decoding the mean) instead of a plain one.
    pub variational: bool,
}

impl Default for FaeConfig {
    fn default() -> Self {
        FaeConfig { latent: 32, lr: 1e-3, noise: 0.5, variational: false }
    }
}
