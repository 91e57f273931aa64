//! Heatmap overlays: an anomaly map drawn over its frame, for snapshots and reports.

use image::{Rgb, RgbImage, imageops::FilterType};

/// A perceptually ordered blue–green–yellow–red ramp for `t` in [0, 1].
pub fn heat_color(t: f32) -> [u8; 3] {
    let t = t.clamp(0.0, 1.0);
    // Piecewise-linear through blue, cyan, green, yellow, red.
    const STOPS: [[f32; 3]; 5] = [[0.0, 0.0, 0.6], [0.0, 0.7, 1.0], [0.1, 0.8, 0.2], [1.0, 0.9, 0.0], [0.9, 0.0, 0.0]];
    let x = t * 4.0;
    let i = (x.floor() as usize).min(3);
    let f = x - i as f32;
    let c: Vec<u8> = (0..3).map(|k| ((STOPS[i][k] * (1.0 - f) + STOPS[i + 1][k] * f) * 255.0).round() as u8).collect();
    [c[0], c[1], c[2]]
}

/// Draws `map` (`h x w`, row-major) over `frame`, resized to the frame. Values at or below
/// `low` are not drawn (the frame shows through); values from `low` to `high` ramp from blue
/// to red at 60 % opacity, so a normal frame stays readable and a defect stands out.
pub fn overlay(frame: &RgbImage, map: &[f32], h: usize, w: usize, low: f32, high: f32) -> RgbImage {
    let span = (high - low).max(f32::EPSILON);
    let small = image::ImageBuffer::from_fn(w as u32, h as u32, |x, y| {
        let v = ((map[y as usize * w + x as usize] - low) / span).clamp(0.0, 1.0);
        image::Luma([v])
    });
    let big = image::imageops::resize(&small, frame.width(), frame.height(), FilterType::Triangle);
    let mut out = frame.clone();
    for (p, v) in out.pixels_mut().zip(big.pixels()) {
        let t = v.0[0];
        if t <= 0.0 {
            continue;
        }
        let c = heat_color(t);
        let a = 0.6 * t.sqrt();
        for (channel, heat) in p.0.iter_mut().zip(c) {
            *channel = (*channel as f32 * (1.0 - a) + heat as f32 * a).round() as u8;
        }
    }
    out
}

/// Draws a rectangle outline (a detected region) in `color`, `thickness` pixels wide.
pub fn draw_box(img: &mut RgbImage, x0: u32, y0: u32, x1: u32, y1: u32, color: [u8; 3], thickness: u32) {
    let (w, h) = (img.width(), img.height());
    for t in 0..thickness {
        for x in x0..=x1.min(w - 1) {
            for y in [y0 + t, y1.saturating_sub(t)] {
                if y < h {
                    img.put_pixel(x, y, Rgb(color));
                }
            }
        }
        for y in y0..=y1.min(h - 1) {
            for x in [x0 + t, x1.saturating_sub(t)] {
                if x < w {
                    img.put_pixel(x, y, Rgb(color));
                }
            }
        }
    }
}
