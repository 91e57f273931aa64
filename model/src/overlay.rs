//! Heatmap overlays: an anomaly map drawn over its frame, for snapshots and reports.

use image::{Rgb, RgbImage, imageops::FilterType};

/// The heat ramp for `t` in [0, 1]: plum, crimson, orange, yellow. Its lightness rises with
/// `t` (the order reads without colour vision, and in print), and every step is strongly
/// coloured, so it stands apart from gray, black and metallic parts, where the earlier blue
/// and green low end blended into the part.
pub fn heat_color(t: f32) -> [u8; 3] {
    let t = t.clamp(0.0, 1.0);
    const STOPS: [[f32; 3]; 4] = [[0.50, 0.10, 0.55], [0.85, 0.12, 0.30], [1.0, 0.55, 0.0], [1.0, 0.95, 0.25]];
    let x = t * 3.0;
    let i = (x.floor() as usize).min(2);
    let f = x - i as f32;
    let c: Vec<u8> = (0..3).map(|k| ((STOPS[i][k] * (1.0 - f) + STOPS[i + 1][k] * f) * 255.0).round() as u8).collect();
    [c[0], c[1], c[2]]
}

/// How much of the heat colour covers the frame at `t` in (0, 1]: enough at the low end to be
/// seen on any part, never so much that the part under a defect disappears.
fn opacity(t: f32) -> f32 {
    0.35 + 0.4 * t
}

/// Draws `map` (`h x w`, row-major) over `frame`, resized to the frame. Values at or below
/// `low` are not drawn (the frame shows through); values from `low` to `high` follow
/// [`heat_color`] at 35 to 75 % opacity, so a normal frame stays readable and a defect stands
/// out.
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
        let a = opacity(t);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lightness(c: [u8; 3]) -> f32 {
        0.2126 * c[0] as f32 + 0.7152 * c[1] as f32 + 0.0722 * c[2] as f32
    }

    #[test]
    fn the_ramp_grows_lighter_and_stays_coloured_over_gray_parts() {
        let ramp: Vec<[u8; 3]> = (0..=30).map(|i| heat_color(i as f32 / 30.0)).collect();
        for pair in ramp.windows(2) {
            assert!(lightness(pair[1]) >= lightness(pair[0]) - 0.5, "{pair:?} grows darker");
        }
        // Over dark, mid and light gray, even the faintest heat is clearly coloured.
        for gray in [40u8, 128, 210] {
            let frame = RgbImage::from_pixel(4, 4, Rgb([gray; 3]));
            for t in [0.05f32, 0.5, 1.0] {
                let out = overlay(&frame, &[t; 4], 2, 2, 0.0, 1.0);
                let p = out.get_pixel(1, 1).0;
                let chroma = p.iter().max().unwrap() - p.iter().min().unwrap();
                assert!(chroma >= 40, "t = {t} over gray {gray} gives {p:?}: too close to gray");
            }
        }
    }
}
