//! Decode an image and turn it into the model's input tensor exactly as the manifest says.
//!
//! The daemon, `vigil score` and the training pipeline's evaluation all call this one
//! function, so a model is served on the same pixels it was evaluated on (no train/serve skew).

use std::io::Cursor;

use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits};
use ndarray::{Array3, ArrayViewMut3};

use crate::bundle::manifest::{ColorMode, InputSpec, ResizeFilter, ResizeMode};
use crate::tiling::{self, Inputs};

/// Largest width or height accepted from a frame; bigger declared sizes are refused before
/// any pixel is decoded (a decompression bomb declares huge sizes in a tiny file).
pub const MAX_SIDE: u32 = 16_384;
/// Largest memory the decoder may allocate for one frame.
pub const MAX_DECODE_BYTES: u64 = 512 * 1024 * 1024;
/// Frames up to this many pixels are decoded whatever their file size.
pub const FREE_PIXELS: u64 = 4 << 20;
/// Above [`FREE_PIXELS`], the most pixels a frame may declare per byte of file. Real frames,
/// even a blank one, stay far below (a uniform 40-megapixel JPEG or PNG holds a few hundred
/// pixels per byte); a tiny file declaring a huge image would make vigil spend a second of
/// CPU per kilobyte it receives.
pub const MAX_PIXELS_PER_BYTE: u64 = 4096;

/// Why a frame could not become a tensor.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// The bytes are not an image in a supported format.
    #[error("not a readable image ({0}); vigil reads PNG, JPEG, BMP and TIFF")]
    Format(String),
    /// The image is corrupt or truncated.
    #[error("corrupt or truncated image ({0})")]
    Corrupt(String),
    /// The image declares a size beyond the limits.
    #[error("image too large ({0}); frames up to {MAX_SIDE}x{MAX_SIDE} pixels are accepted")]
    TooLarge(String),
    /// The file is empty.
    #[error("empty file")]
    Empty,
}

/// Decodes PNG, JPEG, BMP or TIFF bytes with size and memory limits.
pub fn decode(bytes: &[u8]) -> Result<DynamicImage, PreprocessError> {
    if bytes.is_empty() {
        return Err(PreprocessError::Empty);
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| PreprocessError::Format(e.to_string()))?;
    if reader.format().is_none() {
        return Err(PreprocessError::Format("unknown format".into()));
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(decode_error)?;
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    if pixels > FREE_PIXELS && pixels > bytes.len() as u64 * MAX_PIXELS_PER_BYTE {
        return Err(PreprocessError::TooLarge(format!(
            "{w}x{h} pixels declared by a file of only {} bytes (a decompression bomb)",
            bytes.len()
        )));
    }
    DynamicImage::from_decoder(decoder).map_err(decode_error)
}

fn decode_error(e: image::ImageError) -> PreprocessError {
    match e {
        image::ImageError::Limits(l) => PreprocessError::TooLarge(l.to_string()),
        image::ImageError::Unsupported(u) => PreprocessError::Format(u.to_string()),
        other => PreprocessError::Corrupt(other.to_string()),
    }
}

fn filter(f: ResizeFilter) -> FilterType {
    match f {
        ResizeFilter::Nearest => FilterType::Nearest,
        ResizeFilter::Bilinear => FilterType::Triangle,
        ResizeFilter::Bicubic => FilterType::CatmullRom,
        ResizeFilter::Lanczos3 => FilterType::Lanczos3,
    }
}

/// Turns decoded images into input tensors for one manifest's `input`.
#[derive(Debug, Clone)]
pub struct Preprocessor {
    spec: InputSpec,
}

impl Preprocessor {
    /// A preprocessor for the given input description.
    pub fn new(spec: &InputSpec) -> Self {
        Preprocessor { spec: spec.clone() }
    }

    /// The input description.
    pub fn spec(&self) -> &InputSpec {
        &self.spec
    }

    /// `[C, H, W]` of one tensor.
    pub fn chw(&self) -> [usize; 3] {
        [self.spec.channels, self.spec.height, self.spec.width]
    }

    /// The part of a `width × height` image that becomes the input: all of it for
    /// `stretch`, the largest centred region with the input's aspect ratio for
    /// `center_crop`. `(x, y, w, h)` in image pixels.
    pub fn crop_rect(&self, width: u32, height: u32) -> (u32, u32, u32, u32) {
        let (w, h) = (self.spec.width as u64, self.spec.height as u64);
        match self.spec.resize_mode {
            ResizeMode::Stretch => (0, 0, width, height),
            ResizeMode::CenterCrop => {
                let (iw, ih) = (width as u64, height as u64);
                let (cw, ch) = if iw * h > ih * w { ((ih * w / h).max(1), ih) } else { (iw, (iw * h / w).max(1)) };
                (((iw - cw) / 2) as u32, ((ih - ch) / 2) as u32, cw as u32, ch as u32)
            }
        }
    }

    /// The image cropped (for `center_crop`) and resized to the input size.
    pub fn resize(&self, img: &DynamicImage) -> DynamicImage {
        let (w, h) = (self.spec.width as u32, self.spec.height as u32);
        let (x, y, cw, ch) = self.crop_rect(img.width(), img.height());
        let img = if (cw, ch) == (img.width(), img.height()) { img.clone() } else { img.crop_imm(x, y, cw, ch) };
        if img.width() == w && img.height() == h {
            img
        } else {
            img.resize_exact(w, h, filter(self.spec.resize_filter))
        }
    }

    /// Writes the tensor of `img` into `out` (`[C, H, W]`).
    pub fn fill(&self, img: &DynamicImage, mut out: ArrayViewMut3<'_, f32>) {
        let resized = self.resize(img);
        let s = &self.spec;
        let (scale, mean, std) = (s.scale, &s.mean, &s.std);
        match s.color {
            ColorMode::Gray => {
                let g = resized.to_luma8();
                for (x, y, p) in g.enumerate_pixels() {
                    out[[0, y as usize, x as usize]] = (p.0[0] as f32 * scale - mean[0]) / std[0];
                }
            }
            ColorMode::Rgb => {
                let rgb = resized.to_rgb8();
                for (x, y, p) in rgb.enumerate_pixels() {
                    for c in 0..3 {
                        out[[c, y as usize, x as usize]] = (p.0[c] as f32 * scale - mean[c]) / std[c];
                    }
                }
            }
        }
    }

    /// The tensor of `img`, `[C, H, W]`.
    pub fn tensor(&self, img: &DynamicImage) -> Array3<f32> {
        let [c, h, w] = self.chw();
        let mut out = Array3::zeros((c, h, w));
        self.fill(img, out.view_mut());
        out
    }

    /// The model inputs of an image: its one resized tensor, or, for a tiled model, one
    /// tensor per tile (see [`crate::tiling`]).
    pub fn inputs(&self, img: &DynamicImage) -> Inputs {
        let Some(t) = &self.spec.tiling else {
            return Inputs {
                tensors: vec![self.tensor(img)],
                grid: None,
                area: self.crop_rect(img.width(), img.height()),
            };
        };
        let tile = (self.spec.width as u32, self.spec.height as u32);
        let f = filter(self.spec.resize_filter);
        let mut scaled = std::borrow::Cow::Borrowed(img);
        if let Some(m) = t.max_side
            && img.width().max(img.height()) > m
        {
            scaled = std::borrow::Cow::Owned(img.resize(m, m, f));
        }
        // A frame smaller than a tile is stretched up to it on that side.
        if scaled.width() < tile.0 || scaled.height() < tile.1 {
            let (w, h) = (scaled.width().max(tile.0), scaled.height().max(tile.1));
            scaled = std::borrow::Cow::Owned(scaled.resize_exact(w, h, f));
        }
        let grid = tiling::grid(scaled.width(), scaled.height(), tile, t.overlap as u32);
        let tensors = grid.origins.iter().map(|&(x, y)| self.tensor(&scaled.crop_imm(x, y, tile.0, tile.1))).collect();
        Inputs { tensors, grid: Some(grid), area: (0, 0, img.width(), img.height()) }
    }

    /// Decodes `bytes` and returns its tensor.
    pub fn tensor_from_bytes(&self, bytes: &[u8]) -> Result<Array3<f32>, PreprocessError> {
        Ok(self.tensor(&decode(bytes)?))
    }
}
