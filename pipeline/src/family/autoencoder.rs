//! The autoencoder families (DAE, VAE) as a burn module.

use burn::module::Module;
use burn::tensor::{Device, Tensor};
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
