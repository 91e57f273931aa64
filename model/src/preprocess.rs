//! Decode an image and turn it into the model's input tensor exactly as the manifest says.
//!
//! The daemon, `vigil score` and the training pipeline's evaluation all call this one
//! function, so a model is served on the same pixels it was evaluated on (no train/serve skew).

use std::cell::RefCell;
use std::io::Cursor;

use fast_image_resize as fr;

use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageReader, Limits};
use ndarray::{Array3, ArrayViewMut3};

use crate::bundle::manifest::{ColorMode, InputSpec, ResizeFilter, ResizeMode};
use crate::tiling::{self, Inputs};

/// File extensions read as images (any case): folder cameras' default patterns, the
/// trainer's data sets and `vigil bench --frames`.
pub const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

/// Whether `path` names an image by its extension ([`IMAGE_EXTENSIONS`]).
pub fn is_image_file(path: &std::path::Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

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
    if is_truncated_jpeg(bytes) {
        return Err(PreprocessError::Corrupt(
            "the JPEG ends before its end-of-image marker: the file was cut short (a camera upload or copy not finished?)"
                .into(),
        ));
    }
    DynamicImage::from_decoder(decoder).map_err(decode_error)
}

/// Whether `bytes` are a JPEG cut short: no end-of-image marker (FF D9) after the start of its
/// last scan (FF DA). The JPEG decoder fills the missing blocks in and would score half a
/// frame, a false alert. Neither marker can occur inside compressed data, and an embedded
/// thumbnail's markers come before the main image's scans, so bytes appended after the end
/// (camera trailers, further MPF images) do not count as truncation, whatever their length.
fn is_truncated_jpeg(bytes: &[u8]) -> bool {
    if !bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return false;
    }
    match bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]) {
        Some(scan) => !bytes[scan..].windows(2).any(|w| w == [0xFF, 0xD9]),
        // No scan at all: the decoder refuses it with its own reason.
        None => false,
    }
}

fn decode_error(e: image::ImageError) -> PreprocessError {
    match e {
        image::ImageError::Limits(l) => PreprocessError::TooLarge(l.to_string()),
        image::ImageError::Unsupported(u) => PreprocessError::Format(u.to_string()),
        other => PreprocessError::Corrupt(other.to_string()),
    }
}

thread_local! {
    // The resizer keeps its scratch buffers between frames.
    static RESIZER: RefCell<fr::Resizer> = RefCell::new(fr::Resizer::new());
}

/// Resizes the `rect` (x, y, w, h) of an 8-bit `width × height` image to `to`, with SIMD
/// convolution (the same filters as Pillow's, scaled to the reduction, so a downscale
/// averages every source pixel).
fn resize_u8(
    src: &[u8],
    kind: fr::PixelType,
    width: u32,
    height: u32,
    rect: (u32, u32, u32, u32),
    to: (u32, u32),
    f: ResizeFilter,
) -> Vec<u8> {
    let k = kind.size();
    let (x, y, cw, ch) = rect;
    if (cw, ch) == to {
        // No scaling: copy the rows of the rectangle.
        let row = width as usize * k;
        return (y..y + ch)
            .flat_map(|r| {
                let start = r as usize * row + x as usize * k;
                src[start..start + cw as usize * k].iter().copied()
            })
            .collect();
    }
    let alg = match f {
        ResizeFilter::Nearest => fr::ResizeAlg::Nearest,
        ResizeFilter::Bilinear => fr::ResizeAlg::Convolution(fr::FilterType::Bilinear),
        ResizeFilter::Bicubic => fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom),
        ResizeFilter::Lanczos3 => fr::ResizeAlg::Convolution(fr::FilterType::Lanczos3),
    };
    let source = fr::images::ImageRef::new(width, height, src, kind).expect("decoded buffer matches its size");
    let mut dst = fr::images::Image::new(to.0, to.1, kind);
    // A cropped view, not a crop box: the filter stops at the rectangle's edges, as if the
    // rectangle were the whole frame (what cropping and then resizing does).
    let view = fr::images::CroppedImage::new(&source, x, y, cw, ch).expect("crop rectangle inside the frame");
    let options = fr::ResizeOptions::new().resize_alg(alg);
    RESIZER.with_borrow_mut(|r| r.resize(&view, &mut dst, &options)).expect("resize of same-typed 8-bit images");
    dst.into_vec()
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
    /// Per channel, `(v * scale - mean) / std` for every 8-bit value `v`.
    lut: Vec<[f32; 256]>,
}

impl Preprocessor {
    /// A preprocessor for the given input description.
    pub fn new(spec: &InputSpec) -> Self {
        let lut = (0..spec.channels)
            .map(|c| {
                let (mean, std) = (spec.mean.get(c).copied().unwrap_or(0.0), spec.std.get(c).copied().unwrap_or(1.0));
                std::array::from_fn(|v| (v as f32 * spec.scale - mean) / std)
            })
            .collect();
        Preprocessor { spec: spec.clone(), lut }
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

    /// The image cropped (for `center_crop`) and resized to the input size, as 8-bit pixels
    /// in the model's colour mode (row-major, interleaved).
    pub fn resize(&self, img: &DynamicImage) -> Vec<u8> {
        let (w, h) = (self.spec.width as u32, self.spec.height as u32);
        let rect = self.crop_rect(img.width(), img.height());
        // Resizing runs on the frame's own 8-bit pixels where it has them (the common JPEG
        // and PNG cases, no copy); other layouts are converted once, at full size.
        let converted;
        let (src, kind) = match (img, self.spec.color) {
            (DynamicImage::ImageRgb8(b), _) => (b.as_raw().as_slice(), fr::PixelType::U8x3),
            (DynamicImage::ImageLuma8(b), _) => (b.as_raw().as_slice(), fr::PixelType::U8),
            (other, ColorMode::Rgb) => {
                converted = other.to_rgb8().into_raw();
                (converted.as_slice(), fr::PixelType::U8x3)
            }
            (other, ColorMode::Gray) => {
                converted = other.to_luma8().into_raw();
                (converted.as_slice(), fr::PixelType::U8)
            }
        };
        let pixels = resize_u8(src, kind, img.width(), img.height(), rect, (w, h), self.spec.resize_filter);
        let channels = self.spec.channels;
        match (kind, self.spec.color) {
            (fr::PixelType::U8x3, ColorMode::Gray) => {
                // Same weights as the image crate's `to_luma8`, on the small image.
                let rgb = image::RgbImage::from_raw(w, h, pixels).expect("resized buffer has the input size");
                DynamicImage::ImageRgb8(rgb).to_luma8().into_raw()
            }
            (fr::PixelType::U8, ColorMode::Rgb) => pixels.iter().flat_map(|&v| [v; 3]).collect(),
            _ => {
                debug_assert_eq!(pixels.len(), (w * h) as usize * channels);
                pixels
            }
        }
    }

    /// Writes the tensor of `img` into `out` (`[C, H, W]`).
    pub fn fill(&self, img: &DynamicImage, mut out: ArrayViewMut3<'_, f32>) {
        let pixels = self.resize(img);
        let s = &self.spec;
        let (c, lut) = (s.channels, &self.lut);
        let plane = s.width * s.height;
        match out.as_slice_mut() {
            Some(dst) => {
                for (ch, table) in lut.iter().enumerate() {
                    let dst = &mut dst[ch * plane..(ch + 1) * plane];
                    for (d, px) in dst.iter_mut().zip(pixels.chunks_exact(c)) {
                        *d = table[px[ch] as usize];
                    }
                }
            }
            None => {
                for (i, px) in pixels.chunks_exact(c).enumerate() {
                    let (y, x) = (i / s.width, i % s.width);
                    for (ch, table) in lut.iter().enumerate() {
                        out[[ch, y, x]] = table[px[ch] as usize];
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
        Ok(self.inputs_from_bytes(bytes)?.tensors.swap_remove(0))
    }

    /// The model inputs of an encoded frame (`vigil score`, `vigil bench` and the training
    /// pipeline's loader; the daemon decodes first, to cut a camera's region of interest).
    pub fn inputs_from_bytes(&self, bytes: &[u8]) -> Result<Inputs, PreprocessError> {
        Ok(self.inputs(&decode(bytes)?))
    }
}
