//! Augmentation on the loader thread: flips, brightness and shifts, applied before any
//! corruption so that the network's input and target are the same augmented image.

use vigil_model::rng::Rng;

/// Flips and brightness changes per image, on the loader thread (before any corruption, so
/// the network's input and target are the same augmented image).
pub(super) fn augment_images(data: &mut [f32], [b, c, h, w]: [usize; 4], a: &crate::config::Augment, rng: &mut Rng) {
    let image = c * h * w;
    for img in data.chunks_mut(image).take(b) {
        if a.hflip && rng.uniform() < 0.5 {
            for row in img.chunks_mut(w) {
                row.reverse();
            }
        }
        if a.vflip && rng.uniform() < 0.5 {
            for plane in img.chunks_mut(h * w) {
                for y in 0..h / 2 {
                    let (top, bottom) = plane.split_at_mut((h - 1 - y) * w);
                    top[y * w..(y + 1) * w].swap_with_slice(&mut bottom[..w]);
                }
            }
        }
        if a.brightness > 0.0 {
            let d = rng.range(-a.brightness, a.brightness);
            img.iter_mut().for_each(|v| *v = (*v + d).clamp(0.0, 1.0));
        }
    }
}

/// Moves each image of a `[B, C, H, W]` batch by its own random offset of up to `max` pixels
/// in each direction, repeating the edge pixels into the uncovered border.
pub(super) fn shift_images(data: &mut [f32], [b, c, h, w]: [usize; 4], max: usize, rng: &mut Rng) {
    let span = 2 * max + 1;
    let mut plane = vec![0f32; h * w];
    for i in 0..b {
        let dy = rng.below(span) as isize - max as isize;
        let dx = rng.below(span) as isize - max as isize;
        for ch in 0..c {
            let at = (i * c + ch) * h * w;
            plane.copy_from_slice(&data[at..at + h * w]);
            for y in 0..h {
                let sy = (y as isize - dy).clamp(0, h as isize - 1) as usize;
                for x in 0..w {
                    let sx = (x as isize - dx).clamp(0, w as isize - 1) as usize;
                    data[at + y * w + x] = plane[sy * w + sx];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifted_images_keep_their_content_and_repeat_their_edges() {
        // Two 1x4x4 images holding 0..16 and 100..116.
        let original: Vec<f32> = (0..16).map(|v| v as f32).chain((0..16).map(|v| 100.0 + v as f32)).collect();
        let mut seen_moved = false;
        for seed in 0..20 {
            let mut data = original.clone();
            shift_images(&mut data, [2, 1, 4, 4], 1, &mut Rng::new(seed));
            for (i, img) in data.chunks(16).enumerate() {
                let base = 100.0 * i as f32;
                // Each pixel comes from the same image, at most one pixel away in each direction.
                for (at, v) in img.iter().enumerate() {
                    let src = (v - base) as usize;
                    let (y, x, sy, sx) = (at / 4, at % 4, src / 4, src % 4);
                    assert!(src < 16 && y.abs_diff(sy) <= 1 && x.abs_diff(sx) <= 1, "seed {seed}: {img:?}");
                }
                seen_moved |= img != &original[i * 16..(i + 1) * 16];
            }
        }
        assert!(seen_moved, "no image was ever shifted");
    }
}
