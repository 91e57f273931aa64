//! The graphs of the pretrained-feature families: the image goes through the backbone, two of
//! its stages (1/8 and 1/16 of the input) are brought to one grid and averaged over each
//! 3x3 neighbourhood, and a head scores every grid cell in that feature space: the
//! Mahalanobis distance to the cell's Gaussian (PaDiM), the distance to the nearest patch of
//! a memory bank (PatchCore), a feature autoencoder's reconstruction error, a
//! discriminator's logit, or how far a student network's prediction from the image is from
//! them. The grid's
//! scores are upsampled to the input, smoothed, and reduced to the image score, as in the
//! other families, so the daemon serves these bundles like any other.

use crate::bundle::manifest::{InputSpec, Reduction};
use crate::onnx::backbone::EfficientNetLite;

use super::graph::{Dim, GraphBuilder, Interpolation, OPSET, Tensor};
use super::head::{CLASS_INPUT, MAP_OUTPUT, SCORE_OUTPUT, reduce_map};
use super::net::Sequential;
use super::pb;

/// The backbone stages whose outputs are the features: 1/8 and 1/16 of the input
/// (40 and 112 channels for EfficientNet-Lite0).
pub const TAP_STAGES: [usize; 2] = [3, 5];
/// The neighbourhood averaged around each grid cell (PatchCore's local aggregation).
pub const NEIGHBOURHOOD: usize = 3;
/// Input sides must be multiples of this, so the two taps' grids line up exactly.
pub const INPUT_MULTIPLE: usize = 32;

/// Where the features are and what they look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureShape {
    /// Channels (the two taps concatenated).
    pub channels: usize,
    /// Grid height and width.
    pub grid: [usize; 2],
}

impl FeatureShape {
    /// Grid cells.
    pub fn cells(&self) -> usize {
        self.grid[0] * self.grid[1]
    }
}

/// Emits the feature extractor on `x` (`[N, 3, h, w]`, ImageNet-normalised): the value name
/// of `[N, C, h/8, w/8]` and its shape.
pub fn emit_features(
    g: &mut GraphBuilder,
    net: &EfficientNetLite,
    x: &str,
    input: [usize; 2],
) -> (String, FeatureShape) {
    let taps = net.emit_stages(g, x, input, TAP_STAGES[1]);
    let (fine, coarse) = (&taps[TAP_STAGES[0] - 1], &taps[TAP_STAGES[1] - 1]);
    let factor = [fine.size[0] / coarse.size[0], fine.size[1] / coarse.size[1]];
    let up = g.upsample(&coarse.value, factor, Interpolation::Bilinear);
    let cat = g.concat(&[&fine.value, &up], 1);
    let pooled = g.average_pool(&cat, NEIGHBOURHOOD, NEIGHBOURHOOD / 2);
    (pooled, FeatureShape { channels: fine.channels + coarse.channels, grid: fine.size })
}

/// A model that outputs only the features (`features [N, C, gh, gw]`), for training.
pub fn extractor_model(net: &EfficientNetLite, input: [usize; 2]) -> (pb::ModelProto, FeatureShape) {
    let mut g = GraphBuilder::new("vigil_features", OPSET);
    let n = Dim::Symbol("N".into());
    let x = g.input("image", &[n.clone(), Dim::Fixed(3), Dim::Fixed(input[0]), Dim::Fixed(input[1])]);
    let (f, shape) = emit_features(&mut g, net, &x, input);
    let dims = [n, Dim::Fixed(shape.channels), Dim::Fixed(shape.grid[0]), Dim::Fixed(shape.grid[1])];
    g.output(&f, "features", &dims);
    (g.finish(), shape)
}

/// A feature family's head: from features to a per-cell distance `[N, 1, gh, gw]`.
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureHead {
    /// PaDiM: per cell a Gaussian over the channels `dims`: `mean [d, cells]` and the inverse
    /// covariance `[cells, d, d]`; the score is the Mahalanobis distance.
    Padim {
        /// The channels used (a seeded random subset).
        dims: Vec<i64>,
        /// Means, `[d, cells]`.
        mean: Tensor,
        /// Inverse covariances, `[cells, d, d]`.
        inv_cov: Tensor,
    },
    /// PatchCore: the memory bank `[M, C]` (one row per patch); the score is the Euclidean
    /// distance to the nearest one.
    Patchcore {
        /// Bank, `[M, C]`.
        bank: Tensor,
    },
    /// A conditional model: one head per class, in class order; each image is scored by its
    /// class's head (the backbone is shared).
    PerClass(Vec<FeatureHead>),
    /// Feature autoencoder: features standardised per channel (`mean`, `std` `[C]`), then
    /// reconstructed by `net`; the score is the squared error averaged over channels.
    Fae {
        /// Per-channel mean of the training features.
        mean: Tensor,
        /// Per-channel standard deviation.
        std: Tensor,
        /// The autoencoder (1x1 and 3x3 convolutions, batch norm folded).
        net: Sequential,
    },
    /// Feature discriminator: features standardised per channel (`mean`, `std` `[C]`) or per
    /// channel and cell (`[C, gh·gw]`), then
    /// `net` (the feature adaptor and the discriminator, 1x1 convolutions) gives one channel;
    /// the score is that output, the discriminator's logit for "anomalous".
    Discriminator {
        /// Per-channel mean of the training features.
        mean: Tensor,
        /// Per-channel standard deviation.
        std: Tensor,
        /// Adaptor and discriminator, batch norm folded; one output channel.
        net: Sequential,
    },
    /// Student–teacher: the backbone's features standardised per channel (`mean`, `std`
    /// `[C]`) are the teacher's answer; `net` (the student, convolutions from the input image
    /// to the features' grid) predicts them from the image; the score is the squared
    /// difference averaged over channels.
    Student {
        /// Per-channel mean of the training features.
        mean: Tensor,
        /// Per-channel standard deviation.
        std: Tensor,
        /// The student, from the image `[N, 3, h, w]` to `[N, C, gh, gw]`.
        net: Sequential,
    },
}

/// Emits `(f - mean) / std`: per channel (`mean`, `std` of `C` values) or per channel and grid
/// cell (`C × cells` values); `prefix` names the constants.
fn standardise(
    g: &mut GraphBuilder,
    f: &str,
    shape: FeatureShape,
    mean: &Tensor,
    std: &Tensor,
    prefix: &str,
) -> String {
    let c = shape.channels;
    let dims = if mean.data.len() == c { vec![1, c, 1, 1] } else { vec![1, c, shape.grid[0], shape.grid[1]] };
    let m = g.constant(&format!("{prefix}_mean"), &Tensor::new(dims.clone(), mean.data.clone()));
    let inv = std.data.iter().map(|v| 1.0 / v).collect();
    let s = g.constant(&format!("{prefix}_inv_std"), &Tensor::new(dims, inv));
    let centred = g.sub(f, &m);
    g.mul(&centred, &s)
}

/// Emits `head` on the features `f` of the image `x`; `one_hot` (`[N, k]`) picks each image's
/// head of a [`FeatureHead::PerClass`].
fn emit_head(
    g: &mut GraphBuilder,
    (x, f): (&str, &str),
    shape: FeatureShape,
    head: &FeatureHead,
    one_hot: Option<&str>,
) -> String {
    let [gh, gw] = shape.grid;
    let cells = shape.cells() as i64;
    match head {
        FeatureHead::PerClass(heads) => {
            let one_hot = one_hot.expect("a per-class head is emitted with the class input");
            let maps: Vec<String> = heads.iter().map(|h| emit_head(g, (x, f), shape, h, None)).collect();
            let refs: Vec<&str> = maps.iter().map(String::as_str).collect();
            let stacked = g.concat(&refs, 1); // [N, k, gh, gw]
            g.select_class(&stacked, one_hot, heads.len())
        }
        FeatureHead::Padim { dims, mean, inv_cov } => {
            let d = dims.len() as i64;
            let x = g.gather(f, dims, 1); // [N, d, gh, gw]
            let x = g.reshape(&x, &[0, d, cells]); // [N, d, P]
            let m = g.constant("padim_mean", mean);
            let diff = g.sub(&x, &m);
            let diff = g.transpose(&diff, &[2, 0, 1]); // [P, N, d]
            // Half precision: the bundle's largest constant at half the bytes, widened once by
            // both engines at load; what that costs in scores and memory is measured in
            // docs/performance.md.
            let inv = g.constant_f16(PADIM_INV_COV, inv_cov);
            let t = g.matmul(&diff, &inv); // [P, N, d]
            let q = g.mul(&t, &diff);
            let q = g.reduce_sum(&q, &[2], false); // [P, N]
            let q = g.transpose(&q, &[1, 0]); // [N, P]
            let q = g.max_scalar(&q, 0.0);
            let dist = g.sqrt(&q);
            g.reshape(&dist, &[-1, 1, gh as i64, gw as i64])
        }
        FeatureHead::Patchcore { bank } => {
            let c = shape.channels as i64;
            let x = g.reshape(f, &[0, c, cells]);
            let x = g.transpose(&x, &[0, 2, 1]); // [N, P, C]
            let b = g.constant("patchcore_bank", bank); // [M, C]
            let bt = g.transpose(&b, &[1, 0]); // [C, M]
            let dot = g.matmul(&x, &bt); // [N, P, M]
            let dot2 = g.scale(&dot, -2.0);
            let (m, w) = (bank.shape[0], bank.shape[1]);
            let norms: Vec<f32> = bank.data.chunks(w).map(|row| row.iter().map(|v| v * v).sum()).collect();
            let bn = g.constant("patchcore_bank_norm", &Tensor::new(vec![m], norms));
            // ‖x‖² - 2x·b + ‖b‖² finds the nearest member without ‖x‖²; the distance itself is
            // then taken directly, since that expansion loses its digits near zero (a normal
            // patch close to a member), where the engines would disagree.
            let partial = g.add(&dot2, &bn);
            let idx = g.arg_min(&partial, 2); // [N, P]
            let nearest = g.gather_by(&b, &idx, 0); // [N, P, C]
            let diff = g.sub(&x, &nearest);
            let sq = g.mul(&diff, &diff);
            let d2 = g.reduce_sum(&sq, &[2], false); // [N, P]
            let dist = g.sqrt(&d2);
            g.reshape(&dist, &[-1, 1, gh as i64, gw as i64])
        }
        FeatureHead::Fae { mean, std, net } => {
            let z = standardise(g, f, shape, mean, std, "fae");
            let recon = net.emit(g, &z);
            let diff = g.sub(&recon, &z);
            let sq = g.mul(&diff, &diff);
            g.reduce_mean(&sq, &[1], true) // [N, 1, gh, gw]
        }
        FeatureHead::Discriminator { mean, std, net } => {
            let z = standardise(g, f, shape, mean, std, "fdisc");
            net.emit(g, &z) // [N, 1, gh, gw]
        }
        FeatureHead::Student { mean, std, net } => {
            let z = standardise(g, f, shape, mean, std, "student");
            let predicted = net.emit(g, x);
            let diff = g.sub(&predicted, &z);
            let sq = g.mul(&diff, &diff);
            g.reduce_mean(&sq, &[1], true) // [N, 1, gh, gw]
        }
    }
}

/// The name prefix of PaDiM's inverse covariances in the graph.
const PADIM_INV_COV: &str = "padim_inv_cov";

/// PaDiM's inverse covariances (`[cells, d, d]`) as a graph written by this module holds them
/// (half precision), for a retrain that rebuilds its statistics from a bundle; `None` when the
/// graph has none in that form (another family, or an older bundle, whose weights carry the
/// statistics themselves).
pub fn padim_inverse_covariances(model: &pb::ModelProto) -> Option<Tensor> {
    let graph = model.graph.as_ref()?;
    let t = graph.initializer.iter().find(|t| t.name.starts_with(PADIM_INV_COV))?;
    super::values::halves(t)
}

/// Declares the class input of a conditional model (`[N]` int64) when `head` has one head per
/// class, and returns its one-hot rows.
fn class_input(g: &mut GraphBuilder, head: &FeatureHead, name: &str) -> Option<String> {
    let FeatureHead::PerClass(heads) = head else { return None };
    let classes = g.input_i64(name, &[Dim::Symbol("N".into())]);
    Some(g.one_hot(&classes, heads.len()))
}

/// The backbone and head alone, up to the per-cell scores (`cells [N, 1, gh, gw]`): what the
/// tests compare with the head computed outside the graph.
pub fn cells_model(net: &EfficientNetLite, input: [usize; 2], head: &FeatureHead) -> pb::ModelProto {
    let mut g = GraphBuilder::new("vigil_feature_cells", OPSET);
    let n = Dim::Symbol("N".into());
    let x = g.input("image", &[n.clone(), Dim::Fixed(3), Dim::Fixed(input[0]), Dim::Fixed(input[1])]);
    let one_hot = class_input(&mut g, head, CLASS_INPUT);
    let (f, shape) = emit_features(&mut g, net, &x, input);
    let cells = emit_head(&mut g, (&x, &f), shape, head, one_hot.as_deref());
    g.output(&cells, "cells", &[n, Dim::Fixed(1), Dim::Fixed(shape.grid[0]), Dim::Fixed(shape.grid[1])]);
    g.finish()
}

/// How the grid's scores become the bundle's map and score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MapSpec {
    /// Gaussian smoothing of the upsampled map, in input pixels (0: none).
    pub smoothing_sigma: f32,
    /// Map to image score.
    pub reduction: Reduction,
}

/// The whole scoring graph of a feature family: `image` (and, for a per-class head, `class`
/// int64 `[N]`) → `anomaly_map [N, 1, H, W]` and `score [N]`.
pub fn feature_scoring_model(
    net: &EfficientNetLite,
    input: &InputSpec,
    head: &FeatureHead,
    map: MapSpec,
) -> pb::ModelProto {
    let (h, w) = (input.height, input.width);
    let mut g = GraphBuilder::new("vigil_features", OPSET);
    let n = Dim::Symbol("N".into());
    let x = g.input(&input.name, &[n.clone(), Dim::Fixed(3), Dim::Fixed(h), Dim::Fixed(w)]);
    let one_hot = class_input(&mut g, head, CLASS_INPUT);
    let (f, shape) = emit_features(&mut g, net, &x, [h, w]);
    let cells = emit_head(&mut g, (&x, &f), shape, head, one_hot.as_deref());
    let up = g.upsample(&cells, [h / shape.grid[0], w / shape.grid[1]], Interpolation::Bilinear);
    let smooth = g.gaussian_blur(&up, map.smoothing_sigma, h.min(w) - 1);
    g.output(&smooth, MAP_OUTPUT, &[n.clone(), Dim::Fixed(1), Dim::Fixed(h), Dim::Fixed(w)]);
    let score = reduce_map(&mut g, &smooth, map.reduction);
    g.output(&score, SCORE_OUTPUT, &[n]);
    g.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_covariances_read_back_as_the_graph_holds_them() {
        let m = Tensor::new(vec![2, 2, 2], vec![1.0, 0.1, 0.1, 2.0, 3.0, 1e-4, 1e-4, 40.0]);
        let mut g = GraphBuilder::new("t", OPSET);
        g.constant_f16(PADIM_INV_COV, &m);
        let back = padim_inverse_covariances(&g.finish()).unwrap();
        assert_eq!(back.shape, m.shape);
        for (a, b) in back.data.iter().zip(&m.data) {
            assert!((a - b).abs() <= 1e-3 * b.abs(), "{a} vs {b}");
        }
    }
}
