//! Judging a bundle on labelled images.
//!
//! - [`scores`]: a bundle's scores and evaluation on labelled images.
//! - [`metrics`]: AUROC, AUPRO and the counts at a threshold; [`calibrate`]: choosing the
//!   threshold.
//! - [`report`]: curves, histograms and heatmap overlays as PNG with a Markdown page.

pub mod calibrate;
pub mod metrics;
pub mod report;
pub mod scores;
