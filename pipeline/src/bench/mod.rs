//! Quality benchmarks that train, export and evaluate several models to compare them.
//!
//! - [`conditional`]: one conditional model against pooled and per-product models
//!   (`bench-conditional`).
//! - [`cyclegan`]: thresholds calibrated on CycleGAN defects against the alternatives
//!   (`bench-cyclegan`).

pub mod conditional;
pub mod cyclegan;
