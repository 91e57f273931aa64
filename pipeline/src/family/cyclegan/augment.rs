//! `vigil-train augment`: defective images from normal ones through a trained CycleGAN
//! generator, with a mask where its change is local; and the generator as the DAE's
//! corruption (`corruption = "cyclegan:RUN"`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;
use vigil_model::preprocess::{Preprocessor, decode};

use crate::data::sets::list_images;
use crate::family::cyclegan::config::{CycleConfig, CycleState, GENERATOR, load_config};
use crate::family::cyclegan::nets::Generator;
use crate::run::RunDir;
use crate::run::restore_module;

/// Pixels whose mean change over channels exceeds this (of the full range) are masked.
pub const MASK_LEVEL: f32 = 0.1;
/// A change over more than this share of the image is not local: no mask is written.
pub const MAX_MASK_SHARE: f32 = 0.5;

/// What `augment` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Augmented {
    /// Images written.
    pub images: usize,
    /// Masks written (`OUT/masks/<name>_mask.png`).
    pub masks: usize,
    /// Normal images that could not be read.
    pub skipped: Vec<crate::data::sets::Skipped>,
}

/// The generator of a CycleGAN run, ready to translate images of its size and colour.
pub struct Translator {
    generator: Generator,
    config: CycleConfig,
    channels: usize,
    device: Device,
}

impl Translator {
    /// Loads the normal → defective generator of `run` on the CPU.
    pub fn load(run: &Path) -> anyhow::Result<Translator> {
        Self::load_on(run, &Device::flex())
    }

    /// Loads the normal → defective generator of `run` on `device`.
    pub fn load_on(run: &Path, device: &Device) -> anyhow::Result<Translator> {
        let (generator, config, channels) = load_generator(run, device)?;
        Ok(Translator { generator, config, channels, device: device.clone() })
    }

    /// The images' side and channels the generator was trained on.
    pub fn shape(&self) -> (usize, usize) {
        (self.config.size, self.channels)
    }

    /// Translates unit-range `[B, C, S, S]` images (flat) to unit-range defective ones.
    pub fn translate(&self, x: &[f32], batch: usize) -> Vec<f32> {
        let s = self.config.size;
        let t = Tensor::<4>::from_data(TensorData::new(x.to_vec(), [batch, self.channels, s, s]), &self.device);
        self.translate_tensor(t).into_data().try_to_vec::<f32>().unwrap_or_default()
    }

    /// As [`Self::translate`], for a tensor on the device (unit range in and out, no gradient).
    pub fn translate_tensor(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self.generator.forward(x.detach().mul_scalar(2.0).sub_scalar(1.0));
        y.add_scalar(1.0).mul_scalar(0.5).clamp(0.0, 1.0).detach()
    }
}

/// Writes `n` defective images made from the normal images in `normal` (taken in name order,
/// round again when `n` is larger) into `out`, each the original with the generator's change
/// (computed at the generator's size, scaled to the image's) added; a mask beside it where
/// the change is local.
pub fn augment(run: &Path, normal: &Path, out: &Path, n: usize) -> anyhow::Result<Augmented> {
    let translator = Translator::load(run)?;
    let (s, channels) = translator.shape();
    let pre = Preprocessor::new(&translator.config.input(channels));
    let paths = list_images(normal)?;
    anyhow::ensure!(!paths.is_empty(), "--normal {}: no images", normal.display());
    std::fs::create_dir_all(out.join("masks")).with_context(|| format!("creating {}", out.display()))?;
    let mut done = Augmented { images: 0, masks: 0, skipped: vec![] };
    let bar = crate::family::features::extract::progress(n, "augment");
    let mut i = 0;
    let mut failures = 0;
    while done.images < n {
        let path: &PathBuf = &paths[i % paths.len()];
        i += 1;
        match translate_file(&translator, &pre, path, s, channels) {
            Ok((image, mask)) => {
                let stem = path.file_stem().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                let name = format!("cyclegan-{:04}-{stem}", done.images);
                let file = out.join(format!("{name}.png"));
                image.save(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                if let Some(mask) = mask {
                    let file = out.join("masks").join(format!("{name}_mask.png"));
                    mask.save(&file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                    done.masks += 1;
                }
                done.images += 1;
                bar.inc(1);
            }
            Err(reason) => {
                failures += 1;
                done.skipped.push(crate::data::sets::Skipped { path: path.clone(), reason });
                anyhow::ensure!(failures < paths.len(), "--normal {}: no readable image", normal.display());
            }
        }
    }
    bar.finish_and_clear();
    Ok(done)
}

/// One image through the generator: the result at the image's own size and, when the change
/// is local, its mask.
fn translate_file(
    t: &Translator,
    pre: &Preprocessor,
    path: &Path,
    s: usize,
    channels: usize,
) -> Result<(image::DynamicImage, Option<image::GrayImage>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let original = decode(&bytes).map_err(|e| e.to_string())?;
    let x = pre.inputs(&original).tensors.into_iter().next().ok_or("no input")?.into_raw_vec_and_offset().0;
    let y = t.translate(&x, 1);
    let (w, h) = (original.width(), original.height());
    // The change per channel at the generator's size, scaled to the image's.
    let deltas: Vec<image::ImageBuffer<image::Luma<f32>, Vec<f32>>> = (0..channels)
        .map(|c| {
            let plane: Vec<f32> = (0..s * s).map(|k| y[c * s * s + k] - x[c * s * s + k]).collect();
            let small = image::ImageBuffer::from_raw(s as u32, s as u32, plane).expect("s*s values");
            image::imageops::resize(&small, w, h, image::imageops::FilterType::Triangle)
        })
        .collect();
    let changed =
        |px: u32, py: u32| deltas.iter().map(|d| d.get_pixel(px, py).0[0].abs()).sum::<f32>() / channels as f32;
    let image = if channels == 1 {
        let src = original.to_luma8();
        let out = image::GrayImage::from_fn(w, h, |px, py| {
            let v = src.get_pixel(px, py).0[0] as f32 / 255.0 + deltas[0].get_pixel(px, py).0[0];
            image::Luma([(v.clamp(0.0, 1.0) * 255.0).round() as u8])
        });
        image::DynamicImage::ImageLuma8(out)
    } else {
        let src = original.to_rgb8();
        let out = image::RgbImage::from_fn(w, h, |px, py| {
            let p = src.get_pixel(px, py).0;
            image::Rgb(std::array::from_fn(|c| {
                let v = p[c] as f32 / 255.0 + deltas[c].get_pixel(px, py).0[0];
                (v.clamp(0.0, 1.0) * 255.0).round() as u8
            }))
        });
        image::DynamicImage::ImageRgb8(out)
    };
    let mask =
        image::GrayImage::from_fn(w, h, |px, py| image::Luma([if changed(px, py) > MASK_LEVEL { 255 } else { 0 }]));
    let share = mask.pixels().filter(|p| p.0[0] > 0).count() as f32 / (w * h).max(1) as f32;
    Ok((image, (share > 0.0 && share <= MAX_MASK_SHARE).then_some(mask)))
}

/// Checks that a CycleGAN run can corrupt the training images of a model of `size` pixels and
/// `channels` channels, and loads it on `device`.
pub fn corruption(run: &Path, size: usize, channels: usize, device: &Device) -> anyhow::Result<Translator> {
    let t = Translator::load_on(run, device).with_context(|| format!("corruption = \"cyclegan:{}\"", run.display()))?;
    let (s, c) = t.shape();
    anyhow::ensure!(
        (s, c) == (size, channels),
        "corruption = \"cyclegan:{}\": the CycleGAN was trained on {s}x{s} images with {c} channel(s), this model trains on {size}x{size} with {channels}; train the CycleGAN with --size {size}",
        run.display()
    );
    Ok(t)
}

/// The normal → defective generator of a finished (or stopped) run, and its settings.
pub fn load_generator(run: &Path, device: &Device) -> anyhow::Result<(Generator, CycleConfig, usize)> {
    let run = RunDir(run.to_path_buf());
    let state = CycleState::load(&run)?;
    let cfg = load_config(&run)?;
    anyhow::ensure!(
        state.epochs_done > 0,
        "{}: the CycleGAN has not finished an epoch yet; train it first (`vigil-train cyclegan --resume {}`)",
        run.0.display(),
        run.0.display()
    );
    let g = restore_module(Generator::new(&cfg.spec(state.channels), device), &run, GENERATOR)?;
    Ok((g.valid(), cfg, state.channels))
}
