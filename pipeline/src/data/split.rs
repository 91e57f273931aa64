//! Confirmed defects taken out of a test set, as a line that has confirmed some would have
//! them: the benchmark of training with labelled defects learns from these and is judged on
//! the rest, never on an image it learnt from.

use std::path::{Path, PathBuf};

use anyhow::Context;
use vigil_model::rng::Rng;

use super::sets::list_images;

/// An MVTec-layout set split for mixed supervision.
#[derive(Debug, Clone)]
pub struct DefectSplit {
    /// The set without the taken defects (MVTec layout, files linked to the original).
    pub root: PathBuf,
    /// The taken defects, all types in one folder (`<type>-<file>`), their masks in its
    /// `masks/` (`<type>-<stem>_mask.png`) where the set has them.
    pub defects: PathBuf,
    /// Defects taken, per type.
    pub taken: Vec<(String, usize)>,
}

/// Takes `per_type` defects of each type of the MVTec set at `data` (chosen by `seed`) into
/// `out/train-defects`, and writes the rest of the set as `out/rest` (symbolic links).
pub fn take_defects(data: &Path, per_type: usize, seed: u64, out: &Path) -> anyhow::Result<DefectSplit> {
    let (root, defects) = (out.join("rest"), out.join("train-defects"));
    for d in [&root, &defects] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("clearing {}", d.display()))?;
        }
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let link = |from: &Path, to: &Path| -> anyhow::Result<()> {
        let from = std::fs::canonicalize(from).with_context(|| format!("{}", from.display()))?;
        std::os::unix::fs::symlink(&from, to).with_context(|| format!("linking {}", to.display()))
    };
    for d in ["train", "test"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    link(&data.join("train/good"), &root.join("train/good"))?;
    if data.join("ground_truth").is_dir() {
        link(&data.join("ground_truth"), &root.join("ground_truth"))?;
    }
    let mut taken = vec![];
    let mut kinds: Vec<PathBuf> = std::fs::read_dir(data.join("test"))
        .with_context(|| format!("{}: no test/ folder (MVTec layout)", data.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    kinds.sort();
    for dir in kinds {
        let kind = dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if kind == "good" {
            link(&dir, &root.join("test/good"))?;
            continue;
        }
        let mut files = list_images(&dir)?;
        Rng::new(seed ^ kind.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64))).shuffle(&mut files);
        let n = per_type.min(files.len().saturating_sub(1));
        let kept = root.join("test").join(&kind);
        std::fs::create_dir_all(&kept)?;
        for (i, f) in files.iter().enumerate() {
            let name = f.file_name().unwrap_or_default().to_string_lossy().into_owned();
            if i < n {
                link(f, &defects.join(format!("{kind}-{name}")))?;
                // Its mask comes along, named as `--train-abnormal` looks for it.
                let stem = f.file_stem().unwrap_or_default().to_string_lossy().into_owned();
                let mask = data.join("ground_truth").join(&kind).join(format!("{stem}_mask.png"));
                if mask.is_file() {
                    std::fs::create_dir_all(defects.join("masks"))?;
                    link(&mask, &defects.join("masks").join(format!("{kind}-{stem}_mask.png")))?;
                }
            } else {
                link(f, &kept.join(&name))?;
            }
        }
        taken.push((kind, n));
    }
    Ok(DefectSplit { root, defects, taken })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_taken_defects_leave_the_judged_set_and_the_rest_stays() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let png = |p: PathBuf| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            image::GrayImage::new(4, 4).save(p).unwrap();
        };
        for i in 0..3 {
            png(data.join(format!("train/good/{i}.png")));
            png(data.join(format!("test/good/{i}.png")));
        }
        for i in 0..5 {
            png(data.join(format!("test/crack/{i}.png")));
            png(data.join(format!("ground_truth/crack/{i}_mask.png")));
        }
        png(data.join("test/spot/0.png"));
        let s = take_defects(&data, 2, 7, &dir.path().join("out")).unwrap();
        // One spot only: at least one is left to judge on.
        assert_eq!(s.taken, vec![("crack".to_owned(), 2), ("spot".to_owned(), 0)]);
        let taken = list_images(&s.defects).unwrap();
        let kept = list_images(&s.root.join("test/crack")).unwrap();
        assert_eq!((taken.len(), kept.len()), (2, 3));
        // Each taken defect's mask beside it, named as `--train-abnormal` looks for it.
        for t in &taken {
            let stem = t.file_stem().unwrap().to_string_lossy().into_owned();
            assert!(s.defects.join("masks").join(format!("{stem}_mask.png")).is_file(), "{stem}");
        }
        let names = |v: &[PathBuf]| -> Vec<String> {
            v.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
        };
        let kept_names = names(&kept);
        assert!(names(&taken).iter().all(|t| !kept_names.contains(&t.trim_start_matches("crack-").to_owned())));
        assert_eq!(list_images(&s.root.join("test/good")).unwrap().len(), 3);
        assert_eq!(list_images(&s.root.join("train/good")).unwrap().len(), 3);
        // Another seed may take others; the same seed the same.
        let again = take_defects(&data, 2, 7, &dir.path().join("out")).unwrap();
        assert_eq!(names(&list_images(&again.defects).unwrap()), names(&taken));
    }
}
