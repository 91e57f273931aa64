//! The KolektorSDD surface-defect set (Tabernik et al. 2020: 50 electrical commutators, 8
//! surfaces each, 500 pixels wide, cracks marked in pixel masks) turned into MVTec layout
//! with masks. Its licence (CC BY-NC-SA 4.0) allows use, not redistribution: vigil reads it
//! from a local copy and never ships it.
//!
//! The source folder holds `kosNN/PartK.jpg` with `kosNN/PartK_label.bmp`; a mask pixel above
//! 0 is a defect. The release repeats some images byte for byte (`kos26` is `kos01`, `kos34`
//! is `kos27`): only the first copy in name order is kept, so no image lands in both training
//! and test. The split: defect-free images sorted by name, every fifth (0-based `i % 5 == 4`)
//! to `test/good`, the rest to `train/good`; every image with a defect to `test/crack`, its
//! mask to `ground_truth/crack/<name>_mask.png` (0 and 255).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// What the conversion wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KolektorSummary {
    /// The MVTec root written.
    pub root: PathBuf,
    /// Normal training images.
    pub train_good: usize,
    /// Normal test images.
    pub test_good: usize,
    /// Defective test images.
    pub test_crack: usize,
    /// Images left out as byte-for-byte repeats of an earlier one.
    pub duplicates: usize,
}

/// Converts `source` (holding `kos01` .. `kos50`) into MVTec layout under `out`.
pub fn convert(source: &Path, out: &Path) -> anyhow::Result<KolektorSummary> {
    let mut items: Vec<PathBuf> = std::fs::read_dir(source)
        .with_context(|| format!("reading {}: pass the folder that holds kos01 .. kos50", source.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("kos")))
        .collect();
    items.sort();
    if items.is_empty() {
        bail!("{}: no kosNN folders; pass the KolektorSDD folder that holds kos01 .. kos50", source.display());
    }
    let mut seen = HashSet::new();
    let (mut normal, mut defects, mut duplicates) = (vec![], vec![], 0);
    for item in &items {
        let mut parts: Vec<PathBuf> = std::fs::read_dir(item)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "jpg") && !p.is_dir())
            .collect();
        parts.sort();
        for image in parts {
            let bytes = std::fs::read(&image).with_context(|| format!("reading {}", image.display()))?;
            if !seen.insert(Sha256::digest(&bytes)) {
                duplicates += 1;
                continue;
            }
            let stem = image.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let label = image.with_file_name(format!("{stem}_label.bmp"));
            let mask = image::open(&label)
                .with_context(|| format!("{}: the mask of {}", label.display(), image.display()))?
                .to_luma8();
            let name = format!("{}_{stem}", item.file_name().map(|s| s.to_string_lossy()).unwrap_or_default());
            if mask.pixels().any(|p| p.0[0] > 0) {
                defects.push((name, bytes, mask));
            } else {
                normal.push((name, bytes));
            }
        }
    }
    for dir in ["train/good", "test/good", "test/crack", "ground_truth/crack"] {
        std::fs::create_dir_all(out.join(dir)).with_context(|| format!("creating {}", out.join(dir).display()))?;
    }
    let save = |bytes: &[u8], path: PathBuf| -> anyhow::Result<()> {
        let img =
            image::load_from_memory(bytes).with_context(|| format!("decoding the image for {}", path.display()))?;
        img.to_luma8().save(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    };
    let (mut train_good, mut test_good) = (0, 0);
    for (i, (name, bytes)) in normal.iter().enumerate() {
        let to_test = i % 5 == 4;
        let dir = if to_test { "test/good" } else { "train/good" };
        save(bytes, out.join(dir).join(format!("{name}.png")))?;
        if to_test {
            test_good += 1;
        } else {
            train_good += 1;
        }
    }
    for (name, bytes, mask) in &defects {
        save(bytes, out.join("test/crack").join(format!("{name}.png")))?;
        let binary = image::GrayImage::from_fn(mask.width(), mask.height(), |x, y| {
            image::Luma([if mask.get_pixel(x, y).0[0] > 0 { 255 } else { 0 }])
        });
        let path = out.join("ground_truth/crack").join(format!("{name}_mask.png"));
        binary.save(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    Ok(KolektorSummary { root: out.to_path_buf(), train_good, test_good, test_crack: defects.len(), duplicates })
}
