//! The model families vigil-train trains, as burn modules, and what each exports.

pub mod blocks;

use std::path::Path;

use burn::module::Module;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};
use vigil_model::bundle::manifest::{Family, ScoreSource};
use vigil_model::onnx::head::ScoreNet;
use vigil_model::onnx::reference::ArchSpec;

pub use blocks::{Decoder, Encoder};

/// The families on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Denoising convolutional autoencoder.
    Dae,
    /// Variational autoencoder.
    Vae,
    /// DCGAN, minimax loss (non-saturating generator).
    Gan,
    /// Wasserstein GAN with gradient penalty.
    Wgan,
    /// PaDiM: per-position Gaussians of pretrained backbone features, Mahalanobis distance.
    Padim,
    /// PatchCore: a coreset memory bank of pretrained backbone features, nearest-neighbour
    /// distance.
    Patchcore,
    /// An autoencoder trained on pretrained backbone features, reconstruction error.
    Fae,
}

impl ModelKind {
    /// The manifest family.
    pub fn family(self) -> Family {
        match self {
            ModelKind::Dae => Family::Dae,
            ModelKind::Vae => Family::Vae,
            ModelKind::Gan => Family::Gan,
            ModelKind::Wgan => Family::Wgan,
            ModelKind::Padim => Family::Padim,
            ModelKind::Patchcore => Family::Patchcore,
            ModelKind::Fae => Family::Fae,
        }
    }

    /// Whether the family scores in a pretrained backbone's feature space.
    pub fn is_feature(self) -> bool {
        matches!(self, ModelKind::Padim | ModelKind::Patchcore | ModelKind::Fae)
    }

    /// Whether the family is a GAN (generator + discriminator).
    pub fn is_gan(self) -> bool {
        matches!(self, ModelKind::Gan | ModelKind::Wgan)
    }
}

/// How a GAN is scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "snake_case")]
pub enum GanScore {
    /// f-AnoGAN: an encoder into the frozen generator's latent space; reconstruction error
    /// plus discriminator-feature error. Gives an anomaly map; the default.
    #[default]
    Encoder,
    /// How fake the discriminator finds the image (−logit); no map.
    Discriminator,
}

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
    pub fn reconstruct(&self, x: Tensor<4>, latent: usize, cond: Option<&crate::train::Cond>) -> Tensor<4> {
        use crate::train::Cond;
        let z = self.encoder.forward(Cond::image(cond, x));
        let z = if z.dims()[1] == latent { z } else { z.narrow(1, 0, latent) };
        self.decoder.forward(Cond::latent(cond, z))
    }
}

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

/// The networks of a trained model, whatever the family (one value per export).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Trained {
    /// DAE or VAE.
    Autoencoder(Autoencoder),
    /// GAN or WGAN.
    Gan(GanModel),
}

impl Trained {
    /// The networks the score head reads, in the writer's form, and what the score measures.
    pub fn score_net(&self, spec: &ArchSpec, gan_score: GanScore) -> anyhow::Result<(ScoreNet, ScoreSource)> {
        Ok(match self {
            Trained::Autoencoder(ae) => {
                let mut encoder = ae.encoder.to_sequential();
                if ae.encoder.forward_channels() != spec.latent {
                    encoder = encoder.keep_last_conv_channels(0..spec.latent)?;
                }
                (ScoreNet::Reconstruction { encoder, decoder: ae.decoder.to_sequential() }, ScoreSource::Reconstruction)
            }
            Trained::Gan(g) => match gan_score {
                GanScore::Discriminator => {
                    (ScoreNet::Discriminator { critic: g.critic.to_sequential() }, ScoreSource::Discriminator)
                }
                GanScore::Encoder => (
                    ScoreNet::EncoderFeatures {
                        encoder: g.encoder.to_sequential(),
                        generator: g.generator.to_sequential(),
                        critic: g.critic.to_sequential(),
                        feature_layers: g.critic.feature_layers(),
                    },
                    ScoreSource::EncoderFeatures,
                ),
            },
        })
    }
}

/// File name of the weights inside a bundle.
pub const WEIGHTS_FILE: &str = "weights.safetensors";

/// The networks of any family as one module tree, as stored in a bundle's safetensors file
/// (keys such as `autoencoder.encoder.c1.weight`), so that a bundle can be fine-tuned.
#[derive(Module, Debug)]
pub struct BundleWeights {
    /// DAE or VAE networks.
    pub autoencoder: Option<Autoencoder>,
    /// GAN or WGAN networks.
    pub gan: Option<GanModel>,
}

impl From<Trained> for BundleWeights {
    fn from(t: Trained) -> Self {
        match t {
            Trained::Autoencoder(a) => BundleWeights { autoencoder: Some(a), gan: None },
            Trained::Gan(g) => BundleWeights { autoencoder: None, gan: Some(g) },
        }
    }
}

impl BundleWeights {
    /// Writes the safetensors file.
    pub fn save(self, path: &Path) -> anyhow::Result<()> {
        self.save_into(&mut SafetensorsStore::from_file(path).overwrite(true))
            .map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))
    }

    /// Loads the safetensors file into these networks (which fix the shapes).
    pub fn load(mut self, path: &Path) -> anyhow::Result<Self> {
        let r = self.load_from(&mut SafetensorsStore::from_file(path)).map_err(|e| {
            anyhow::anyhow!("{}: {e:?}; the bundle's weights do not fit its training config", path.display())
        })?;
        anyhow::ensure!(
            r.missing.is_empty() && r.errors.is_empty(),
            "{}: the weights do not fit the networks (missing {:?}, errors {:?})",
            path.display(),
            r.missing,
            r.errors
        );
        Ok(self)
    }
}
