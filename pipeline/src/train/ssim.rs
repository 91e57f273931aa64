//! SSIM between two image batches on burn tensors: the structural term of the
//! reconstruction loss, computed as the exported graph computes its SSIM map.

use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};
use vigil_model::bundle::manifest::{SSIM_RADIUS, SSIM_SIGMA};
use vigil_model::onnx::graph::gaussian_kernel;

/// Mean SSIM of `a` against `b` (`[B, C, H, W]`; `range[c]` is channel c's dynamic range,
/// as [`vigil_model::bundle::manifest::InputSpec::dynamic_range`] gives it to the graph) over every
/// pixel whose window lies inside the image. The window is separable, so each local
/// statistic costs two one-dimensional depthwise convolutions.
pub fn mean_ssim(a: Tensor<4>, b: Tensor<4>, range: &[f32]) -> Tensor<1> {
    let [_, c, _, _] = a.dims();
    let device = a.device();
    let k = gaussian_kernel(SSIM_SIGMA, SSIM_RADIUS);
    let n = k.len();
    let taps: Vec<f32> = (0..c).flat_map(|_| k.iter().copied()).collect();
    let vertical = Tensor::<4>::from_data(TensorData::new(taps.clone(), [c, 1, n, 1]), &device);
    let horizontal = Tensor::<4>::from_data(TensorData::new(taps, [c, 1, 1, n]), &device);
    let depthwise = ConvOptions::new([1, 1], [0, 0], [1, 1], c);
    let window = |v: Tensor<4>| {
        let v = conv2d(v, vertical.clone(), None, depthwise.clone());
        conv2d(v, horizontal.clone(), None, depthwise.clone())
    };
    let mu_a = window(a.clone());
    let mu_b = window(b.clone());
    let e_aa = window(a.clone() * a.clone());
    let e_bb = window(b.clone() * b.clone());
    let e_ab = window(a * b);
    let mu_aa = mu_a.clone() * mu_a.clone();
    let mu_bb = mu_b.clone() * mu_b.clone();
    let mu_ab = mu_a * mu_b;
    let constant = |k: f32| {
        let v: Vec<f32> = range.iter().map(|l| (k * l).powi(2)).collect();
        Tensor::<4>::from_data(TensorData::new(v, [1, c, 1, 1]), &device)
    };
    let (c1, c2) = (constant(0.01), constant(0.03));
    let num = (mu_ab.clone().mul_scalar(2.0) + c1.clone()) * ((e_ab - mu_ab).mul_scalar(2.0) + c2.clone());
    let den = (mu_aa.clone() + mu_bb.clone() + c1) * ((e_aa - mu_aa) + (e_bb - mu_bb) + c2);
    (num / den).mean()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::forward::ssim_dissimilarity;
    use burn::tensor::Device;

    fn plane(h: usize, w: usize, f: impl Fn(usize, usize) -> f32) -> Vec<f32> {
        (0..h * w).map(|p| f(p / w, p % w)).collect()
    }

    #[test]
    fn identical_images_are_fully_similar_and_flat_ones_follow_the_luminance_formula() {
        let (h, w) = (16, 16);
        let textured = plane(h, w, |y, x| ((x * 7 + y * 13) % 11) as f32 / 10.0);
        assert!(ssim_dissimilarity(&textured, &textured, h, w, 1.0).iter().all(|d| d.abs() < 1e-5));
        // Flat planes: no variance, so SSIM is the luminance term (2ab + C1) / (a² + b² + C1).
        let (a, b) = (0.6f32, 0.3f32);
        let c1 = 0.01f32.powi(2);
        let want = 1.0 - (2.0 * a * b + c1) / (a * a + b * b + c1);
        let got = ssim_dissimilarity(&plane(h, w, |_, _| a), &plane(h, w, |_, _| b), h, w, 1.0);
        assert!(got.iter().all(|d| (d - want).abs() < 1e-4), "{} vs {want}", got[0]);
        // A changed texture of the same mean is dissimilar where squared error is small.
        let inverted: Vec<f32> = textured.iter().map(|v| 1.0 - v).collect();
        let d = ssim_dissimilarity(&textured, &inverted, h, w, 1.0);
        assert!(d[8 * w + 8] > 1.0, "anti-correlated texture: 1 - SSIM = {}", d[8 * w + 8]);
    }

    #[test]
    fn the_training_ssim_agrees_with_the_scoring_ssim_inside_the_border() {
        let (h, w) = (24, 20);
        let a = plane(h, w, |y, x| ((x * 3 + y * 5) % 9) as f32 / 8.0);
        let b = plane(h, w, |y, x| ((x * 5 + y * 2) % 7) as f32 / 6.0);
        let device = Device::flex();
        let t = |v: &Vec<f32>| Tensor::<4>::from_data(TensorData::new(v.clone(), [1, 1, h, w]), &device);
        let got = mean_ssim(t(&a), t(&b), &[1.0]).into_scalar::<f32>();
        // The valid convolution keeps the pixels whose window lies inside the image.
        let d = ssim_dissimilarity(&a, &b, h, w, 1.0);
        let r = SSIM_RADIUS;
        let inner: Vec<f32> =
            (r..h - r).flat_map(|y| (r..w - r).map(move |x| (y, x))).map(|(y, x)| 1.0 - d[y * w + x]).collect();
        let want = inner.iter().sum::<f32>() / inner.len() as f32;
        assert!((got - want).abs() < 1e-4, "burn {got}, scoring path {want}");
    }
}
