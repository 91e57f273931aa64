//! Frames to model inputs and model outputs back to frame scores, for resized and tiled
//! models alike: where the tiles of a large frame go, how their maps are stitched, and how a
//! stitched map becomes the frame's score. The daemon, `vigil score` and the pipeline's
//! evaluation all score through [`score_frames`].

use ndarray::{Array2, Array3, Array4, ArrayView2, Axis};

use crate::bundle::manifest::{Reduction, ScoreSpec};
use crate::engine::{EngineError, LoadedEngine};

/// Where the tiles of a frame lie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TileGrid {
    /// Width of the tiled image (the frame after any `max_side` scaling).
    pub width: u32,
    /// Its height.
    pub height: u32,
    /// Tile size `(w, h)`.
    pub tile: (u32, u32),
    /// Top-left corner of each tile, row by row.
    pub origins: Vec<(u32, u32)>,
}

/// The model inputs of one frame.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// One `[C, H, W]` tensor, or one per tile.
    pub tensors: Vec<Array3<f32>>,
    /// The tiles, for tiled models.
    pub grid: Option<TileGrid>,
    /// The part of the image the map covers, `(x, y, w, h)` in image pixels.
    pub area: (u32, u32, u32, u32),
}

/// Starts of tiles of size `tile` covering `len` pixels with at least `overlap` shared,
/// spread evenly so that the first starts at 0 and the last ends at `len`.
pub fn positions(len: u32, tile: u32, overlap: u32) -> Vec<u32> {
    if len <= tile {
        return vec![0];
    }
    let step = (tile - overlap).max(1);
    let n = (len - overlap).div_ceil(step).max(2);
    let span = (len - tile) as u64;
    (0..n as u64).map(|i| (i * span / (n as u64 - 1)) as u32).collect()
}

/// The grid of `tile`-sized tiles over a `width × height` image.
pub fn grid(width: u32, height: u32, tile: (u32, u32), overlap: u32) -> TileGrid {
    let xs = positions(width, tile.0, overlap);
    let ys = positions(height, tile.1, overlap);
    let origins = ys.iter().flat_map(|&y| xs.iter().map(move |&x| (x, y))).collect();
    TileGrid { width: width.max(tile.0), height: height.max(tile.1), tile, origins }
}

/// One map of the whole tiled image from the tiles' maps, averaged where tiles overlap.
pub fn stitch(grid: &TileGrid, maps: &[ArrayView2<'_, f32>]) -> Array2<f32> {
    let (w, h) = (grid.width as usize, grid.height as usize);
    let mut sum = Array2::<f32>::zeros((h, w));
    let mut count = Array2::<f32>::zeros((h, w));
    for (&(x0, y0), m) in grid.origins.iter().zip(maps) {
        let (th, tw) = m.dim();
        let (x0, y0) = (x0 as usize, y0 as usize);
        let mut s = sum.slice_mut(ndarray::s![y0..(y0 + th).min(h), x0..(x0 + tw).min(w)]);
        let (sh, sw) = s.dim();
        s += &m.slice(ndarray::s![..sh, ..sw]);
        count.slice_mut(ndarray::s![y0..y0 + sh, x0..x0 + sw]).mapv_inplace(|c| c + 1.0);
    }
    sum.zip_mut_with(&count, |s, c| *s /= c.max(1.0));
    sum
}

/// A map's score by `reduction`, as the graph's score head computes it.
pub fn reduce(map: ArrayView2<'_, f32>, reduction: &Reduction) -> f32 {
    match reduction {
        Reduction::Max => map.iter().copied().fold(f32::NEG_INFINITY, f32::max),
        Reduction::Mean => map.iter().sum::<f32>() / map.len().max(1) as f32,
        Reduction::TopKMean { k } => {
            let mut v: Vec<f32> = map.iter().copied().collect();
            let k = (*k).clamp(1, v.len());
            v.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            v[..k].iter().sum::<f32>() / k as f32
        }
    }
}

/// A frame's score and its `[H, W]` anomaly map (when the model has one).
pub type FrameScore = (f32, Option<Array2<f32>>);

/// Scores frames: every tensor of every frame goes through the engine in batches of at most
/// its `max_batch`; a tiled frame's maps are stitched and reduced to its score. `classes`
/// holds each frame's class index for a conditional model (each of its tiles gets it).
/// Returns each frame's score and `[H, W]` map (when the model has one).
pub fn score_frames(
    engine: &LoadedEngine,
    score: &ScoreSpec,
    frames: &[&Inputs],
    classes: Option<&[i64]>,
) -> Result<Vec<FrameScore>, EngineError> {
    let [c, h, w] = engine.chw;
    if let Some(k) = classes
        && k.len() != frames.len()
    {
        return Err(EngineError::Class(format!("{} class indices for {} frames", k.len(), frames.len())));
    }
    let all: Vec<&Array3<f32>> = frames.iter().flat_map(|f| f.tensors.iter()).collect();
    let tile_classes: Option<Vec<i64>> = classes.map(|classes| {
        frames.iter().zip(classes).flat_map(|(f, &k)| std::iter::repeat_n(k, f.tensors.len())).collect()
    });
    let mut scores = Vec::with_capacity(all.len());
    let mut maps: Vec<Array2<f32>> = Vec::with_capacity(all.len());
    let mut has_maps = true;
    let per_batch = engine.max_batch().max(1);
    for (i, chunk) in all.chunks(per_batch).enumerate() {
        let mut batch = Array4::<f32>::zeros((chunk.len(), c, h, w));
        for (mut slot, t) in batch.axis_iter_mut(Axis(0)).zip(chunk) {
            slot.assign(*t);
        }
        let chunk_classes = tile_classes.as_ref().map(|k| &k[i * per_batch..i * per_batch + chunk.len()]);
        let out = engine.run_classes(batch.view(), chunk_classes)?;
        scores.extend_from_slice(&out.scores);
        match out.maps {
            Some(m) => maps.extend(m.axis_iter(Axis(0)).map(|m| m.index_axis(Axis(0), 0).to_owned())),
            None => has_maps = false,
        }
    }
    let mut at = 0;
    let mut results = Vec::with_capacity(frames.len());
    for f in frames {
        let n = f.tensors.len();
        let result = match (&f.grid, has_maps) {
            (Some(grid), true) => {
                let views: Vec<ArrayView2<'_, f32>> = maps[at..at + n].iter().map(|m| m.view()).collect();
                let stitched = stitch(grid, &views);
                (reduce(stitched.view(), &score.reduction), Some(stitched))
            }
            (_, true) => (scores[at], Some(std::mem::take(&mut maps[at]))),
            (_, false) => (scores[at], None),
        };
        results.push(result);
        at += n;
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_the_frame_evenly_with_the_overlap() {
        assert_eq!(positions(100, 128, 16), [0]);
        assert_eq!(positions(128, 128, 16), [0]);
        assert_eq!(positions(300, 128, 16), [0, 86, 172]);
        for (len, tile, overlap) in [(300, 128, 16), (1000, 128, 0), (129, 128, 8), (640, 64, 32)] {
            let p = positions(len, tile, overlap);
            assert_eq!(p[0], 0);
            assert_eq!(p.last().unwrap() + tile, len, "{len} {tile} {overlap}: {p:?}");
            for w in p.windows(2) {
                assert!(w[0] + tile >= w[1] + overlap, "{len} {tile} {overlap}: {p:?}");
            }
        }
        let g = grid(300, 200, (128, 128), 16);
        assert_eq!(g.origins.len(), 3 * 2);
    }

    #[test]
    fn stitching_averages_overlaps_and_reduction_matches_the_graph() {
        let g = grid(6, 2, (4, 2), 2);
        assert_eq!(g.origins, [(0, 0), (2, 0)]);
        let a = Array2::from_elem((2, 4), 1.0f32);
        let b = Array2::from_elem((2, 4), 3.0f32);
        let m = stitch(&g, &[a.view(), b.view()]);
        assert_eq!(m.row(0).to_vec(), [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]);
        assert_eq!(reduce(m.view(), &Reduction::Max), 3.0);
        assert_eq!(reduce(m.view(), &Reduction::Mean), 2.0);
        assert_eq!(reduce(m.view(), &Reduction::TopKMean { k: 8 }), 2.5);
    }
}
