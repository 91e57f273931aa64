//! Data sets: finding images (MVTec AD layout or plain folders), the deterministic
//! train/validation split, loading them through the daemon's own preprocessing, and their
//! channel count.

use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};
use vigil_model::preprocess::{Preprocessor, decode, is_image_file as is_image};
use vigil_model::rng::mix;
use vigil_model::tiling::Inputs;

/// Where the images come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// `ROOT/train/good`, `ROOT/test/<type>`, `ROOT/ground_truth/<type>/<stem>_mask.png`.
    Mvtec(PathBuf),
    /// Plain folders.
    Folders {
        /// Normal images (split into train and validation).
        normal: PathBuf,
        /// Defective images for testing, if any.
        abnormal: Option<PathBuf>,
        /// Masks of the defective images, named `<stem>_mask.png` or `<stem>.png`.
        masks: Option<PathBuf>,
    },
    /// One source per product class, in class order: the data of a conditional model.
    Classes(Vec<(String, DataSource)>),
    /// The same products pooled for one model that is not told the class (the comparison
    /// `bench-conditional` makes); the test images keep their class for per-class metrics.
    Pooled(Vec<(String, DataSource)>),
}

impl DataSource {
    /// The classes under `dir` (`--conditional --data DIR`): each subfolder is a class named
    /// after it, in MVTec layout when it has `train/good`, else a plain folder of normal images.
    pub fn classes_in(dir: &Path) -> Result<DataSource, DataError> {
        let layout = |problem: String| DataError::Layout { path: dir.to_path_buf(), problem, expected: CLASSES_LAYOUT };
        if !dir.is_dir() {
            return Err(layout("not a folder".into()));
        }
        if dir.join("train/good").is_dir() {
            return Err(layout(
                "it is one product in MVTec layout; a conditional model needs at least 2 products".into(),
            ));
        }
        let mut classes = vec![];
        for sub in subdirs(dir)? {
            let name = sub.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if name.starts_with('.') {
                continue;
            }
            let plain = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !plain {
                return Err(layout(format!(
                    "class folder `{}`: class names use letters, digits, '-', '_' and '.'; rename it",
                    name.escape_default()
                )));
            }
            classes.push((name, DataSource::of_folder(&sub)));
        }
        if classes.len() < 2 {
            return Err(layout(format!("{} class folder(s); a conditional model needs at least 2", classes.len())));
        }
        Ok(DataSource::Classes(classes))
    }

    /// A folder in MVTec layout when it has `train/good`, else a plain folder of normal images.
    pub fn of_folder(dir: &Path) -> DataSource {
        if dir.join("train/good").is_dir() {
            DataSource::Mvtec(dir.to_path_buf())
        } else {
            DataSource::Folders { normal: dir.to_path_buf(), abnormal: None, masks: None }
        }
    }
}

/// A labelled test image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestImage {
    /// The image file.
    pub path: PathBuf,
    /// `good` for normal images, else the defect type (folder name).
    pub kind: String,
    /// The defect mask, when one exists.
    pub mask: Option<PathBuf>,
    /// Its class index, for a conditional model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<usize>,
}

impl TestImage {
    /// Whether the image shows a defect.
    pub fn is_defect(&self) -> bool {
        self.kind != "good"
    }
}

/// The images of one run, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSet {
    /// Normal images to train on.
    pub train: Vec<PathBuf>,
    /// Held-out normal images that calibrate the threshold.
    pub val: Vec<PathBuf>,
    /// Labelled test images (may be empty).
    pub test: Vec<TestImage>,
    /// Describes the source, for logs and the manifest.
    pub description: String,
    /// The product classes of the data (a conditional model's, or pooled products'), in
    /// class order; empty for one product.
    pub classes: Vec<String>,
    /// The class index of each `train` image (empty without classes).
    pub train_class: Vec<usize>,
    /// The class index of each `val` image (empty without classes).
    pub val_class: Vec<usize>,
}

/// Why a data set cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The folder layout is not what was asked for.
    #[error("data set {path}: {problem}; expected {expected}")]
    Layout {
        /// The folder.
        path: PathBuf,
        /// What is wrong.
        problem: String,
        /// The layout that was expected.
        expected: &'static str,
    },
    /// Too few normal images to train and calibrate.
    #[error(
        "data set {path}: only {found} normal image(s); at least {needed} are needed to train and calibrate a threshold"
    )]
    TooFew {
        /// The folder.
        path: PathBuf,
        /// Images found.
        found: usize,
        /// Images needed.
        needed: usize,
    },
    /// A folder could not be read.
    #[error("data set {path}: {source}")]
    Io {
        /// The folder.
        path: PathBuf,
        /// The system error.
        source: std::io::Error,
    },
}

const MVTEC_LAYOUT: &str = "MVTec AD layout: DIR/train/good/*.png, optional DIR/test/<type>/*.png and DIR/ground_truth/<type>/<stem>_mask.png (or pass --normal DIR for a plain folder of normal images)";
const FOLDER_LAYOUT: &str = "a folder of PNG, JPEG, BMP or TIFF images";
const CLASSES_LAYOUT: &str = "one subfolder per product class, each in MVTec AD layout (CLASS/train/good, CLASS/test/<type>) or a plain folder of normal images (or pass --classes a=DIR,b=DIR)";

/// The fewest normal images a run accepts (some for training, some for the threshold).
pub const MIN_NORMAL: usize = 4;

/// The images directly inside `dir`, sorted by name.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|source| DataError::Io { path: dir.to_path_buf(), source })?;
    let mut v: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_file() && is_image(p)).collect();
    v.sort();
    Ok(v)
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|source| DataError::Io { path: dir.to_path_buf(), source })?;
    let mut v: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    v.sort();
    Ok(v)
}

/// The mask of `image` in `dir`: `<stem>_mask.png`, else `<stem>.png`.
pub(crate) fn find_mask(dir: &Path, image: &Path) -> Option<PathBuf> {
    let stem = image.file_stem()?.to_string_lossy().into_owned();
    [format!("{stem}_mask.png"), format!("{stem}.png")].into_iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

/// Splits normal images into train and validation by a seeded hash of each file name, so the
/// split does not depend on listing order and adding images moves few others.
pub fn split(normal: Vec<PathBuf>, val_fraction: f64, seed: u64) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let n_val = ((normal.len() as f64 * val_fraction).round() as usize).clamp(2, normal.len().saturating_sub(2).max(1));
    let key = |p: &PathBuf| {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let h: [u8; 8] = Sha256::digest(name.as_bytes())[..8].try_into().expect("8 bytes");
        mix(u64::from_le_bytes(h) ^ seed)
    };
    let mut ranked: Vec<(u64, PathBuf)> = normal.into_iter().map(|p| (key(&p), p)).collect();
    ranked.sort();
    let val: Vec<PathBuf> = ranked[..n_val].iter().map(|(_, p)| p.clone()).collect();
    let mut train: Vec<PathBuf> = ranked[n_val..].iter().map(|(_, p)| p.clone()).collect();
    let mut val = val;
    train.sort();
    val.sort();
    (train, val)
}

/// Finds the images of `source` and splits the normal ones (each class's on its own, so that
/// every class has validation images).
pub fn discover(source: &DataSource, val_fraction: f64, seed: u64) -> Result<DataSet, DataError> {
    let (normal, test, description, root) = match source {
        DataSource::Classes(classes) | DataSource::Pooled(classes) => {
            let mut all = DataSet {
                train: vec![],
                val: vec![],
                test: vec![],
                description: String::new(),
                classes: vec![],
                train_class: vec![],
                val_class: vec![],
            };
            let mut parts = vec![];
            for (i, (name, source)) in classes.iter().enumerate() {
                if matches!(source, DataSource::Classes(_) | DataSource::Pooled(_)) {
                    return Err(DataError::Layout {
                        path: PathBuf::from(name),
                        problem: "a class cannot hold classes".into(),
                        expected: CLASSES_LAYOUT,
                    });
                }
                let set = discover(source, val_fraction, seed)?;
                all.train_class.extend(std::iter::repeat_n(i, set.train.len()));
                all.val_class.extend(std::iter::repeat_n(i, set.val.len()));
                all.train.extend(set.train);
                all.val.extend(set.val);
                all.test.extend(set.test.into_iter().map(|t| TestImage { class: Some(i), ..t }));
                all.classes.push(name.clone());
                parts.push(format!("{name}: {}", set.description));
            }
            let how = if matches!(source, DataSource::Pooled(_)) { "pooled products" } else { "classes" };
            all.description = format!("{how} {}", parts.join("; "));
            return Ok(all);
        }
        DataSource::Mvtec(root) => {
            let train_dir = root.join("train/good");
            if !train_dir.is_dir() {
                return Err(DataError::Layout {
                    path: root.clone(),
                    problem: "no train/good folder".into(),
                    expected: MVTEC_LAYOUT,
                });
            }
            let normal = list_images(&train_dir)?;
            let mut test = vec![];
            let test_dir = root.join("test");
            if test_dir.is_dir() {
                for kind_dir in subdirs(&test_dir)? {
                    let kind = kind_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    let gt = root.join("ground_truth").join(&kind);
                    for path in list_images(&kind_dir)? {
                        let mask = if kind == "good" { None } else { find_mask(&gt, &path) };
                        test.push(TestImage { path, kind: kind.clone(), mask, class: None });
                    }
                }
            }
            (normal, test, format!("MVTec layout {}", root.display()), root.clone())
        }
        DataSource::Folders { normal, abnormal, masks } => {
            if !normal.is_dir() {
                return Err(DataError::Layout {
                    path: normal.clone(),
                    problem: "not a folder".into(),
                    expected: FOLDER_LAYOUT,
                });
            }
            let mut test = vec![];
            if let Some(ab) = abnormal {
                for path in list_images(ab)? {
                    let mask = masks.as_ref().and_then(|m| find_mask(m, &path));
                    test.push(TestImage { path, kind: "defect".into(), mask, class: None });
                }
            }
            (list_images(normal)?, test, format!("folder {}", normal.display()), normal.clone())
        }
    };
    if normal.len() < MIN_NORMAL {
        if normal.is_empty() {
            return Err(DataError::Layout {
                path: root,
                problem: "no normal images".into(),
                expected: if matches!(source, DataSource::Mvtec(_)) { MVTEC_LAYOUT } else { FOLDER_LAYOUT },
            });
        }
        return Err(DataError::TooFew { path: root, found: normal.len(), needed: MIN_NORMAL });
    }
    let (train, val) = split(normal, val_fraction, seed);
    Ok(DataSet { train, val, test, description, classes: vec![], train_class: vec![], val_class: vec![] })
}

/// A file that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// What was wrong with it.
    pub reason: String,
}

/// Reads one image and makes its model inputs exactly as the daemon does.
pub fn load_inputs(pre: &Preprocessor, path: &Path) -> Result<Inputs, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    pre.inputs_from_bytes(&bytes).map_err(|e| e.to_string())
}

/// Reads one image as flat `[C, H, W]` tensors: one, or one per tile for a tiled model.
pub fn load_image(pre: &Preprocessor, path: &Path) -> Result<Vec<Vec<f32>>, String> {
    Ok(load_inputs(pre, path)?.tensors.into_iter().map(|t| t.into_raw_vec_and_offset().0).collect())
}

/// Loads a mask aligned with an anomaly map: the map's `area` of the image, resized
/// (nearest) to the map's `width × height`; `true` = defect.
pub fn load_mask(path: &Path, area: (u32, u32, u32, u32), width: u32, height: u32) -> Result<Vec<bool>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let img = decode(&bytes).map_err(|e| e.to_string())?.to_luma8();
    let (x, y, w, h) = area;
    let img = if x + w <= img.width() && y + h <= img.height() {
        image::imageops::crop_imm(&img, x, y, w, h).to_image()
    } else {
        img // a mask of another size than its image: taken whole
    };
    let img = image::imageops::resize(&img, width, height, image::imageops::FilterType::Nearest);
    Ok(img.pixels().map(|p| p.0[0] > 127).collect())
}

/// A fingerprint of the training data: SHA-256 over sorted file names and contents.
pub fn fingerprint(paths: &[PathBuf]) -> String {
    let mut h = Sha256::new();
    let mut sorted: Vec<&PathBuf> = paths.iter().collect();
    sorted.sort();
    for p in sorted {
        h.update(p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default().as_bytes());
        h.update([0]);
        if let Ok(bytes) = std::fs::read(p) {
            h.update(Sha256::digest(&bytes));
        }
    }
    vigil_model::digest::hex(&h.finalize())
}

/// Gray when the first readable training image is gray, else RGB.
pub fn detect_channels(paths: &[PathBuf]) -> usize {
    for p in paths.iter().take(8) {
        if let Ok(img) = std::fs::read(p).map_err(|e| e.to_string()).and_then(|b| decode(&b).map_err(|e| e.to_string()))
        {
            return if img.color().has_color() { 3 } else { 1 };
        }
    }
    3
}
