//! CycleGAN (Zhu et al. 2017): unpaired translation between normal images and the few real
//! defective ones, so that any normal image can be turned into a realistic defective one.
//!
//! - [`nets`]: the ResNet generators and PatchGAN discriminators.
//! - [`pool`]: the buffer of past fakes the discriminators see.
//! - [`augment`]: defective images (and, where the change is local, masks) from a trained
//!   generator; the generator as the DAE's corruption.
//! - [`config`]: a run's settings and progress files; [`fit`]: the training loop.
//!
//! Training follows the paper: least-squares adversarial losses, cycle consistency (λ = 10)
//! and identity (0.5 λ) losses, Adam (2e-4, β₁ 0.5), the learning rate constant for the first
//! half of the epochs and falling linearly to zero over the second, an image buffer of 50.
//! A run folder holds `cyclegan.toml` (the settings), `cyclegan.json` (progress), checkpoints
//! every epoch, `losses.csv`/`losses.png` and a sample grid per epoch in `samples/`.

pub mod augment;
pub mod config;
pub mod fit;
pub mod nets;
pub mod pool;
