//! The GAN families (GAN, WGAN-GP, with the f-AnoGAN encoder) as a burn module.

use burn::module::Module;
use burn::tensor::Device;
use vigil_model::onnx::reference::ArchSpec;

use crate::family::blocks::{Decoder, Encoder};
use crate::family::kind::ModelKind;

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
