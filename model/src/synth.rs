//! A procedural data set of textured surfaces with defects, in MVTec AD layout with masks.
//!
//! Normal images are brushed-metal-like surfaces: a per-image brightness, a low-frequency
//! shading field, directional streaks at a slightly varying angle, and sensor grain, so a
//! model has real variation to learn. Defects are the kinds seen on such parts: scratches,
//! spots (stains, dents), cracks, and missing areas (chips). Everything is derived from
//! the seed, so the same command writes the same files on any machine. Tests, CI, the
//! shipped default model and `vigil demo` all use it; no real data is committed.

use std::path::{Path, PathBuf};

use image::{GrayImage, ImageBuffer, Luma, Rgb, RgbImage};
use serde::Serialize;

use crate::rng::{Rng, mix};

/// The kinds of defect the generator paints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DefectKind {
    /// A thin straight bright or dark line.
    Scratch,
    /// A soft-edged elliptical stain or dent.
    Spot,
    /// A thin dark meandering line with a branch.
    Crack,
    /// A dark flat region where material is gone.
    Missing,
}

impl DefectKind {
    /// Every kind, in folder order.
    pub const ALL: [DefectKind; 4] = [DefectKind::Scratch, DefectKind::Spot, DefectKind::Crack, DefectKind::Missing];

    /// The folder name under `test/` and `ground_truth/`.
    pub fn name(self) -> &'static str {
        match self {
            DefectKind::Scratch => "scratch",
            DefectKind::Spot => "spot",
            DefectKind::Crack => "crack",
            DefectKind::Missing => "missing",
        }
    }
}

/// A product: what sets one product's normal surface apart from another's on the same line
/// (the brushing direction, the brightness, the coarseness of the texture), so that one data
/// set can hold several products for the conditional families.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Product {
    /// Its folder name.
    pub name: &'static str,
    /// Brushing direction in radians (each image varies it by up to ±0.06).
    pub angle: f32,
    /// The range each image's base brightness is drawn from.
    pub brightness: (f32, f32),
    /// Width of the streaks across the brushing direction, in pixels at 128 px.
    pub streak_width: f32,
}

/// The products the generator knows, the first one the default: the same surface brushed
/// crosswise, darker, and with coarser streaks.
pub const PRODUCTS: [Product; 4] = [
    Product { name: "brushed", angle: 0.3, brightness: (0.45, 0.55), streak_width: 1.7 },
    Product {
        name: "crosswise",
        angle: 0.3 + std::f32::consts::FRAC_PI_2,
        brightness: (0.45, 0.55),
        streak_width: 1.7,
    },
    Product { name: "dark", angle: 0.3, brightness: (0.25, 0.33), streak_width: 1.7 },
    Product { name: "coarse", angle: 0.3, brightness: (0.45, 0.55), streak_width: 5.0 },
];

/// What `vigil-train synth` writes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SynthConfig {
    /// Side of the square images in pixels.
    pub size: u32,
    /// Normal training images.
    pub n_train: usize,
    /// Test images; half are normal, the rest are spread over the defect kinds.
    pub n_test: usize,
    /// RGB (tinted) or gray images.
    pub rgb: bool,
    /// Seed of everything.
    pub seed: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig { size: 256, n_train: 200, n_test: 80, rgb: false, seed: 0 }
    }
}

/// One generated image in float form, channels in [0, 1], row-major `[y][x]`.
struct Canvas {
    size: usize,
    lum: Vec<f32>,
}

/// Smooth value noise at `(x, y)` in lattice units from a seeded hash lattice.
fn value_noise(x: f32, y: f32, seed: u64) -> f32 {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
    let h = |ix: f32, iy: f32| -> f32 {
        let k =
            seed ^ ((ix as i64 as u64).wrapping_mul(0x9E37_79B9)) ^ ((iy as i64 as u64).wrapping_mul(0x85EB_CA6B) << 1);
        (mix(k) >> 40) as f32 / (1u64 << 24) as f32
    };
    let a = h(x0, y0) + (h(x0 + 1.0, y0) - h(x0, y0)) * sx;
    let b = h(x0, y0 + 1.0) + (h(x0 + 1.0, y0 + 1.0) - h(x0, y0 + 1.0)) * sx;
    a + (b - a) * sy
}

impl Canvas {
    /// A normal surface of `product`.
    fn surface(size: usize, product: &Product, rng: &mut Rng) -> Canvas {
        let s = size as f32 / 128.0;
        let base = rng.range(product.brightness.0, product.brightness.1);
        let angle = rng.range(-0.06, 0.06) + product.angle;
        let (ca, sa) = (angle.cos(), angle.sin());
        let (shade_seed, streak_seed, fine_seed) = (rng.next_u64(), rng.next_u64(), rng.next_u64());
        let shade_amp = rng.range(0.06, 0.1);
        let mut lum = vec![0.0; size * size];
        for y in 0..size {
            for x in 0..size {
                let (fx, fy) = (x as f32 / s, y as f32 / s);
                let shade = value_noise(fx / 40.0, fy / 40.0, shade_seed) - 0.5;
                // Streaks: noise that varies fast across the brushing direction, slowly along it.
                let across = fx * -sa + fy * ca;
                let along = fx * ca + fy * sa;
                let streak = value_noise(across / product.streak_width, along / 60.0, streak_seed) - 0.5;
                let fine = value_noise(fx / 6.0, fy / 6.0, fine_seed) - 0.5;
                let grain = rng.normal() * 0.015;
                lum[y * size + x] = base + shade_amp * shade + 0.09 * streak + 0.03 * fine + grain;
            }
        }
        Canvas { size, lum }
    }

    fn add(&mut self, x: usize, y: usize, v: f32) {
        let i = y * self.size + x;
        self.lum[i] += v;
    }
}

/// Distance from `p` to the segment `a`–`b`.
fn segment_distance(p: (f32, f32), a: (f32, f32), b: (f32, f32)) -> f32 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 { (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0) } else { 0.0 };
    let (qx, qy) = (a.0 + t * dx - p.0, a.1 + t * dy - p.1);
    (qx * qx + qy * qy).sqrt()
}

/// Paints a polyline of `width` pixels with intensity `delta`, marking the mask.
fn paint_polyline(c: &mut Canvas, mask: &mut [bool], pts: &[(f32, f32)], width: f32, delta: f32) {
    let n = c.size;
    for seg in pts.windows(2) {
        let (a, b) = (seg[0], seg[1]);
        let pad = width + 2.0;
        let (x0, x1) = ((a.0.min(b.0) - pad).max(0.0) as usize, ((a.0.max(b.0) + pad) as usize).min(n - 1));
        let (y0, y1) = ((a.1.min(b.1) - pad).max(0.0) as usize, ((a.1.max(b.1) + pad) as usize).min(n - 1));
        for y in y0..=y1 {
            for x in x0..=x1 {
                let d = segment_distance((x as f32, y as f32), a, b);
                if d < width + 1.0 {
                    let i = y * n + x;
                    if !mask[i] {
                        let w = if d <= width { 1.0 } else { width + 1.0 - d };
                        c.lum[i] += delta * w;
                    }
                    if d <= width + 0.5 {
                        mask[i] = true;
                    }
                }
            }
        }
    }
}

fn random_point(rng: &mut Rng, size: usize, margin: f32) -> (f32, f32) {
    let m = size as f32 * margin;
    (rng.range(m, size as f32 - m), rng.range(m, size as f32 - m))
}

/// Paints one defect of `kind` and returns its mask.
fn paint_defect(c: &mut Canvas, kind: DefectKind, rng: &mut Rng) -> Vec<bool> {
    let n = c.size;
    let s = n as f32 / 128.0;
    let mut mask = vec![false; n * n];
    let sign = if rng.uniform() < 0.5 { -1.0 } else { 1.0 };
    match kind {
        DefectKind::Scratch => {
            let a = random_point(rng, n, 0.2);
            let phi = rng.range(0.0, std::f32::consts::PI);
            let len = rng.range(0.2, 0.45) * n as f32;
            let b = (
                (a.0 + phi.cos() * len).clamp(1.0, n as f32 - 2.0),
                (a.1 + phi.sin() * len).clamp(1.0, n as f32 - 2.0),
            );
            paint_polyline(c, &mut mask, &[a, b], rng.range(0.5, 1.1) * s, sign * rng.range(0.22, 0.35));
        }
        DefectKind::Crack => {
            let mut p = random_point(rng, n, 0.25);
            let mut dir = rng.range(0.0, std::f32::consts::TAU);
            let mut pts = vec![p];
            let steps = (rng.range(0.25, 0.4) * n as f32 / (3.0 * s)) as usize;
            let mut branch = None;
            for i in 0..steps {
                dir += rng.range(-0.5, 0.5);
                p = (
                    (p.0 + dir.cos() * 3.0 * s).clamp(1.0, n as f32 - 2.0),
                    (p.1 + dir.sin() * 3.0 * s).clamp(1.0, n as f32 - 2.0),
                );
                pts.push(p);
                if i == steps / 2 {
                    branch = Some((p, dir + rng.range(0.6, 1.2)));
                }
            }
            let width = rng.range(0.4, 0.8) * s;
            paint_polyline(c, &mut mask, &pts, width, -rng.range(0.3, 0.4));
            if let Some((mut q, mut d)) = branch {
                let mut bpts = vec![q];
                for _ in 0..steps / 3 {
                    d += rng.range(-0.5, 0.5);
                    q = (
                        (q.0 + d.cos() * 3.0 * s).clamp(1.0, n as f32 - 2.0),
                        (q.1 + d.sin() * 3.0 * s).clamp(1.0, n as f32 - 2.0),
                    );
                    bpts.push(q);
                }
                paint_polyline(c, &mut mask, &bpts, width * 0.8, -rng.range(0.25, 0.35));
            }
        }
        DefectKind::Spot => {
            let (cx, cy) = random_point(rng, n, 0.15);
            let (r1, r2) = (rng.range(0.03, 0.07) * n as f32, rng.range(0.03, 0.07) * n as f32);
            let rot = rng.range(0.0, std::f32::consts::PI);
            let delta = sign * rng.range(0.18, 0.3);
            let (cr, sr) = (rot.cos(), rot.sin());
            for y in 0..n {
                for x in 0..n {
                    let (dx, dy) = (x as f32 - cx, y as f32 - cy);
                    let (u, v) = ((dx * cr + dy * sr) / r1, (-dx * sr + dy * cr) / r2);
                    let r = (u * u + v * v).sqrt();
                    if r < 1.3 {
                        // Soft edge: full inside 0.7, fading to nothing at 1.3.
                        let w = ((1.3 - r) / 0.6).clamp(0.0, 1.0);
                        c.add(x, y, delta * w);
                        if r <= 1.0 {
                            mask[y * n + x] = true;
                        }
                    }
                }
            }
        }
        DefectKind::Missing => {
            let (cx, cy) = random_point(rng, n, 0.15);
            let corners = 5 + rng.below(3);
            let radius: Vec<f32> = (0..corners).map(|_| rng.range(0.05, 0.1) * n as f32).collect();
            let offset = rng.range(0.0, std::f32::consts::TAU);
            let level = rng.range(0.05, 0.12);
            for y in 0..n {
                for x in 0..n {
                    let (dx, dy) = (x as f32 - cx, y as f32 - cy);
                    let ang = (dy.atan2(dx) - offset).rem_euclid(std::f32::consts::TAU);
                    let t = ang / std::f32::consts::TAU * corners as f32;
                    let (i0, f) = (t.floor() as usize % corners, t.fract());
                    let r = radius[i0] * (1.0 - f) + radius[(i0 + 1) % corners] * f;
                    if (dx * dx + dy * dy).sqrt() <= r {
                        let i = y * n + x;
                        c.lum[i] = level + rng.normal() * 0.01;
                        mask[i] = true;
                    }
                }
            }
        }
    }
    mask
}

/// An image (and, for a defect, its mask) as the generator makes them for `seed`, of the
/// default product.
pub fn sample(size: u32, rgb: bool, defect: Option<DefectKind>, seed: u64) -> (image::DynamicImage, Option<GrayImage>) {
    sample_product(&PRODUCTS[0], size, rgb, defect, seed)
}

/// An image (and, for a defect, its mask) of `product` for `seed`.
pub fn sample_product(
    product: &Product,
    size: u32,
    rgb: bool,
    defect: Option<DefectKind>,
    seed: u64,
) -> (image::DynamicImage, Option<GrayImage>) {
    let mut rng = Rng::new(mix(seed ^ 0x5EED));
    let n = size as usize;
    let mut canvas = Canvas::surface(n, product, &mut rng);
    let mask = defect.map(|k| paint_defect(&mut canvas, k, &mut rng));
    let to_u8 = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    let img = if rgb {
        // A warm, slightly varying tint, like machined brass under plant lighting.
        let tint = [1.0, rng.range(0.88, 0.92), rng.range(0.72, 0.78)];
        let buf: RgbImage = ImageBuffer::from_fn(size, size, |x, y| {
            let v = canvas.lum[y as usize * n + x as usize];
            Rgb([to_u8(v * tint[0] + 0.05), to_u8(v * tint[1] + 0.05), to_u8(v * tint[2] + 0.05)])
        });
        image::DynamicImage::ImageRgb8(buf)
    } else {
        let buf: GrayImage =
            ImageBuffer::from_fn(size, size, |x, y| Luma([to_u8(canvas.lum[y as usize * n + x as usize])]));
        image::DynamicImage::ImageLuma8(buf)
    };
    let mask = mask
        .map(|m| ImageBuffer::from_fn(size, size, |x, y| Luma([if m[y as usize * n + x as usize] { 255 } else { 0 }])));
    (img, mask)
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SynthSummary {
    /// The settings used.
    pub config: SynthConfig,
    /// The product's name.
    pub product: &'static str,
    /// The output folder.
    pub root: PathBuf,
    /// Normal training images written.
    pub train_good: usize,
    /// Normal test images written.
    pub test_good: usize,
    /// Defective test images written per kind.
    pub test_defects: Vec<(DefectKind, usize)>,
}

/// Writes the data set of the default product in MVTec AD layout: `train/good/`,
/// `test/good/`, `test/<kind>/`, `ground_truth/<kind>/<stem>_mask.png`, and `synth.json` with
/// the settings.
pub fn generate(root: &Path, cfg: &SynthConfig) -> std::io::Result<SynthSummary> {
    generate_product(root, cfg, &PRODUCTS[0])
}

/// Writes the first `count` products' data sets, one MVTec-layout folder each under `root`
/// (`root/<product>/`), each from its own seed (`cfg.seed` + its index).
pub fn generate_products(root: &Path, cfg: &SynthConfig, count: usize) -> std::io::Result<Vec<SynthSummary>> {
    if count == 0 || count > PRODUCTS.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("products must be 1 to {} (the generator knows {})", PRODUCTS.len(), PRODUCTS.len()),
        ));
    }
    PRODUCTS[..count]
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let cfg = SynthConfig { seed: cfg.seed.wrapping_add(i as u64), ..cfg.clone() };
            generate_product(&root.join(p.name), &cfg, p)
        })
        .collect()
}

/// Writes one product's data set in MVTec AD layout (as [`generate`]).
pub fn generate_product(root: &Path, cfg: &SynthConfig, product: &Product) -> std::io::Result<SynthSummary> {
    let io = |e: image::ImageError| std::io::Error::other(e.to_string());
    let save = |dir: PathBuf, name: &str, img: &image::DynamicImage| -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        img.save(dir.join(name)).map_err(io)
    };
    let seed_of = |split: u64, i: usize| mix(cfg.seed.wrapping_mul(0x1000_0000_01B3) ^ (split << 48) ^ i as u64);
    for i in 0..cfg.n_train {
        let (img, _) = sample_product(product, cfg.size, cfg.rgb, None, seed_of(1, i));
        save(root.join("train/good"), &format!("{i:04}.png"), &img)?;
    }
    let test_good = cfg.n_test.div_ceil(2);
    for i in 0..test_good {
        let (img, _) = sample_product(product, cfg.size, cfg.rgb, None, seed_of(2, i));
        save(root.join("test/good"), &format!("{i:04}.png"), &img)?;
    }
    let defective = cfg.n_test - test_good;
    let mut counts = vec![];
    for (k, kind) in DefectKind::ALL.iter().enumerate() {
        let count = defective / 4 + usize::from(k < defective % 4);
        for i in 0..count {
            let (img, mask) = sample_product(product, cfg.size, cfg.rgb, Some(*kind), seed_of(3 + k as u64, i));
            save(root.join("test").join(kind.name()), &format!("{i:04}.png"), &img)?;
            let mask = image::DynamicImage::ImageLuma8(mask.expect("defects have masks"));
            save(root.join("ground_truth").join(kind.name()), &format!("{i:04}_mask.png"), &mask)?;
        }
        counts.push((*kind, count));
    }
    let summary = SynthSummary {
        config: cfg.clone(),
        product: product.name,
        root: root.to_path_buf(),
        train_good: cfg.n_train,
        test_good,
        test_defects: counts,
    };
    std::fs::write(root.join("synth.json"), serde_json::to_vec_pretty(&summary).map_err(std::io::Error::other)?)?;
    Ok(summary)
}
