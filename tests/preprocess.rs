//! Preprocessing gives the model the pixels a Pillow script would (the peer every user
//! compares against), through the SIMD resize, for every colour and crop path.

use std::path::Path;
use std::process::Command;

use vigil_model::bundle::manifest::{ColorMode, InputSpec, ResizeMode};
use vigil_model::preprocess::{Preprocessor, decode};

use crate::common::{python, write_png};

/// Pillow's `resize(BILINEAR)` of `path` (after an optional centre `crop`), as [C, H, W]
/// values in [0, 1].
fn pillow(path: &Path, mode: &str, size: (u32, u32), crop: Option<(u32, u32, u32, u32)>) -> Vec<f32> {
    let crop = crop.map_or("None".to_string(), |(x, y, w, h)| format!("({x}, {y}, {}, {})", x + w, y + h));
    let script = format!(
        "import sys, numpy as np\nfrom PIL import Image\n\
         im = Image.open(sys.argv[1]).convert('{mode}')\nc = {crop}\n\
         im = im.crop(c) if c else im\n\
         a = np.asarray(im.resize(({w}, {h}), Image.BILINEAR), dtype=np.float32) / 255.0\n\
         a = a.reshape({h}, {w}, -1).transpose(2, 0, 1)\nsys.stdout.buffer.write(a.astype('<f4').tobytes())\n",
        w = size.0,
        h = size.1,
    );
    let out = Command::new(python()).arg("-c").arg(script).arg(path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

fn ours(path: &Path, spec: &InputSpec) -> Vec<f32> {
    let img = decode(&std::fs::read(path).unwrap()).unwrap();
    Preprocessor::new(spec).tensor(&img).into_iter().collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn rgb_downscale_matches_pillow_bilinear_within_one_level() {
    let dir = tempfile::tempdir().unwrap();
    let png = write_png(dir.path(), "frame.png", 640, 480, true, 7);
    let spec = InputSpec::unit_range("input", ColorMode::Rgb, 128, 128);
    let d = max_diff(&ours(&png, &spec), &pillow(&png, "RGB", (128, 128), None));
    assert!(d <= 1.5 / 255.0, "largest difference from Pillow {:.2} levels", d * 255.0);
}

#[test]
fn center_crop_then_resize_matches_pillow_crop_then_resize() {
    let dir = tempfile::tempdir().unwrap();
    let png = write_png(dir.path(), "wide.png", 300, 100, true, 8);
    let mut spec = InputSpec::unit_range("input", ColorMode::Rgb, 160, 160);
    spec.resize_mode = ResizeMode::CenterCrop;
    let pre = Preprocessor::new(&spec);
    let rect = pre.crop_rect(300, 100);
    assert_eq!(rect, (100, 0, 100, 100));
    // Centre crop, then upscale.
    let d = max_diff(&ours(&png, &spec), &pillow(&png, "RGB", (160, 160), Some(rect)));
    assert!(d <= 1.5 / 255.0, "crop and upscale: largest difference from Pillow {:.2} levels", d * 255.0);
    // Centre crop, then downscale: the filter stops at the crop's edges.
    let mut down = spec.clone();
    (down.height, down.width) = (50, 50);
    let d = max_diff(&ours(&png, &down), &pillow(&png, "RGB", (50, 50), Some(rect)));
    assert!(d <= 1.5 / 255.0, "crop and downscale: largest difference from Pillow {:.2} levels", d * 255.0);
}

#[test]
fn a_frame_of_the_input_size_is_taken_pixel_for_pixel_with_its_normalisation() {
    let dir = tempfile::tempdir().unwrap();
    let png = write_png(dir.path(), "exact.png", 64, 48, true, 9);
    let mut spec = InputSpec::unit_range("input", ColorMode::Rgb, 48, 64);
    spec.mean = vec![0.5, 0.4, 0.3];
    spec.std = vec![0.2, 0.25, 0.5];
    let rgb = image::open(&png).unwrap().to_rgb8();
    let t = ours(&png, &spec);
    for (i, p) in rgb.pixels().enumerate() {
        for c in 0..3 {
            let want = (p.0[c] as f32 / 255.0 - spec.mean[c]) / spec.std[c];
            assert!((t[c * 64 * 48 + i] - want).abs() < 1e-5, "pixel {i} channel {c}");
        }
    }
}

#[test]
fn gray_models_get_luma_and_rgb_models_get_gray_frames_on_every_channel() {
    let dir = tempfile::tempdir().unwrap();
    let rgb_png = write_png(dir.path(), "rgb.png", 200, 150, true, 10);
    let gray_png = write_png(dir.path(), "gray.png", 200, 150, false, 11);
    let gray_spec = InputSpec::unit_range("input", ColorMode::Gray, 64, 64);
    let rgb_spec = InputSpec::unit_range("input", ColorMode::Rgb, 64, 64);
    // A gray frame is the same to a gray model whether it comes as gray or as RGB.
    let as_gray = ours(&gray_png, &gray_spec);
    let gray = image::open(&gray_png).unwrap().to_rgb8();
    let rgb_copy = dir.path().join("gray-as-rgb.png");
    gray.save(&rgb_copy).unwrap();
    assert!(max_diff(&as_gray, &ours(&rgb_copy, &gray_spec)) <= 1.0 / 255.0);
    // An RGB model given a gray frame sees it on all three channels.
    let t = ours(&gray_png, &rgb_spec);
    assert_eq!(t.len(), 3 * 64 * 64);
    assert_eq!(&t[..4096], &t[4096..8192]);
    assert_eq!(&t[..4096], &t[8192..]);
    assert!(max_diff(&t[..4096], &as_gray) == 0.0);
    // A colour frame to a gray model: one channel, in range, not constant.
    let g = ours(&rgb_png, &gray_spec);
    assert_eq!(g.len(), 4096);
    assert!(g.iter().all(|v| (0.0..=1.0).contains(v)));
    assert!(g.iter().any(|&v| v != g[0]));
}

/// A camera-like JPEG: smooth gradients and edges, not noise.
fn write_jpeg(dir: &Path, name: &str, w: u32, h: u32) -> std::path::PathBuf {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let edge = if (x * 7 / w + y * 5 / h).is_multiple_of(2) { 60 } else { 0 };
        image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, (((x + y) * 97 / (w + h)) as u8).saturating_add(edge)])
    });
    let path = dir.join(name);
    img.save(&path).unwrap();
    path
}

#[test]
fn a_jpeg_cut_short_is_refused_not_scored_with_its_missing_half_filled_in() {
    let dir = tempfile::tempdir().unwrap();
    let pre = Preprocessor::new(&InputSpec::unit_range("input", ColorMode::Rgb, 128, 128));
    let whole = std::fs::read(write_jpeg(dir.path(), "whole.jpg", 640, 480)).unwrap();
    assert!(pre.inputs_from_bytes(&whole).is_ok());
    for cut in [whole.len() / 3, whole.len() - 2] {
        let err = pre.inputs_from_bytes(&whole[..cut]).unwrap_err();
        assert!(matches!(err, vigil_model::preprocess::PreprocessError::Corrupt(_)), "{err}");
        assert!(err.to_string().contains("cut short"), "{err}");
    }
    // Bytes after the end marker (camera trailers, padding) are tolerated, however many.
    for trailer in [vec![0u8; 512], vec![0x5A; 20_000]] {
        let padded = [whole.as_slice(), &trailer].concat();
        assert!(pre.inputs_from_bytes(&padded).is_ok());
    }
}
