//! Synthetic defects for training the autoencoders (the "noise" of the denoising
//! autoencoder): blobs of foreign texture, intensity changes and scratches pasted onto
//! normal images, which the network learns to remove. A real defect then stands out in the
//! difference between an image and its reconstruction, where Gaussian noise teaches the
//! network only to blur.
//!
//! The blobs are thresholded smooth noise (two octaves of a bilinearly interpolated random
//! grid, in the manner of Perlin noise), filled with another training image (flipped and
//! moved), a smooth random texture, or the image itself made brighter or darker, blended
//! with a random opacity. Scratches are thin straight segments, mostly dark (as cracks are).
//! Everything is drawn from the caller's seeded generator, so a run is reproducible.

use vigil_model::rng::Rng;

/// Share of the images in a batch that get defects; the rest teach the network to leave
/// normal images as they are.
pub const SHARE: f32 = 0.7;

/// Returns a copy of the `[B, C, H, W]` batch `data` (values in [0, 1]) with synthetic
/// defects on about [`SHARE`] of its images.
pub fn corrupt_batch(data: &[f32], [b, c, h, w]: [usize; 4], rng: &mut Rng) -> Vec<f32> {
    let mut out = data.to_vec();
    let plane = h * w;
    let image = c * plane;
    for i in 0..b {
        if rng.uniform() >= SHARE {
            continue;
        }
        let at = i * image;
        let mask = blob_mask(h, w, rng);
        let fill = match rng.below(3) {
            // Another image of the batch, mirrored and moved: foreign but plausible texture.
            0 if b > 1 => {
                let j = (i + 1 + rng.below(b - 1)) % b;
                let dy = rng.below(h);
                let src = &data[j * image..(j + 1) * image];
                let mut f = vec![0f32; image];
                for ch in 0..c {
                    for y in 0..h {
                        for x in 0..w {
                            f[ch * plane + y * w + x] = src[ch * plane + ((y + dy) % h) * w + (w - 1 - x)];
                        }
                    }
                }
                f
            }
            // A smooth random texture around a random level.
            1 => {
                let level = rng.uniform();
                let mut f = vec![0f32; image];
                for ch in 0..c {
                    let mut t: Vec<f32> = (0..plane).map(|_| rng.uniform()).collect();
                    blur(&mut t, h, w);
                    let mean = t.iter().sum::<f32>() / plane as f32;
                    for (o, v) in f[ch * plane..(ch + 1) * plane].iter_mut().zip(&t) {
                        *o = ((v - mean) * 4.0 + level).clamp(0.0, 1.0);
                    }
                }
                f
            }
            // The image itself, brighter or darker.
            _ => {
                let delta = rng.range(-0.3, 0.3);
                data[at..at + image].iter().map(|v| (v + delta).clamp(0.0, 1.0)).collect()
            }
        };
        let opacity = rng.range(0.3, 1.0);
        for ch in 0..c {
            for p in 0..plane {
                let a = opacity * mask[p];
                let k = at + ch * plane + p;
                out[k] = out[k] * (1.0 - a) + fill[ch * plane + p] * a;
            }
        }
        scratches(&mut out[at..at + image], c, h, w, rng);
    }
    out
}

/// A 0/1 mask of smooth blobs covering, on average, a tenth to a third of the image.
fn blob_mask(h: usize, w: usize, rng: &mut Rng) -> Vec<f32> {
    let res = [2usize, 4, 8, 16][rng.below(4)].min(h.min(w) / 2).max(1);
    let coarse = Grid::new(res, rng);
    let fine = Grid::new(2 * res, rng);
    let threshold = rng.range(0.9, 1.5);
    let mut m = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            let (u, v) = (x as f32 / w as f32, y as f32 / h as f32);
            let n = coarse.at(u, v) + 0.5 * fine.at(u, v);
            m[y * w + x] = if n > threshold { 1.0 } else { 0.0 };
        }
    }
    m
}

/// Random normal values on a `(res + 1)²` lattice, read with bilinear interpolation.
struct Grid {
    res: usize,
    values: Vec<f32>,
}

impl Grid {
    fn new(res: usize, rng: &mut Rng) -> Grid {
        Grid { res, values: (0..(res + 1) * (res + 1)).map(|_| rng.normal()).collect() }
    }

    /// The value at `(u, v)` in [0, 1)².
    fn at(&self, u: f32, v: f32) -> f32 {
        let (gx, gy) = (u * self.res as f32, v * self.res as f32);
        let (x0, y0) = (gx.floor() as usize, gy.floor() as usize);
        let (fx, fy) = (gx - x0 as f32, gy - y0 as f32);
        let n = self.res + 1;
        let g = |x: usize, y: usize| self.values[y.min(self.res) * n + x.min(self.res)];
        let top = g(x0, y0) * (1.0 - fx) + g(x0 + 1, y0) * fx;
        let bottom = g(x0, y0 + 1) * (1.0 - fx) + g(x0 + 1, y0 + 1) * fx;
        top * (1.0 - fy) + bottom * fy
    }
}

/// Up to three thin straight segments, dark (like cracks) or bright, in every channel.
fn scratches(img: &mut [f32], c: usize, h: usize, w: usize, rng: &mut Rng) {
    let scale = h.min(w) as f32 / 128.0;
    for k in 0..3 {
        if rng.uniform() >= if k == 0 { 0.6 } else { 0.3 } {
            continue;
        }
        let (x0, y0) = (rng.uniform() * w as f32, rng.uniform() * h as f32);
        let angle = rng.uniform() * std::f32::consts::PI;
        let length = rng.range(10.0, 90.0) * scale;
        let (dx, dy) = (angle.cos() * length, angle.sin() * length);
        let width = rng.range(0.5, 2.0) * scale.max(0.5);
        let value = if rng.uniform() < 0.7 { rng.range(0.0, 0.2) } else { rng.range(0.6, 1.0) };
        let len2 = dx * dx + dy * dy;
        for y in 0..h {
            for x in 0..w {
                let (px, py) = (x as f32 - x0, y as f32 - y0);
                let t = ((px * dx + py * dy) / len2).clamp(0.0, 1.0);
                let (ex, ey) = (px - t * dx, py - t * dy);
                if ex * ex + ey * ey < width * width {
                    for ch in 0..c {
                        img[ch * h * w + y * w + x] = value;
                    }
                }
            }
        }
    }
}

/// Gaussian blur with sigma 1 (a 7-tap separable kernel), edges repeated.
fn blur(t: &mut [f32], h: usize, w: usize) {
    const K: [f32; 7] = [0.0044, 0.054, 0.242, 0.3991, 0.242, 0.054, 0.0044];
    let mut tmp = vec![0f32; t.len()];
    for y in 0..h {
        for x in 0..w {
            tmp[y * w + x] = (0..7).map(|i| K[i] * t[y * w + (x + i).saturating_sub(3).min(w - 1)]).sum();
        }
    }
    for y in 0..h {
        for x in 0..w {
            t[y * w + x] = (0..7).map(|i| K[i] * tmp[(y + i).saturating_sub(3).min(h - 1) * w + x]).sum();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defects_are_local_reproducible_and_in_range() {
        let (b, c, h, w) = (16, 1, 64, 64);
        let data: Vec<f32> = (0..b * c * h * w).map(|i| 0.3 + 0.4 * ((i % 7) as f32 / 7.0)).collect();
        let a = corrupt_batch(&data, [b, c, h, w], &mut Rng::new(3));
        assert_eq!(a, corrupt_batch(&data, [b, c, h, w], &mut Rng::new(3)));
        assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
        let changed: Vec<f32> = a
            .chunks(c * h * w)
            .zip(data.chunks(c * h * w))
            .map(|(x, y)| x.iter().zip(y).filter(|(p, q)| (*p - *q).abs() > 1e-6).count() as f32 / (h * w) as f32)
            .collect();
        // Some images are left alone, the others change in part, never entirely.
        assert!(changed.contains(&0.0), "{changed:?}");
        assert!(changed.iter().filter(|f| **f > 0.0).count() >= 6, "{changed:?}");
        assert!(changed.iter().all(|f| *f < 0.9), "{changed:?}");
    }
}
