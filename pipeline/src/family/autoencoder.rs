//! The autoencoder families (DAE, VAE) as a burn module, and their options.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};
use vigil_model::onnx::reference::ArchSpec;

use crate::family::blocks::{Decoder, Encoder};
use crate::family::cond::Cond;

/// An encoder–decoder pair (DAE, VAE). The VAE's encoder outputs `[mu, logvar]`.
#[derive(Module, Debug)]
pub struct Autoencoder {
    /// Image to latent.
    pub encoder: Encoder,
    /// Latent to image.
    pub decoder: Decoder,
}

impl Autoencoder {
    /// A new pair; `vae` doubles the encoder's output for `[mu, logvar]`.
    pub fn new(spec: &ArchSpec, vae: bool, device: &Device) -> Self {
        let out = if vae { 2 * spec.latent } else { spec.latent };
        Autoencoder { encoder: Encoder::new(spec, out, true, device), decoder: Decoder::new(spec, device) }
    }

    /// The deterministic reconstruction (the VAE decodes `mu`), of images of classes `cond`
    /// for a conditional model.
    pub fn reconstruct(&self, x: Tensor<4>, latent: usize, cond: Option<&Cond>) -> Tensor<4> {
        let z = self.encoder.forward(Cond::image(cond, x));
        let z = if z.dims()[1] == latent { z } else { z.narrow(1, 0, latent) };
        self.decoder.forward(Cond::latent(cond, z))
    }
}

/// The reconstruction term the autoencoders (DAE, VAE) are trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReconstructionLoss {
    /// Mean squared error.
    #[default]
    L2,
    /// Mean squared error plus `1 - SSIM` (the structural similarity over the same window
    /// as the `ssim` anomaly map), as DRAEM trains its reconstruction network: sharper
    /// reconstructions of edges and texture.
    SsimL2,
}

/// The autoencoders' own options (`train.toml` keys of the same names).
#[derive(Debug, Clone, PartialEq)]
pub struct AutoencoderConfig {
    /// Standard deviation of the noise with `corruption = "gaussian"`.
    pub noise_sigma: f32,
    /// VAE: weight of the KL term (per pixel); also the variational feature autoencoder's.
    pub kl_weight: f32,
    /// DAE and VAE: the reconstruction loss, `l2` or `ssim_l2`.
    pub loss: ReconstructionLoss,
}

impl Default for AutoencoderConfig {
    fn default() -> Self {
        AutoencoderConfig { noise_sigma: 0.1, kl_weight: 1.0, loss: ReconstructionLoss::L2 }
    }
}
