//! The networks of a trained from-scratch model, whatever its family: what the export reads
//! and what a bundle's weights file holds.

use std::path::Path;

use burn::module::Module;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use vigil_model::bundle::manifest::ScoreSource;
use vigil_model::onnx::head::ScoreNet;
use vigil_model::onnx::reference::ArchSpec;

use crate::family::autoencoder::Autoencoder;
use crate::family::gan::GanModel;
use crate::family::kind::GanScore;

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
