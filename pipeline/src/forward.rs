//! burn's own eval-mode scoring: the trained networks on the CPU backend, followed by the
//! score head computed directly. The exported graph must agree with it (export parity).

use burn::tensor::{Device, Tensor, TensorData};
use vigil::bundle::manifest::{PixelError, Reduction, ScoreSource, ScoreSpec};
use vigil::onnx::graph::gaussian_kernel;

use crate::model::{GanScore, Trained};

fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.try_into_vec_as::<f32>().expect("float tensor")
}

/// Reflect index as ONNX `Pad(mode=reflect)` and numpy do (no repeated edge).
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let i = if i < 0 { -i } else { i };
    (if i >= n { 2 * n - 2 - i } else { i }) as usize
}

/// Separable Gaussian blur of one `h x w` map with a reflect border, as the graph does.
pub fn blur(map: &[f32], h: usize, w: usize, sigma: f32) -> Vec<f32> {
    if sigma <= 0.0 {
        return map.to_vec();
    }
    let k = gaussian_kernel(sigma, h.min(w) - 1);
    let r = (k.len() / 2) as isize;
    let mut tmp = vec![0.0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            tmp[y * w + x] =
                k.iter().enumerate().map(|(j, kv)| kv * map[reflect(y as isize + j as isize - r, h) * w + x]).sum();
        }
    }
    let mut out = vec![0.0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            out[y * w + x] =
                k.iter().enumerate().map(|(j, kv)| kv * tmp[y * w + reflect(x as isize + j as isize - r, w)]).sum();
        }
    }
    out
}

/// The image score of a map.
pub fn reduce(map: &[f32], reduction: Reduction) -> f32 {
    match reduction {
        Reduction::Max => map.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        Reduction::Mean => map.iter().sum::<f32>() / map.len() as f32,
        Reduction::TopKMean { k } => {
            let mut v = map.to_vec();
            v.sort_by(|a, b| b.total_cmp(a));
            v[..k.min(v.len())].iter().sum::<f32>() / k.min(v.len()) as f32
        }
    }
}

/// Per-pixel error maps of `x` against `recon`, both `[n, c, h, w]` flat.
fn error_maps(x: &[f32], recon: &[f32], n: usize, c: usize, h: usize, w: usize, spec: &ScoreSpec) -> Vec<Vec<f32>> {
    (0..n)
        .map(|i| {
            let mut m = vec![0.0f32; h * w];
            for ch in 0..c {
                let off = (i * c + ch) * h * w;
                for p in 0..h * w {
                    let d = x[off + p] - recon[off + p];
                    m[p] += match spec.pixel_error {
                        PixelError::Squared => d * d,
                        PixelError::Absolute => d.abs(),
                    };
                }
            }
            m.iter_mut().for_each(|v| *v /= c as f32);
            blur(&m, h, w, spec.smoothing_sigma)
        })
        .collect()
}

/// Scores `x` (`[n, c, h, w]` flat) with the trained networks in eval mode; returns the
/// scores and, for reconstruction scores, the anomaly maps.
pub fn score(
    trained: &Trained,
    latent: usize,
    gan_score: GanScore,
    spec: &ScoreSpec,
    x: &[f32],
    dims: [usize; 4],
) -> (Vec<f32>, Option<Vec<Vec<f32>>>) {
    let [n, c, h, w] = dims;
    let device = Device::flex();
    let input = || Tensor::<4>::from_data(TensorData::new(x.to_vec(), dims), &device);
    match trained {
        Trained::Autoencoder(ae) => {
            let recon = to_vec(ae.reconstruct(input(), latent));
            let maps = error_maps(x, &recon, n, c, h, w, spec);
            (maps.iter().map(|m| reduce(m, spec.reduction)).collect(), Some(maps))
        }
        Trained::Gan(g) if gan_score == GanScore::Discriminator || spec.source == ScoreSource::Discriminator => {
            (to_vec(g.critic.forward(input())).into_iter().map(|l| -l).collect(), None)
        }
        Trained::Gan(g) => {
            let recon_t = g.generator.forward(g.encoder.forward(input()));
            let fx = g.critic.features(input());
            let fr = g.critic.features(recon_t.clone());
            let per = fx.dims()[1..].iter().product::<usize>();
            let feat = to_vec((fx - fr).powf_scalar(2.0));
            let recon = to_vec(recon_t);
            let maps = error_maps(x, &recon, n, c, h, w, spec);
            let kappa = spec.feature_weight.unwrap_or(1.0);
            let scores = maps
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    reduce(m, spec.reduction) + kappa * feat[i * per..(i + 1) * per].iter().sum::<f32>() / per as f32
                })
                .collect();
            (scores, Some(maps))
        }
    }
}
