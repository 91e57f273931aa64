//! Small charts drawn straight into images (no plotting dependency): line charts and score
//! histograms, for evaluation reports and the training loss curves.

use image::{Rgb, RgbImage};

pub(crate) const W: u32 = 480;
pub(crate) const H: u32 = 360;
const MARGIN: u32 = 30;
const COLORS: [[u8; 3]; 6] =
    [[31, 119, 180], [214, 39, 40], [44, 160, 44], [255, 127, 14], [148, 103, 189], [23, 190, 207]];

fn canvas() -> RgbImage {
    let mut img = RgbImage::from_pixel(W, H, Rgb([255, 255, 255]));
    // Grid at quarters, then the frame.
    for q in 0..=4 {
        let x = MARGIN + q * (W - 2 * MARGIN) / 4;
        let y = MARGIN + q * (H - 2 * MARGIN) / 4;
        let shade = if q == 0 || q == 4 { [0, 0, 0] } else { [225, 225, 225] };
        for t in MARGIN..=H - MARGIN {
            img.put_pixel(x, t, Rgb(shade));
        }
        for t in MARGIN..=W - MARGIN {
            img.put_pixel(t, y, Rgb(shade));
        }
    }
    img
}

fn to_px(x: f64, y: f64, xr: (f64, f64), yr: (f64, f64)) -> (f64, f64) {
    let fx = (x - xr.0) / (xr.1 - xr.0).max(f64::EPSILON);
    let fy = (y - yr.0) / (yr.1 - yr.0).max(f64::EPSILON);
    (MARGIN as f64 + fx * (W - 2 * MARGIN) as f64, (H - MARGIN) as f64 - fy * (H - 2 * MARGIN) as f64)
}

fn dot(img: &mut RgbImage, x: f64, y: f64, c: [u8; 3]) {
    for dx in -1i32..=1 {
        for dy in -1i32..=1 {
            let (px, py) = (x.round() as i32 + dx, y.round() as i32 + dy);
            if px >= 0 && py >= 0 && (px as u32) < W && (py as u32) < H {
                img.put_pixel(px as u32, py as u32, Rgb(c));
            }
        }
    }
}

fn line(img: &mut RgbImage, a: (f64, f64), b: (f64, f64), c: [u8; 3]) {
    let n = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as usize).max(1);
    for i in 0..=n {
        let t = i as f64 / n as f64;
        dot(img, a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t, c);
    }
}

/// A line chart of several series over shared ranges.
pub fn line_chart(series: &[Vec<(f64, f64)>], xr: (f64, f64), yr: (f64, f64)) -> RgbImage {
    let mut img = canvas();
    for (i, s) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        for w in s.windows(2) {
            line(&mut img, to_px(w[0].0, w[0].1, xr, yr), to_px(w[1].0, w[1].1, xr, yr), c);
        }
        if let [only] = s.as_slice() {
            let p = to_px(only.0, only.1, xr, yr);
            dot(&mut img, p.0, p.1, c);
        }
    }
    img
}

/// Histogram of normal (blue) and defective (red) scores with the threshold (black line).
pub fn histogram(normal: &[f32], defect: &[f32], threshold: f32) -> RgbImage {
    let all = normal.iter().chain(defect).chain(std::iter::once(&threshold));
    let (lo, hi) = all.fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| (a.min(*v), b.max(*v)));
    let bins = 40usize;
    let count = |v: &[f32]| {
        let mut c = vec![0usize; bins];
        for x in v {
            let i = (((x - lo) / (hi - lo).max(f32::EPSILON)) * bins as f32) as usize;
            c[i.min(bins - 1)] += 1;
        }
        c
    };
    let (cn, cd) = (count(normal), count(defect));
    let top = cn.iter().chain(&cd).copied().max().unwrap_or(1).max(1) as f64;
    let mut img = canvas();
    let bw = (W - 2 * MARGIN) as f64 / bins as f64;
    for (counts, color, offset) in [(&cn, [31, 119, 180], 0.0), (&cd, [214, 39, 40], 0.5)] {
        for (i, c) in counts.iter().enumerate() {
            let height = (*c as f64 / top) * (H - 2 * MARGIN) as f64;
            let x0 = MARGIN as f64 + i as f64 * bw + offset * bw;
            for x in x0 as u32..(x0 + bw / 2.0).max(x0 + 1.0) as u32 {
                for y in ((H - MARGIN) as f64 - height) as u32..H - MARGIN {
                    img.put_pixel(x.min(W - 1), y, Rgb(color));
                }
            }
        }
    }
    let tx = MARGIN as f64 + ((threshold - lo) / (hi - lo).max(f32::EPSILON)) as f64 * (W - 2 * MARGIN) as f64;
    line(&mut img, (tx, MARGIN as f64), (tx, (H - MARGIN) as f64), [0, 0, 0]);
    img
}
