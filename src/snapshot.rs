//! Snapshots: the anomalous frame with its heatmap and region box, as JPEG, published
//! (retained) over MQTT and kept on disk, newest `keep` per camera.

use std::path::{Path, PathBuf};

use image::DynamicImage;
use ndarray::ArrayView2;

use crate::alert::Region;
use crate::decide::Area;
use crate::overlay;

/// Longest side of a snapshot; larger frames are scaled down (a snapshot is for a person).
const MAX_SIDE: u32 = 1280;

/// The JPEG of `image` with `map` drawn over `area` and the region boxed.
pub fn render(image: &DynamicImage, area: Area, map: ArrayView2<'_, f32>, threshold: f32, region: &Region) -> Vec<u8> {
    let mut frame = image.to_rgb8();
    let (mh, mw) = map.dim();
    let values: Vec<f32> = map.iter().copied().collect();
    // The heat ramp starts at half the threshold and is red at twice it.
    let sub = image::imageops::crop_imm(&frame, area.x, area.y, area.w, area.h).to_image();
    let hot = overlay::overlay(&sub, &values, mh, mw, threshold * 0.5, threshold * 2.0);
    image::imageops::replace(&mut frame, &hot, area.x as i64, area.y as i64);
    let [x, y, w, h] = region.bbox;
    if w > 0 && h > 0 {
        let t = (frame.width().max(frame.height()) / 300).max(2);
        overlay::draw_box(&mut frame, x, y, x + w - 1, y + h - 1, [255, 0, 0], t);
    }
    let frame = if frame.width().max(frame.height()) > MAX_SIDE {
        DynamicImage::ImageRgb8(frame).resize(MAX_SIDE, MAX_SIDE, image::imageops::FilterType::Triangle).to_rgb8()
    } else {
        frame
    };
    let mut out = std::io::Cursor::new(Vec::new());
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85);
    frame.write_with_encoder(encoder).expect("JPEG encoding into memory does not fail");
    out.into_inner()
}

/// Writes `jpeg` as `<dir>/<camera>/<id>.jpg` and removes the oldest beyond `keep`.
pub fn save(dir: &Path, camera: &str, id: &str, jpeg: &[u8], keep: usize) -> std::io::Result<PathBuf> {
    let folder = dir.join(camera);
    std::fs::create_dir_all(&folder)?;
    let path = folder.join(format!("{id}.jpg"));
    std::fs::write(&path, jpeg)?;
    // ULIDs sort by time, so the oldest are first by name.
    let mut names: Vec<PathBuf> = std::fs::read_dir(&folder)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    if names.len() > keep {
        names.sort();
        for old in &names[..names.len() - keep] {
            let _ = std::fs::remove_file(old);
        }
    }
    Ok(path)
}
