//! burn's own eval-mode scoring: the trained networks on the CPU backend, followed by the
//! score head computed directly. The exported graph must agree with it (export parity).

use burn::tensor::{Device, Tensor, TensorData};
use vigil_model::bundle::manifest::{InputSpec, PixelError, Reduction, SSIM_SIGMA, ScoreSource, ScoreSpec};
use vigil_model::onnx::graph::gaussian_kernel;

use crate::family::cond::Cond;
use crate::family::kind::GanScore;
use crate::family::trained::Trained;

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

/// `1 - SSIM` of one `h x w` plane against another, for dynamic range `range`.
pub fn ssim_dissimilarity(a: &[f32], b: &[f32], h: usize, w: usize, range: f32) -> Vec<f32> {
    let product = |p: &[f32], q: &[f32]| p.iter().zip(q).map(|(u, v)| u * v).collect::<Vec<f32>>();
    let window = |v: &[f32]| blur(v, h, w, SSIM_SIGMA);
    let (mu_a, mu_b) = (window(a), window(b));
    let (e_aa, e_bb, e_ab) = (window(&product(a, a)), window(&product(b, b)), window(&product(a, b)));
    let (c1, c2) = ((0.01 * range).powi(2), (0.03 * range).powi(2));
    (0..h * w)
        .map(|p| {
            let (ma, mb) = (mu_a[p], mu_b[p]);
            let (va, vb, cov) = (e_aa[p] - ma * ma, e_bb[p] - mb * mb, e_ab[p] - ma * mb);
            let ssim = ((2.0 * ma * mb + c1) * (2.0 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2));
            1.0 - ssim
        })
        .collect()
}

/// Per-pixel error maps of `x` against `recon`, both `[n, c, h, w]` flat.
fn error_maps(x: &[f32], recon: &[f32], dims: [usize; 4], spec: &ScoreSpec, range: &[f32]) -> Vec<Vec<f32>> {
    let [n, c, h, w] = dims;
    (0..n)
        .map(|i| {
            let mut m = vec![0.0f32; h * w];
            for (ch, &l) in range.iter().enumerate().take(c) {
                let off = (i * c + ch) * h * w;
                let (xs, rs) = (&x[off..off + h * w], &recon[off..off + h * w]);
                if spec.pixel_error.uses_ssim() {
                    let d = ssim_dissimilarity(xs, rs, h, w, l);
                    m.iter_mut().zip(d).for_each(|(v, d)| *v += d);
                }
                for p in 0..h * w {
                    let d = xs[p] - rs[p];
                    m[p] += match spec.pixel_error {
                        PixelError::Squared | PixelError::SsimSquared => d * d,
                        PixelError::Absolute => d.abs(),
                        PixelError::Ssim => 0.0,
                    };
                }
            }
            m.iter_mut().for_each(|v| *v /= c as f32);
            blur(&m, h, w, spec.smoothing_sigma)
        })
        .collect()
}

/// Scores `x` (`[n, c, h, w]` flat, prepared as `input` says) with the trained networks in
/// eval mode; `classes` holds each image's class and the class count of a conditional
/// model. Returns the scores and, for reconstruction scores, the anomaly maps.
#[allow(clippy::too_many_arguments)]
pub fn score(
    trained: &Trained,
    latent: usize,
    gan_score: GanScore,
    spec: &ScoreSpec,
    input: &InputSpec,
    x: &[f32],
    dims: [usize; 4],
    classes: Option<(&[usize], usize)>,
) -> (Vec<f32>, Option<Vec<Vec<f32>>>) {
    let range = input.dynamic_range();
    let device = Device::flex();
    let cond = classes.and_then(|(labels, k)| Cond::new(labels, k, &device));
    let cond = cond.as_ref();
    let input = || Tensor::<4>::from_data(TensorData::new(x.to_vec(), dims), &device);
    let with_class = |x: Tensor<4>| Cond::image(cond, x);
    match trained {
        Trained::Autoencoder(ae) => {
            let recon = to_vec(ae.reconstruct(input(), latent, cond));
            let maps = error_maps(x, &recon, dims, spec, &range);
            (maps.iter().map(|m| reduce(m, spec.reduction)).collect(), Some(maps))
        }
        Trained::Gan(g) if gan_score == GanScore::Discriminator || spec.source == ScoreSource::Discriminator => {
            (to_vec(g.critic.forward(with_class(input()))).into_iter().map(|l| -l).collect(), None)
        }
        Trained::Gan(g) => {
            let z = g.encoder.forward(with_class(input()));
            let recon_t = g.generator.forward(Cond::latent(cond, z));
            let fx = g.critic.features(with_class(input()));
            let fr = g.critic.features(with_class(recon_t.clone()));
            let per = fx.dims()[1..].iter().product::<usize>();
            let feat = to_vec((fx - fr).powf_scalar(2.0));
            let recon = to_vec(recon_t);
            let maps = error_maps(x, &recon, dims, spec, &range);
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
