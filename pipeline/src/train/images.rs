//! Training images: the input spec a config trains on, the level range for normalisation,
//! and the samples (in memory within the cache budget, else read per batch).

use std::path::PathBuf;

use vigil_model::bundle::manifest::{ColorMode, InputSpec};
use vigil_model::preprocess::Preprocessor;

use crate::config::TrainConfig;
use crate::data::sets::{Skipped, load_image};

/// The input spec of the models a config trains.
pub fn input_spec(cfg: &TrainConfig, channels: usize) -> InputSpec {
    let color = if channels == 1 { ColorMode::Gray } else { ColorMode::Rgb };
    let unit = InputSpec { tiling: cfg.tiling.clone(), ..InputSpec::unit_range("image", color, cfg.size, cfg.size) };
    match (&cfg.pixel_range, cfg.normalize) {
        (Some(range), true) if range.len() == channels => InputSpec {
            mean: range.iter().map(|r| r[0]).collect(),
            std: range.iter().map(|r| r[1] - r[0]).collect(),
            ..unit
        },
        _ => unit,
    }
}

/// Images sampled to measure the level range.
const RANGE_SAMPLE: usize = 256;

/// Per channel, the level range of the training images for `normalize`: the 0.1 % and
/// 99.9 % quantiles of up to [`RANGE_SAMPLE`] images' pixels, widened by a tenth of their
/// span on each side (a normal pixel outside the range would be one the sigmoid output cannot
/// reconstruct, a false hot spot), rounded out to whole levels and kept within [0, 1].
pub fn measure_pixel_range(cfg: &TrainConfig, channels: usize, paths: &[PathBuf]) -> Vec<[f32; 2]> {
    let unit = TrainConfig { normalize: false, ..cfg.clone() };
    let pre = Preprocessor::new(&input_spec(&unit, channels));
    let mut hist = vec![[0u64; 256]; channels];
    let step = paths.len().div_ceil(RANGE_SAMPLE).max(1);
    for path in paths.iter().step_by(step) {
        for tensor in crate::data::sets::load_image(&pre, path).unwrap_or_default() {
            let plane = tensor.len() / channels;
            for (c, h) in hist.iter_mut().enumerate() {
                for v in &tensor[c * plane..(c + 1) * plane] {
                    h[(v * 255.0).round().clamp(0.0, 255.0) as usize] += 1;
                }
            }
        }
    }
    hist.iter()
        .map(|h| {
            let total: u64 = h.iter().sum();
            if total == 0 {
                return [0.0, 1.0];
            }
            let quantile = |q: f64| {
                let target = (q * total as f64).ceil().max(1.0) as u64;
                let mut seen = 0;
                h.iter()
                    .position(|n| {
                        seen += n;
                        seen >= target
                    })
                    .unwrap_or(255) as f32
            };
            let (q_lo, q_hi) = (quantile(0.001), quantile(0.999));
            let margin = (0.1 * (q_hi - q_lo)).max(1.0);
            let min_span = (crate::config::MIN_SPAN * 255.0).ceil();
            let lo = (q_lo - margin).floor().clamp(0.0, 255.0 - min_span);
            let hi = (q_hi + margin).ceil().clamp(lo + min_span, 255.0);
            [lo / 255.0, hi / 255.0]
        })
        .collect()
}

/// Training samples (images, or their tiles for a tiled model), in memory when they fit the
/// budget, else read per batch, with each sample's class for a conditional model.
pub(super) struct Images {
    samples: Samples,
    /// The class index of each sample (empty: one product).
    labels: Vec<usize>,
}

enum Samples {
    Cached {
        per: usize,
        data: Vec<f32>,
    },
    /// Each sample is a file and the index of its tile.
    Streamed {
        pre: Box<Preprocessor>,
        samples: Vec<(PathBuf, usize)>,
    },
}

impl Images {
    /// Loads `paths`; `classes` holds each path's class index (empty: one product).
    pub(super) fn load(
        pre: &Preprocessor,
        paths: &[PathBuf],
        classes: &[usize],
        skipped: &mut Vec<Skipped>,
        cache_mib: usize,
    ) -> Images {
        let mut labels = vec![];
        let samples = Self::load_samples(pre, paths, classes, &mut labels, skipped, cache_mib);
        Images { samples, labels }
    }

    fn load_samples(
        pre: &Preprocessor,
        paths: &[PathBuf],
        classes: &[usize],
        labels: &mut Vec<usize>,
        skipped: &mut Vec<Skipped>,
        cache_mib: usize,
    ) -> Samples {
        let mut label = |i: usize, n: usize| {
            if let Some(&k) = classes.get(i) {
                labels.extend(std::iter::repeat_n(k, n));
            }
        };
        let [c, h, w] = pre.chw();
        let per = c * h * w;
        // Tiles per image, from the first readable one (a guide for the budget only).
        let tiles = paths.iter().take(4).find_map(|p| load_image(pre, p).ok()).map_or(1, |t| t.len());
        if paths.len() * tiles * per * 4 > cache_mib << 20 {
            tracing::info!(
                "{} training images exceed the {cache_mib} MiB cache (cache_mib): reading them per batch",
                paths.len()
            );
            let mut samples = vec![];
            for (i, p) in paths.iter().enumerate() {
                // Check each once, so that a corrupt file is named and counted up front.
                match load_image(pre, p) {
                    Ok(t) => {
                        label(i, t.len());
                        samples.extend((0..t.len()).map(|i| (p.clone(), i)))
                    }
                    Err(reason) => {
                        tracing::warn!("skipping {}: {reason}", p.display());
                        skipped.push(Skipped { path: p.clone(), reason });
                    }
                }
            }
            return Samples::Streamed { pre: Box::new(pre.clone()), samples };
        }
        let mut data = Vec::with_capacity(paths.len() * tiles * per);
        for (i, p) in paths.iter().enumerate() {
            match load_image(pre, p) {
                Ok(tensors) => {
                    label(i, tensors.len());
                    data.extend(tensors.into_iter().flatten())
                }
                Err(reason) => {
                    tracing::warn!("skipping {}: {reason}", p.display());
                    skipped.push(Skipped { path: p.clone(), reason });
                }
            }
        }
        Samples::Cached { per, data }
    }

    pub(super) fn len(&self) -> usize {
        match &self.samples {
            Samples::Cached { per, data } => data.len() / per,
            Samples::Streamed { samples, .. } => samples.len(),
        }
    }

    /// The class indices of samples `idx` (empty for one product).
    pub(super) fn labels(&self, idx: &[usize]) -> Vec<usize> {
        if self.labels.is_empty() { vec![] } else { idx.iter().map(|&i| self.labels[i]).collect() }
    }

    pub(super) fn batch(&self, idx: &[usize]) -> Vec<f32> {
        match &self.samples {
            Samples::Cached { per, data } => {
                idx.iter().flat_map(|&i| data[i * per..(i + 1) * per].iter().copied()).collect()
            }
            Samples::Streamed { pre, samples } => idx
                .iter()
                .flat_map(|&i| {
                    let (path, tile) = &samples[i];
                    load_image(pre, path)
                        .ok()
                        .and_then(|mut t| (*tile < t.len()).then(|| t.swap_remove(*tile)))
                        .unwrap_or_else(|| {
                            tracing::warn!("{} became unreadable during training; using a blank image", path.display());
                            vec![0.0; pre.chw().iter().product()]
                        })
                })
                .collect(),
        }
    }
}
