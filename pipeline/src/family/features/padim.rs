//! PaDiM: per grid cell, a Gaussian over a seeded random subset of the feature channels; a
//! cell scores by its Mahalanobis distance. The statistics (count, means, scatter matrices)
//! are kept so that a retrain adds new normal images to them without the old ones.

use anyhow::Context;
use rayon::prelude::*;
use vigil_model::onnx::features::FeatureHead;
use vigil_model::onnx::graph::Tensor;
use vigil_model::rng::Rng;

use super::extract::Features;

/// Added to each covariance's diagonal (as in the PaDiM paper): keeps the inverse finite where
/// a channel barely varies.
pub const RIDGE: f64 = 0.01;

/// Running statistics per cell over the chosen channels.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// The channels used, ascending.
    pub dims: Vec<usize>,
    /// Grid cells.
    pub cells: usize,
    /// Images seen.
    pub count: usize,
    /// Means, `[cells, d]`.
    pub mean: Vec<f64>,
    /// Scatter matrices `Σ (x - mean)(x - mean)ᵀ`, `[cells, d, d]`.
    pub scatter: Vec<f64>,
}

/// `d` of `channels`, chosen by `seed` (all of them when `d >= channels`), ascending.
pub fn choose_dims(channels: usize, d: usize, seed: u64) -> Vec<usize> {
    let mut all: Vec<usize> = (0..channels).collect();
    if d < channels {
        Rng::new(seed).shuffle(&mut all);
        all.truncate(d);
        all.sort_unstable();
    }
    all
}

/// The statistics of `features` over channels `dims`.
pub fn fit(features: &Features, dims: &[usize]) -> Stats {
    let (c, cells, n) = (features.shape.channels, features.shape.cells(), features.len());
    let d = dims.len();
    let value = |img: usize, ch: usize, cell: usize| features.image(img)[ch * cells + cell] as f64;
    let _ = c;
    // Per cell: mean, then scatter, in parallel over cells.
    let per_cell: Vec<(Vec<f64>, Vec<f64>)> = (0..cells)
        .into_par_iter()
        .map(|cell| {
            let mut mean = vec![0f64; d];
            for img in 0..n {
                for (k, &ch) in dims.iter().enumerate() {
                    mean[k] += value(img, ch, cell);
                }
            }
            mean.iter_mut().for_each(|m| *m /= n.max(1) as f64);
            let mut scatter = vec![0f64; d * d];
            let mut x = vec![0f64; d];
            for img in 0..n {
                for (k, &ch) in dims.iter().enumerate() {
                    x[k] = value(img, ch, cell) - mean[k];
                }
                for i in 0..d {
                    let xi = x[i];
                    let row = &mut scatter[i * d..i * d + i + 1];
                    for (j, s) in row.iter_mut().enumerate() {
                        *s += xi * x[j];
                    }
                }
            }
            // Mirror the lower triangle.
            for i in 0..d {
                for j in i + 1..d {
                    scatter[i * d + j] = scatter[j * d + i];
                }
            }
            (mean, scatter)
        })
        .collect();
    let mut stats = Stats { dims: dims.to_vec(), cells, count: n, mean: vec![], scatter: vec![] };
    for (m, s) in per_cell {
        stats.mean.extend(m);
        stats.scatter.extend(s);
    }
    stats
}

/// The statistics of both sets together (Chan et al.'s pairwise update); an error when they
/// are not of one layout (other channels, or another feature grid: images at another input
/// size), which no update can join.
pub fn merge(a: &Stats, b: &Stats) -> anyhow::Result<Stats> {
    anyhow::ensure!(
        a.dims == b.dims && a.cells == b.cells && a.mean.len() == a.cells * a.dims.len(),
        "the fitted PaDiM statistics cover {} feature cells over {} channels, the new images' {} cells over {} channels: they were computed at another input size or channel choice and cannot be merged",
        a.cells,
        a.dims.len(),
        b.cells,
        b.dims.len()
    );
    let d = a.dims.len();
    let (na, nb) = (a.count as f64, b.count as f64);
    let n = na + nb;
    let mut out = a.clone();
    out.count = a.count + b.count;
    for cell in 0..a.cells {
        let delta: Vec<f64> = (0..d).map(|k| b.mean[cell * d + k] - a.mean[cell * d + k]).collect();
        for (k, dk) in delta.iter().enumerate() {
            out.mean[cell * d + k] = a.mean[cell * d + k] + dk * nb / n;
        }
        for i in 0..d {
            for j in 0..d {
                let at = cell * d * d + i * d + j;
                out.scatter[at] = a.scatter[at] + b.scatter[at] + delta[i] * delta[j] * na * nb / n;
            }
        }
    }
    Ok(out)
}

/// Inverts a symmetric positive definite `d x d` matrix through its Cholesky factor.
fn inverse_spd(a: &[f64], d: usize) -> Option<Vec<f64>> {
    // A = L Lᵀ.
    let mut l = vec![0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * d + k] * l[j * d + k]).sum();
            if i == j {
                let v = a[i * d + i] - s;
                if v <= 0.0 || !v.is_finite() {
                    return None;
                }
                l[i * d + i] = v.sqrt();
            } else {
                l[i * d + j] = (a[i * d + j] - s) / l[j * d + j];
            }
        }
    }
    // L⁻¹ (lower triangular), then A⁻¹ = L⁻ᵀ L⁻¹.
    let mut li = vec![0f64; d * d];
    for i in 0..d {
        li[i * d + i] = 1.0 / l[i * d + i];
        for j in 0..i {
            let s: f64 = (j..i).map(|k| l[i * d + k] * li[k * d + j]).sum();
            li[i * d + j] = -s / l[i * d + i];
        }
    }
    let mut inv = vec![0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = (i..d).map(|k| li[k * d + i] * li[k * d + j]).sum();
            inv[i * d + j] = s;
            inv[j * d + i] = s;
        }
    }
    Some(inv)
}

/// The scatter matrices (`[cells, d, d]`) of `count` images whose regularised covariances have
/// the inverses `inv` (`[cells, d, d]`, as [`head`] writes them).
pub fn scatter_from_inverses(inv: &[f32], d: usize, count: usize) -> anyhow::Result<Vec<f64>> {
    anyhow::ensure!(count >= 2, "PaDiM statistics of fewer than 2 images cannot be rebuilt");
    let per: Vec<anyhow::Result<Vec<f64>>> = inv
        .par_chunks(d * d)
        .enumerate()
        .map(|(cell, m)| {
            let m: Vec<f64> = m.iter().map(|&v| v as f64).collect();
            let mut cov = inverse_spd(&m, d).with_context(|| {
                format!("cell {cell}: the inverse covariance is not positive definite; the bundle's graph is damaged")
            })?;
            for i in 0..d {
                cov[i * d + i] -= RIDGE;
            }
            Ok(cov.into_iter().map(|v| v * (count - 1) as f64).collect())
        })
        .collect();
    Ok(per.into_iter().collect::<anyhow::Result<Vec<_>>>()?.concat())
}

/// What half precision loses of each value: `v - f32(f16(v))`, itself as near as half
/// precision holds it, so `f16(v) + f16(residual)` is `v` within about 1e-6 of its value, or
/// 6e-8 where the residual is below half precision's normal range (values under 0.1).
pub fn half_residual(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x - half::f16::from_f32(x).to_f32()).to_f32()).collect()
}

/// The upper triangles (row by row) of symmetric `d x d` matrices, one after another.
pub fn pack_upper(m: &[f32], d: usize) -> Vec<f32> {
    m.chunks(d * d).flat_map(|block| (0..d).flat_map(move |i| block[i * d + i..(i + 1) * d].iter().copied())).collect()
}

/// One symmetric `d x d` matrix from its packed upper triangle.
pub fn unpack_upper(p: &[f32], d: usize) -> Vec<f32> {
    let at = |i: usize, j: usize| {
        let (i, j) = if i <= j { (i, j) } else { (j, i) };
        // Rows before `i` hold d, d-1, …, d-i+1 values.
        i * d - i * i.saturating_sub(1) / 2 + (j - i)
    };
    (0..d * d).map(|k| p[at(k / d, k % d)]).collect()
}

/// The graph head of the statistics: means `[d, cells]` and inverse covariances.
pub fn head(stats: &Stats) -> anyhow::Result<FeatureHead> {
    let (d, cells) = (stats.dims.len(), stats.cells);
    anyhow::ensure!(stats.count >= 2, "PaDiM needs at least 2 training images");
    let inverses: Vec<Vec<f64>> = (0..cells)
        .into_par_iter()
        .map(|cell| {
            let mut cov: Vec<f64> =
                stats.scatter[cell * d * d..(cell + 1) * d * d].iter().map(|v| v / (stats.count - 1) as f64).collect();
            for i in 0..d {
                cov[i * d + i] += RIDGE;
            }
            inverse_spd(&cov, d).expect("a covariance plus a ridge is positive definite")
        })
        .collect();
    let mut mean = vec![0f32; d * cells];
    for cell in 0..cells {
        for k in 0..d {
            mean[k * cells + cell] = stats.mean[cell * d + k] as f32;
        }
    }
    Ok(FeatureHead::Padim {
        dims: stats.dims.iter().map(|&v| v as i64).collect(),
        mean: Tensor::new(vec![d, cells], mean),
        inv_cov: Tensor::new(vec![cells, d, d], inverses.into_iter().flatten().map(|v| v as f32).collect()),
    })
}

/// PaDiM's own option (`train.toml`'s `padim_dims`).
#[derive(Debug, Clone, PartialEq)]
pub struct PadimConfig {
    /// Feature channels each cell's Gaussian uses (a seeded random subset).
    pub dims: usize,
}

impl Default for PadimConfig {
    fn default() -> Self {
        PadimConfig { dims: 100 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_model::onnx::features::FeatureShape;

    fn features(values: Vec<Vec<f32>>, channels: usize, cells: usize) -> Features {
        let n = values.len();
        Features {
            shape: FeatureShape { channels, grid: [1, cells] },
            data: values.into_iter().flatten().collect(),
            paths: (0..n).map(|i| format!("{i}").into()).collect(),
        }
    }

    #[test]
    fn the_inverse_times_the_matrix_is_the_identity() {
        let a = [4.0, 2.0, 0.6, 2.0, 5.0, 1.0, 0.6, 1.0, 3.0];
        let inv = inverse_spd(&a, 3).unwrap();
        for i in 0..3 {
            for j in 0..3 {
                let v: f64 = (0..3).map(|k| a[i * 3 + k] * inv[k * 3 + j]).sum();
                assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12, "{i},{j}: {v}");
            }
        }
        assert!(inverse_spd(&[1.0, 2.0, 2.0, 1.0], 2).is_none());
    }

    #[test]
    fn merged_statistics_equal_those_of_all_images_at_once() {
        let mut rng = Rng::new(3);
        let imgs: Vec<Vec<f32>> = (0..9).map(|_| (0..8).map(|_| rng.uniform()).collect()).collect();
        let dims = vec![0, 1, 3];
        let all = fit(&features(imgs.clone(), 4, 2), &dims);
        let a = fit(&features(imgs[..4].to_vec(), 4, 2), &dims);
        let b = fit(&features(imgs[4..].to_vec(), 4, 2), &dims);
        let m = merge(&a, &b).unwrap();
        assert_eq!(m.count, 9);
        for (x, y) in m.mean.iter().zip(&all.mean).chain(m.scatter.iter().zip(&all.scatter)) {
            assert!((x - y).abs() < 1e-9, "{x} vs {y}");
        }
    }

    #[test]
    fn statistics_of_another_layout_are_refused_not_merged() {
        let mut rng = Rng::new(4);
        let imgs: Vec<Vec<f32>> = (0..4).map(|_| (0..12).map(|_| rng.uniform()).collect()).collect();
        let two_cells = fit(&features(imgs.clone(), 6, 2), &[0, 1]);
        let three_cells = fit(&features(imgs, 4, 3), &[0, 1]);
        let err = merge(&two_cells, &three_cells).unwrap_err().to_string();
        assert!(
            err.contains("2 feature cells") && err.contains("3 cells") && err.contains("another input size"),
            "{err}"
        );
    }

    #[test]
    fn a_packed_upper_triangle_unpacks_to_the_matrix_and_half_precision_plus_its_residual_is_float() {
        let d = 4;
        let m: Vec<f32> = (0..d * d).map(|k| (k / d).min(k % d) as f32 * 10.0 + (k / d).max(k % d) as f32).collect();
        let packed = pack_upper(&m, d);
        assert_eq!(packed.len(), 10);
        assert_eq!(unpack_upper(&packed, d), m);
        for v in [1.0f32 / 3.0, 123.456, -7.0e-3, 0.0] {
            let back = half::f16::from_f32(v).to_f32() + half_residual(&[v])[0];
            assert!((back - v).abs() <= (1e-6 * v.abs()).max(6e-8), "{v} -> {back}");
        }
    }

    #[test]
    fn dims_are_a_seeded_sorted_subset() {
        let a = choose_dims(152, 100, 7);
        assert_eq!(a.len(), 100);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(a, choose_dims(152, 100, 7));
        assert_eq!(choose_dims(10, 20, 7), (0..10).collect::<Vec<_>>());
    }
}
