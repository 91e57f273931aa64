//! The model families, each in its own module, and what they share.
//!
//! - [`kind`]: the families on the command line; [`trained`]: a trained from-scratch model
//!   whatever its family, and a bundle's weights.
//! - [`autoencoder`] (DAE, VAE) and [`gan`] (GAN, WGAN-GP), trained from scratch from the
//!   shared [`blocks`] (on [`layers`], the strided convolutions as matrix products), with
//!   [`cond`], the class condition of a conditional model.
//! - [`features`]: the families that score in a pretrained backbone's feature space (PaDiM,
//!   PatchCore, feature autoencoder).
//! - [`cyclegan`]: realistic defects learnt from a few real ones.

pub mod autoencoder;
pub mod blocks;
pub mod cond;
pub mod cyclegan;
pub mod features;
pub mod gan;
pub mod kind;
pub mod layers;
pub mod trained;
