//! Tiled models: frames cut into model-sized tiles, maps stitched back, the score reduced from
//! the stitched map, on real engines.

use image::{DynamicImage, GrayImage, Luma};
use vigil_model::bundle::Bundle;
use vigil_model::bundle::manifest::{ColorMode, Family, Tiling};
use vigil_model::engine::{self, EngineChoice};
use vigil_model::preprocess::Preprocessor;
use vigil_model::tiling::score_frames;

use crate::common::{engine_config, reference_bundle};

fn tiled(dir: &std::path::Path, overlap: usize, max_side: Option<u32>) -> Bundle {
    let plain = reference_bundle(dir, Family::Dae, ColorMode::Gray, 32);
    let mut m = plain.manifest.clone();
    m.input.tiling = Some(Tiling { overlap, max_side });
    let model = plain.model_proto().unwrap();
    Bundle::write(dir, &m, model, &[]).unwrap()
}

fn pattern(x: u32, y: u32) -> Luma<u8> {
    Luma([((x * 7 + y * 13) % 256) as u8])
}

#[test]
fn a_frame_of_repeated_tiles_scores_like_one_tile_and_its_map_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = tiled(dir.path(), 0, None);
    for kind in [EngineChoice::Tract, EngineChoice::Ort] {
        let engine = engine::load(&bundle, &engine_config(kind)).unwrap();
        let pre = Preprocessor::new(&bundle.manifest.input);
        let tile = DynamicImage::ImageLuma8(GrayImage::from_fn(32, 32, pattern));
        let frame = DynamicImage::ImageLuma8(GrayImage::from_fn(64, 96, |x, y| pattern(x % 32, y % 32)));
        let (one, big) = (pre.inputs(&tile), pre.inputs(&frame));
        assert_eq!(big.tensors.len(), 2 * 3);
        let r = score_frames(&engine, &bundle.manifest.score, &[&one, &big], None).unwrap();
        let (one_map, big_map) = (r[0].1.as_ref().unwrap(), r[1].1.as_ref().unwrap());
        assert_eq!(big_map.dim(), (96, 64));
        assert!((r[0].0 - r[1].0).abs() < 1e-5, "{kind:?}: {} vs {}", r[0].0, r[1].0);
        for ((y, x), v) in big_map.indexed_iter() {
            assert!((v - one_map[[y % 32, x % 32]]).abs() < 1e-5, "{kind:?} at {x},{y}");
        }
    }
}

#[test]
fn a_defect_is_found_where_it_is_in_a_large_frame() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = tiled(dir.path(), 8, None);
    let engine = engine::load(&bundle, &engine_config(EngineChoice::Tract)).unwrap();
    let pre = Preprocessor::new(&bundle.manifest.input);
    let clean = GrayImage::from_fn(150, 90, |x, y| pattern(x % 32, y % 32));
    let mut flawed = clean.clone();
    // A bright blotch far from the first tile.
    for y in 60..70 {
        for x in 120..130 {
            flawed.put_pixel(x, y, Luma([255]));
        }
    }
    let a = pre.inputs(&DynamicImage::ImageLuma8(clean));
    let b = pre.inputs(&DynamicImage::ImageLuma8(flawed));
    let r = score_frames(&engine, &bundle.manifest.score, &[&a, &b], None).unwrap();
    let diff = r[1].1.as_ref().unwrap() - r[0].1.as_ref().unwrap();
    let (mut at, mut best) = ((0, 0), f32::MIN);
    for ((y, x), v) in diff.indexed_iter() {
        if *v > best {
            (at, best) = ((x, y), *v);
        }
    }
    assert!((110..140).contains(&at.0) && (50..80).contains(&at.1), "the map changed most at {at:?}");
}

#[test]
fn max_side_bounds_the_tiles_and_a_small_frame_is_one_tile() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = tiled(dir.path(), 0, Some(64));
    let pre = Preprocessor::new(&bundle.manifest.input);
    let big = pre.inputs(&DynamicImage::ImageLuma8(GrayImage::new(640, 320)));
    let grid = big.grid.as_ref().unwrap();
    assert_eq!((grid.width, grid.height, big.tensors.len()), (64, 32, 2));
    assert_eq!(big.area, (0, 0, 640, 320));
    let small = pre.inputs(&DynamicImage::ImageLuma8(GrayImage::new(20, 10)));
    assert_eq!(small.tensors.len(), 1);
    // A model without an anomaly map cannot be tiled.
    let mut m = bundle.manifest.clone();
    m.outputs.anomaly_map = None;
    assert!(m.validate().unwrap_err().to_string().contains("input.tiling"));
}
