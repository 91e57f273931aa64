//! The images a run learns from and is judged on.
//!
//! - [`sets`]: finding images, the train/validation split, loading through vigil's
//!   preprocessing.
//! - [`elpv`], [`kolektor`]: public data sets converted into MVTec layout.
//! - [`corrupt`]: synthetic defects, the denoising autoencoder's corruption.
//! - [`split`]: confirmed defects taken out of a test set, for training with labelled defects.

pub mod corrupt;
pub mod elpv;
pub mod kolektor;
pub mod sets;
pub mod split;
