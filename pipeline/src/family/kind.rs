//! The families on the command line, and how a GAN is scored.

use serde::{Deserialize, Serialize};
use vigil_model::bundle::manifest::Family;

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
    /// A discriminator trained on pretrained backbone features against synthetic anomalies
    /// (and confirmed defects), its logit.
    Fdisc,
    /// A student network trained to predict pretrained backbone features from the image
    /// (student–teacher), their difference.
    Student,
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
            ModelKind::Fdisc => Family::Fdisc,
            ModelKind::Student => Family::Student,
        }
    }

    /// Whether the family scores in a pretrained backbone's feature space.
    pub fn is_feature(self) -> bool {
        matches!(self, ModelKind::Padim | ModelKind::Patchcore | ModelKind::Fae | ModelKind::Fdisc | ModelKind::Student)
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
