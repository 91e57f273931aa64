//! The GAN families (GAN, WGAN-GP, with the f-AnoGAN encoder) as a burn module, and their
//! options.

use burn::module::Module;
use burn::tensor::Device;
use vigil_model::onnx::reference::ArchSpec;

use crate::family::blocks::{Decoder, Encoder};
use crate::family::kind::{GanScore, ModelKind};

/// A GAN: generator, discriminator (critic), and the f-AnoGAN encoder trained afterwards.
#[derive(Module, Debug)]
pub struct GanModel {
    /// Latent to image.
    pub generator: Decoder,
    /// Image to logit; batch norm for `gan`, none for `wgan` (the gradient penalty is per sample).
    pub critic: Encoder,
    /// Image to latent, trained with the generator and critic frozen.
    pub encoder: Encoder,
}

impl GanModel {
    /// New networks for `kind`.
    pub fn new(spec: &ArchSpec, kind: ModelKind, device: &Device) -> Self {
        GanModel {
            generator: Decoder::new(spec, device),
            critic: Encoder::new(spec, 1, kind == ModelKind::Gan, device),
            encoder: Encoder::new(spec, spec.latent, true, device),
        }
    }
}

/// The GANs' own options (`train.toml` keys of the same names; `score` is `gan_score`).
#[derive(Debug, Clone, PartialEq)]
pub struct GanConfig {
    /// WGAN: critic steps per generator step.
    pub n_critic: usize,
    /// WGAN: gradient penalty weight.
    pub gp_weight: f32,
    /// f-AnoGAN: weight of the discriminator-feature error, in training and in the score.
    pub feature_weight: f32,
    /// f-AnoGAN: encoder epochs after the GAN (default: the GAN's epochs).
    pub encoder_epochs: Option<u32>,
    /// How GANs are scored.
    pub score: GanScore,
}

impl Default for GanConfig {
    fn default() -> Self {
        GanConfig { n_critic: 5, gp_weight: 10.0, feature_weight: 1.0, encoder_epochs: None, score: GanScore::Encoder }
    }
}
