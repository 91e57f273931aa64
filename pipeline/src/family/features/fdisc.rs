//! The feature discriminator (`fdisc`): a feature adaptor and a small discriminator trained
//! with burn on the backbone's frozen features (standardised per channel), in the manner of
//! SimpleNet. Anomalies are made where the network can see them, in the adapted feature
//! space: Gaussian noise on normal cells; and, with `corruption = "synthetic"`, the cells of
//! the training images with synthetic defects pasted on (as `fae` learns from) that the
//! defect moved at least as far as the noise does. The discriminator learns to tell those
//! from the normal cells; a cell scores by its logit. Confirmed defects, when there are some, add real
//! anomalous cells: where a mask came with the image, the cells it covers (and the rest of
//! that image as normal cells); else the cells the network already finds most anomalous (the
//! image is labelled, its cells are not), so that it learns what the line's defects look like
//! without being told that the rest of the part is defective.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::{leaky_relu, relu};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use vigil_model::onnx::graph::{ConvParams, Tensor as OnnxTensor};
use vigil_model::onnx::net::{Layer, Sequential};
use vigil_model::rng::{Rng, mix};

use super::extract::{Features, progress};
use crate::family::blocks::tensor_of;

/// The negative slope of the discriminator's leaky ReLU.
const SLOPE: f64 = 0.2;
/// The margin of the truncated L1 loss: a normal cell is learnt once its logit is below
/// `-MARGIN`, an anomalous one once it is above `MARGIN`.
const MARGIN: f64 = 0.5;
/// Of each confirmed defect image, the share of its cells taken as anomalous (the most
/// anomalous ones by the network's current logits), at least one.
pub const DEFECT_CELL_SHARE: f64 = 0.02;

/// Of a mask's cells, the share of a cell's pixels the defect must cover for the cell to be
/// taken as anomalous.
pub const MASK_CELL_COVER: f32 = 0.1;

/// Confirmed defects to learn from: their features and, for each image that came with a mask,
/// which of its grid cells the defect covers.
pub struct Confirmed {
    /// Features of the defect images.
    pub features: Features,
    /// Per image (in `features`' order): the cells its mask covers, or `None` without a mask.
    pub cells: Vec<Option<Vec<bool>>>,
}

impl Confirmed {
    /// The images' masks, looked for as `<stem>_mask.png` (or `<stem>.png`) in `masks`,
    /// brought to the feature grid: a cell is covered when [`MASK_CELL_COVER`] of its pixels
    /// are (at least the most covered cell of a mask that covers anything). An unreadable mask
    /// is an error that names it; an empty one labels nothing.
    pub fn with_masks(features: Features, masks: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let [gh, gw] = features.shape.grid;
        let mut cells = Vec::with_capacity(features.len());
        for path in &features.paths {
            let Some(mask) = masks.and_then(|dir| crate::data::sets::find_mask(dir, path)) else {
                cells.push(None);
                continue;
            };
            let gray = image::open(&mask)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "mask {}: {e}; give a PNG the size of its image, white where the defect is",
                        mask.display()
                    )
                })?
                .into_luma8();
            // The image is stretched onto the grid; each cell's share of defect pixels.
            let (w, h) = (gray.width() as usize, gray.height() as usize);
            let mut cover = vec![0f32; gh * gw];
            for (k, share) in cover.iter_mut().enumerate() {
                let (r, col) = (k / gw, k % gw);
                let (y0, y1) = (r * h / gh, ((r + 1) * h / gh).max(r * h / gh + 1).min(h));
                let (x0, x1) = (col * w / gw, ((col + 1) * w / gw).max(col * w / gw + 1).min(w));
                let on = (y0..y1)
                    .flat_map(|y| (x0..x1).map(move |x| (x, y)))
                    .filter(|&(x, y)| gray.get_pixel(x as u32, y as u32).0[0] > 127)
                    .count();
                *share = on as f32 / ((y1 - y0) * (x1 - x0)).max(1) as f32;
            }
            let mut covered: Vec<bool> = cover.iter().map(|&v| v >= MASK_CELL_COVER).collect();
            let (best, top) = cover.iter().enumerate().fold((0, 0f32), |a, (i, &v)| if v > a.1 { (i, v) } else { a });
            if top > 0.0 && !covered.iter().any(|&c| c) {
                covered[best] = true;
            }
            cells.push(covered.iter().any(|&c| c).then_some(covered));
        }
        Ok(Confirmed { features, cells })
    }

    /// Images that came with a mask that covers something.
    pub fn masked(&self) -> usize {
        self.cells.iter().filter(|c| c.is_some()).count()
    }
}

/// Adaptor (`C → C`, linear, starting as the identity) and discriminator (`C → hidden`, leaky
/// ReLU, `→ 1`), applied to every grid cell alone.
#[derive(Module, Debug)]
pub struct FeatureDisc {
    adaptor: Linear,
    d1: Linear,
    d2: Linear,
}

impl FeatureDisc {
    /// A new network for `channels` features and `hidden` discriminator units.
    pub fn new(channels: usize, hidden: usize, device: &Device) -> FeatureDisc {
        let mut adaptor = LinearConfig::new(channels, channels).init(device);
        let mut eye = vec![0f32; channels * channels];
        (0..channels).for_each(|i| eye[i * channels + i] = 1.0);
        adaptor.weight = Param::from_tensor(Tensor::<2>::from_data(TensorData::new(eye, [channels, channels]), device));
        adaptor.bias = Some(Param::from_tensor(Tensor::<1>::zeros([channels], device)));
        FeatureDisc {
            adaptor,
            d1: LinearConfig::new(channels, hidden).init(device),
            d2: LinearConfig::new(hidden, 1).init(device),
        }
    }

    fn adapt(&self, x: Tensor<2>) -> Tensor<2> {
        self.adaptor.forward(x)
    }

    fn discriminate(&self, a: Tensor<2>) -> Tensor<2> {
        self.d2.forward(leaky_relu(self.d1.forward(a), SLOPE))
    }

    /// `[M, C]` standardised cells to their logits `[M, 1]` (higher: more anomalous).
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.discriminate(self.adapt(x))
    }

    /// The network for the ONNX writer: each layer as a 1x1 convolution over the grid.
    pub fn to_sequential(&self) -> Sequential {
        Sequential::new(vec![
            conv1x1(&self.adaptor),
            conv1x1(&self.d1),
            Layer::LeakyRelu(SLOPE as f32),
            conv1x1(&self.d2),
        ])
    }
}

/// A linear layer (`[in, out]` weight) as the 1x1 convolution (`[out, in, 1, 1]`) that applies
/// it to every cell.
fn conv1x1(l: &Linear) -> Layer {
    let w = tensor_of(l.weight.val().transpose());
    let [out, inp] = [w.shape[0], w.shape[1]];
    let weight = OnnxTensor::new(vec![out, inp, 1, 1], w.data);
    let bias = l.bias.as_ref().map(|b| tensor_of(b.val()));
    Layer::Conv { weight, bias, params: ConvParams { stride: 1, pad: 0 } }
}

/// Training settings of the feature discriminator.
#[derive(Debug, Clone, Copy)]
pub struct FdiscTraining {
    /// Discriminator units.
    pub hidden: usize,
    /// Optimisation steps.
    pub steps: usize,
    /// Normal cells per step (as many noisy ones are made from them).
    pub cells: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Standard deviation of the noise that makes anomalous cells, in standardised units.
    pub noise: f32,
    /// Seed.
    pub seed: u64,
}

/// How the features are standardised before the adaptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Standardise {
    /// Per channel, over every cell of every training image.
    Channel,
    /// Per channel and grid cell, over the training images: the discriminator then sees how
    /// far each cell is from what that place of the part usually looks like, as PaDiM does
    /// with its per-cell Gaussians.
    Cell,
}

/// Means and standard deviations as [`Standardise`] says: `[C]` per channel, `[C, cells]`
/// (flat) per cell, where a cell's deviation is at least a tenth of its channel's, so that a
/// place that barely varies in training does not turn noise into anomalies.
pub fn stats(f: &Features, how: Standardise) -> (Vec<f32>, Vec<f32>) {
    let (c, cells) = (f.shape.channels, f.shape.cells());
    let (cm, cs) = super::fae::channel_stats(f);
    match how {
        Standardise::Channel => (cm, cs),
        Standardise::Cell => {
            let n = f.len().max(1) as f64;
            let mut mean = vec![0f64; c * cells];
            let mut sq = vec![0f64; c * cells];
            for i in 0..f.len() {
                for (k, v) in f.image(i).iter().enumerate() {
                    mean[k] += *v as f64;
                    sq[k] += (*v as f64).powi(2);
                }
            }
            let m: Vec<f32> = mean.iter().map(|s| (s / n) as f32).collect();
            let sd = (0..c * cells)
                .map(|k| ((sq[k] / n - (mean[k] / n).powi(2)).max(0.0).sqrt() as f32).max(0.1 * cs[k / cells]))
                .collect();
            (m, sd)
        }
    }
}

/// Standardisation values per channel and cell (`[C, cells]`, flat): per-channel ones
/// (`[C]`) repeated for every cell, per-cell ones as they are.
pub fn per_cell(v: &[f32], channels: usize, cells: usize) -> Vec<f32> {
    if v.len() == channels {
        return v.iter().flat_map(|x| std::iter::repeat_n(*x, cells)).collect();
    }
    v.to_vec()
}

/// The cells of the corrupted pool (one block per image of `f`, same layout) that the pasted
/// defect moved at least `noise`·√C in standardised units: as far as a noisy copy lies from
/// its cell. `(image, cell)` pairs.
pub fn moved_cells(f: &Features, corrupted: &[f32], std: &[f32], noise: f32) -> Vec<(usize, usize)> {
    let (c, cells) = (f.shape.channels, f.shape.cells());
    let limit = (noise as f64).powi(2) * c as f64;
    let mut out = vec![];
    for i in 0..f.len() {
        let (clean, bad) = (f.image(i), &corrupted[i * c * cells..(i + 1) * c * cells]);
        for cell in 0..cells {
            let d2: f64 = (0..c)
                .map(|ch| {
                    (((bad[ch * cells + cell] - clean[ch * cells + cell]) / std[ch * cells + cell]) as f64).powi(2)
                })
                .sum();
            if d2 >= limit {
                out.push((i, cell));
            }
        }
    }
    out
}

/// The synthetic anomalies: the corrupted pool (one block per training image) and the cells
/// of it that count as anomalous ([`moved_cells`]).
#[derive(Debug, Clone, Copy)]
pub struct Synthetic<'a> {
    /// Features of the training images with synthetic defects pasted on.
    pub pool: &'a [f32],
    /// `(image, cell)` pairs of the pool taken as anomalous.
    pub moved: &'a [(usize, usize)],
}

/// Trains the adaptor and discriminator on the standardised cells of `f` against noisy copies,
/// the `moved` cells of the `corrupted` pool (see [`moved_cells`]) and, when given, the cells
/// of the confirmed `defects` (see [`defect_loss`]); `None` when stopped. Returns the network and
/// the mean loss of each tenth of the steps.
#[allow(clippy::too_many_arguments)]
pub fn train(
    f: &Features,
    synthetic: Option<Synthetic>,
    defects: Option<&Confirmed>,
    (mean, std): (&[f32], &[f32]),
    t: FdiscTraining,
    device: &Device,
    stop: &AtomicBool,
    init: Option<FeatureDisc>,
) -> anyhow::Result<Option<(FeatureDisc, Vec<f64>)>> {
    let (c, cells) = (f.shape.channels, f.shape.cells());
    anyhow::ensure!(!f.is_empty() && cells > 0, "no training features");
    device.seed(t.seed);
    let mut model = match init {
        // `fork`, not `to_device`: see the feature autoencoder's retrain.
        Some(m) => m.fork(device),
        None => FeatureDisc::new(c, t.hidden, device),
    };
    let mut opt = AdamConfig::new().init();
    let mut rng = Rng::new(mix(t.seed ^ 0xd15c));
    let m = t.cells.max(1);
    let chunk = t.steps.div_ceil(10).max(1);
    let mut history = vec![];
    let bar = progress(t.steps, "fdisc");
    let (mut sum, mut count) = (0f64, 0usize);
    // Defect images per step, so that each is seen about as often as a normal one.
    let defect_images = defects.map(|d| d.features.len().min((m / cells).max(1)));
    for step in 0..t.steps {
        if stop.load(Ordering::SeqCst) {
            bar.abandon();
            return Ok(None);
        }
        let mut data = Vec::with_capacity(m * c);
        for _ in 0..m {
            let img = f.image(rng.below(f.len()));
            let cell = rng.below(cells);
            data.extend((0..c).map(|ch| (img[ch * cells + cell] - mean[ch * cells + cell]) / std[ch * cells + cell]));
        }
        let x = Tensor::<2>::from_data(TensorData::new(data, [m, c]), device);
        let a = model.adapt(x);
        let noisy = a.clone() + Tensor::<2>::random([m, c], Distribution::Normal(0.0, t.noise as f64), device);
        let normal = model.discriminate(a);
        let anomalous = model.discriminate(noisy);
        let mut loss = relu(normal + MARGIN).mean() + relu(anomalous.neg() + MARGIN).mean();
        if let Some(Synthetic { pool, moved }) = synthetic.filter(|s| !s.moved.is_empty()) {
            let mut data = Vec::with_capacity(m * c);
            for _ in 0..m {
                let (i, cell) = moved[rng.below(moved.len())];
                let img = &pool[i * c * cells..(i + 1) * c * cells];
                data.extend(
                    (0..c).map(|ch| (img[ch * cells + cell] - mean[ch * cells + cell]) / std[ch * cells + cell]),
                );
            }
            let x = Tensor::<2>::from_data(TensorData::new(data, [m, c]), device);
            loss = loss + relu(model.forward(x).neg() + MARGIN).mean();
        }
        if let (Some(d), Some(k)) = (defects, defect_images) {
            loss = loss + defect_loss(&model, d, k, (mean, std), &mut rng, device);
        }
        sum += loss.clone().into_scalar::<f32>() as f64;
        count += 1;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = opt.step(t.lr, model, grads);
        bar.inc(1);
        if (step + 1) % chunk == 0 || step + 1 == t.steps {
            let mean_loss = sum / count as f64;
            tracing::info!("fdisc step {}/{}: loss {mean_loss:.4}", step + 1, t.steps);
            history.push(mean_loss);
            (sum, count) = (0.0, 0);
        }
    }
    bar.finish_and_clear();
    Ok(Some((model, history)))
}

/// The loss on `k` random confirmed defect images. An image with a mask: the cells it covers
/// should score above the margin and the others, normal parts of a defective image, below
/// it. An image without: its most anomalous cells (by the current logits,
/// [`DEFECT_CELL_SHARE`] of them) above the margin, nothing said of the rest.
fn defect_loss(
    model: &FeatureDisc,
    d: &Confirmed,
    k: usize,
    (mean, std): (&[f32], &[f32]),
    rng: &mut Rng,
    device: &Device,
) -> Tensor<1> {
    let f = &d.features;
    let (c, cells) = (f.shape.channels, f.shape.cells());
    let mut data = Vec::with_capacity(k * cells * c);
    let mut picked = Vec::with_capacity(k);
    for _ in 0..k {
        let i = rng.below(f.len());
        picked.push(i);
        let img = f.image(i);
        for cell in 0..cells {
            data.extend((0..c).map(|ch| (img[ch * cells + cell] - mean[ch * cells + cell]) / std[ch * cells + cell]));
        }
    }
    let x = Tensor::<2>::from_data(TensorData::new(data, [k * cells, c]), device);
    let logits = model.forward(x); // [k * cells, 1]
    let values = logits.clone().detach().try_into_vec_as::<f32>().expect("float logits");
    let top = ((cells as f64 * DEFECT_CELL_SHARE).round() as usize).max(1);
    let (mut positive, mut negative) = (vec![0f32; k * cells], vec![0f32; k * cells]);
    for (slot, (&i, image)) in picked.iter().zip(values.chunks(cells)).enumerate() {
        let row = slot * cells;
        match &d.cells[i] {
            Some(covered) => {
                for (j, &on) in covered.iter().enumerate() {
                    if on { positive[row + j] = 1.0 } else { negative[row + j] = 1.0 }
                }
            }
            None => {
                let mut order: Vec<usize> = (0..cells).collect();
                order.sort_unstable_by(|&a, &b| image[b].total_cmp(&image[a]));
                order[..top].iter().for_each(|&j| positive[row + j] = 1.0);
            }
        }
    }
    let count = |m: &[f32]| m.iter().sum::<f32>().max(1.0) as f64;
    let (np, nn) = (count(&positive), count(&negative));
    let positive = Tensor::<2>::from_data(TensorData::new(positive, [k * cells, 1]), device);
    let negative = Tensor::<2>::from_data(TensorData::new(negative, [k * cells, 1]), device);
    (relu(logits.clone().neg() + MARGIN) * positive).sum() / np + (relu(logits + MARGIN) * negative).sum() / nn
}

/// The feature discriminator's own options (`train.toml`'s `fdisc_hidden`, `fdisc_steps`,
/// `fdisc_cells`, `fdisc_lr`, `fdisc_noise`, `fdisc_standardise`).
#[derive(Debug, Clone, PartialEq)]
pub struct FdiscConfig {
    /// Discriminator units.
    pub hidden: usize,
    /// Optimisation steps.
    pub steps: usize,
    /// Normal grid cells per step, drawn at random from all training images.
    pub cells: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Standard deviation of the noise that makes the anomalous cells, in standardised units
    /// of the features.
    pub noise: f32,
    /// Standardisation of the features: per `channel`, or per channel and grid `cell`.
    pub standardise: Standardise,
}

impl Default for FdiscConfig {
    fn default() -> Self {
        FdiscConfig { hidden: 256, steps: 1000, cells: 2048, lr: 1e-3, noise: 0.5, standardise: Standardise::Channel }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_model::onnx::features::FeatureShape;

    #[test]
    fn a_mask_labels_the_cells_it_covers_and_an_image_without_one_is_left_to_the_network() {
        let dir = std::env::temp_dir().join(format!("vigil-fdisc-masks-{}", std::process::id()));
        let masks = dir.join("masks");
        std::fs::create_dir_all(&masks).unwrap();
        // A 32x32 mask on a 4x4 grid of 8x8 cells: the top-left cell whole, and 4 pixels
        // (6 %) of the cell right of it.
        let mut m = image::GrayImage::new(32, 32);
        for y in 0..8 {
            for x in 0..8 {
                m.put_pixel(x, y, image::Luma([255]));
            }
        }
        for y in 0..4 {
            m.put_pixel(8, y, image::Luma([255]));
        }
        m.save(masks.join("a_mask.png")).unwrap();
        image::GrayImage::new(32, 32).save(masks.join("empty_mask.png")).unwrap();
        std::fs::write(masks.join("broken_mask.png"), b"not a png").unwrap();
        let features = |names: &[&str]| Features {
            shape: FeatureShape { channels: 1, grid: [4, 4] },
            data: vec![0.0; 16 * names.len()],
            paths: names.iter().map(|n| dir.join(n)).collect(),
        };
        let c = Confirmed::with_masks(features(&["a.png", "b.png", "empty.png"]), Some(&masks)).unwrap();
        let a = c.cells[0].as_ref().expect("a has a mask");
        assert_eq!(a.iter().filter(|&&v| v).count(), 1, "{a:?}");
        assert!(a[0], "the covered cell, not the sliver: {a:?}");
        assert!(c.cells[1].is_none() && c.cells[2].is_none(), "no mask, and a mask that covers nothing");
        assert_eq!(c.masked(), 1);
        let err = Confirmed::with_masks(features(&["broken.png"]), Some(&masks)).err().unwrap().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.contains("broken_mask.png") && err.contains("white where the defect is"), "{err}");
    }
}
