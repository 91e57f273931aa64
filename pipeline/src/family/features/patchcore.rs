//! PatchCore: a memory bank of normal patch features chosen by greedy k-center selection
//! (each new member is the patch farthest from those already chosen, so the bank covers the
//! normal feature space evenly), distances taken on a seeded random projection to keep the
//! selection cheap; a cell scores by its distance to the nearest bank member.

use rayon::prelude::*;
use vigil_model::onnx::features::FeatureHead;
use vigil_model::onnx::graph::Tensor;
use vigil_model::rng::Rng;

/// Dimensions of the random projection the selection measures distances in.
pub const PROJECTION: usize = 64;

/// Patch features as rows: `[n, channels]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Patches {
    /// Channels per patch.
    pub channels: usize,
    /// Values, row-major.
    pub data: Vec<f32>,
}

impl Patches {
    /// Number of patches.
    pub fn len(&self) -> usize {
        self.data.len() / self.channels.max(1)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// One patch.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.channels..(i + 1) * self.channels]
    }

    /// The patches of images laid out `[C, cells]` each.
    pub fn from_images(images: &[f32], channels: usize, cells: usize) -> Patches {
        let n = images.len() / (channels * cells);
        let mut data = vec![0f32; n * cells * channels];
        data.par_chunks_mut(cells * channels).enumerate().for_each(|(img, out)| {
            let src = &images[img * channels * cells..(img + 1) * channels * cells];
            for ch in 0..channels {
                for cell in 0..cells {
                    out[cell * channels + ch] = src[ch * cells + cell];
                }
            }
        });
        Patches { channels, data }
    }

    /// These patches followed by `other`'s.
    pub fn concat(mut self, other: &Patches) -> Patches {
        assert_eq!(self.channels, other.channels, "patches of one width");
        self.data.extend_from_slice(&other.data);
        self
    }

    /// The rows `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Patches {
        Patches { channels: self.channels, data: indices.iter().flat_map(|&i| self.row(i).iter().copied()).collect() }
    }
}

/// Projects every patch to [`PROJECTION`] dimensions with a seeded Gaussian matrix (the
/// patches themselves when they have no more dimensions than that).
fn project(patches: &Patches, seed: u64) -> (Vec<f32>, usize) {
    let c = patches.channels;
    if c <= PROJECTION {
        return (patches.data.clone(), c);
    }
    let mut rng = Rng::new(seed);
    let scale = 1.0 / (PROJECTION as f32).sqrt();
    let matrix: Vec<f32> = (0..c * PROJECTION).map(|_| rng.normal() * scale).collect();
    let mut out = vec![0f32; patches.len() * PROJECTION];
    out.par_chunks_mut(PROJECTION).enumerate().for_each(|(i, dst)| {
        let row = patches.row(i);
        for (k, x) in row.iter().enumerate() {
            let m = &matrix[k * PROJECTION..(k + 1) * PROJECTION];
            for (d, w) in dst.iter_mut().zip(m) {
                *d += x * w;
            }
        }
    });
    (out, PROJECTION)
}

/// Greedy k-center selection of `m` of the patches (all of them when there are no more);
/// `progress` is called after each choice.
pub fn coreset(patches: &Patches, m: usize, seed: u64, progress: &(dyn Fn() + Sync)) -> Vec<usize> {
    let n = patches.len();
    if m >= n {
        return (0..n).collect();
    }
    let (proj, d) = project(patches, seed);
    let mut nearest = vec![f32::INFINITY; n];
    let mut chosen = Vec::with_capacity(m);
    let mut next = Rng::new(seed ^ 0xC0_2E5E7).below(n);
    const CHUNK: usize = 8192;
    for _ in 0..m {
        chosen.push(next);
        let center = proj[next * d..(next + 1) * d].to_vec();
        // Update each patch's distance to the chosen set and find the farthest, per chunk.
        let (far, _) = nearest
            .par_chunks_mut(CHUNK)
            .enumerate()
            .map(|(ci, chunk)| {
                let mut best = (usize::MAX, -1f32);
                for (j, near) in chunk.iter_mut().enumerate() {
                    let i = ci * CHUNK + j;
                    let row = &proj[i * d..(i + 1) * d];
                    let dist: f32 = row.iter().zip(&center).map(|(a, b)| (a - b) * (a - b)).sum();
                    if dist < *near {
                        *near = dist;
                    }
                    if *near > best.1 {
                        best = (i, *near);
                    }
                }
                best
            })
            .reduce(|| (usize::MAX, -1f32), |a, b| if b.1 > a.1 { b } else { a });
        progress();
        next = far;
    }
    chosen
}

/// The graph head of a bank.
pub fn head(bank: &Patches) -> FeatureHead {
    FeatureHead::Patchcore { bank: Tensor::new(vec![bank.len(), bank.channels], bank.data.clone()) }
}

/// PatchCore's own option (`train.toml`'s `bank_size`).
#[derive(Debug, Clone, PartialEq)]
pub struct PatchcoreConfig {
    /// Patches kept in the memory bank (scoring time grows with it).
    pub bank_size: usize,
}

impl Default for PatchcoreConfig {
    fn default() -> Self {
        PatchcoreConfig { bank_size: 4096 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coreset_covers_every_cluster_before_repeating_one() {
        // Four tight clusters of 50 patches in 3-D: four choices land one in each.
        let mut rng = Rng::new(1);
        let centres = [[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]];
        let mut data = vec![];
        for c in centres {
            for _ in 0..50 {
                data.extend(c.iter().map(|v| v + rng.range(-0.1, 0.1)));
            }
        }
        let p = Patches { channels: 3, data };
        let chosen = coreset(&p, 4, 9, &|| {});
        let mut clusters: Vec<usize> = chosen.iter().map(|i| i / 50).collect();
        clusters.sort();
        assert_eq!(clusters, [0, 1, 2, 3]);
        assert_eq!(coreset(&p, 500, 9, &|| {}).len(), 200);
    }

    #[test]
    fn image_layout_becomes_rows_of_patches() {
        // One image, 2 channels, 3 cells: [[1, 2, 3], [4, 5, 6]].
        let p = Patches::from_images(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3);
        assert_eq!(p.data, [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
        let FeatureHead::Patchcore { bank } = head(&p) else { unreachable!() };
        assert_eq!(bank.shape, [3, 2]);
        assert_eq!(bank.data, [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }
}
