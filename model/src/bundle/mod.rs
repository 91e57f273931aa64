//! The model bundle: `model.onnx` plus `manifest.json`, read, written and validated here only.
//!
//! A bundle is a folder `NAME/` holding `model.onnx` and `manifest.json` (optionally a
//! `README.md` model card and `weights.safetensors`). The manifest is also embedded in the
//! ONNX file's `metadata_props` under [`METADATA_KEY`], so a lone `.onnx` file written by
//! vigil is a complete bundle too. When both exist, `manifest.json` wins: it is the copy a
//! person edits (a hand-tuned threshold, say).
//!
//! - [`manifest`]: the manifest's types and checks; [`calibration`] its threshold and score
//!   statistics.
//! - [`view`]: a light reading of the ONNX file (interface, metadata), weights not copied.
//! - [`install`]: putting a bundle in place on a box.

pub mod calibration;
pub mod install;
pub mod manifest;
pub mod view;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use manifest::{Manifest, OLDEST_SCHEMA_VERSION, SCHEMA_VERSION};

use prost::Message;
use tract_onnx::pb;

/// The `metadata_props` key that holds the manifest JSON inside `model.onnx`.
pub const METADATA_KEY: &str = "vigil.manifest";
/// File name of the model inside a bundle folder.
pub const MODEL_FILE: &str = "model.onnx";
/// File name of the manifest inside a bundle folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// What can go wrong reading or writing a bundle. Every message names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The path does not exist.
    #[error(
        "model bundle {0}: not found; pass a bundle folder (holding model.onnx and manifest.json) or a .onnx file written by vigil-train"
    )]
    NotFound(PathBuf),
    /// A bundle folder without `model.onnx`.
    #[error(
        "model bundle {0}: no model.onnx in this folder; a bundle folder holds model.onnx and manifest.json (vigil-train export writes both)"
    )]
    MissingModel(PathBuf),
    /// A file could not be read or written.
    #[error("model bundle {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The system error.
        source: std::io::Error,
    },
    /// `model.onnx` is not a readable ONNX protobuf.
    #[error(
        "model bundle {path}: not a valid ONNX file ({reason}); the file may be truncated or not ONNX: export it again"
    )]
    BadOnnx {
        /// The model file.
        path: PathBuf,
        /// The decoder's complaint.
        reason: String,
    },
    /// Neither `manifest.json` nor an embedded manifest exists.
    #[error(
        "model bundle {0}: no manifest.json beside the model and none embedded in it; write a manifest.json (see docs/bundle.md) or export the model with vigil-train"
    )]
    NoManifest(PathBuf),
    /// The manifest is not valid JSON of the expected shape.
    #[error("model bundle {origin}: {detail}; {hint}")]
    BadManifest {
        /// The manifest file (or `model.onnx#vigil.manifest`).
        origin: String,
        /// What serde or validation reported, with the key.
        detail: String,
        /// What to do about it.
        hint: String,
    },
    /// The manifest was written by a newer vigil.
    #[error(
        "model bundle {origin}: schema_version {found} is newer than this vigil reads ({supported}); upgrade vigil, or re-export the bundle with this version of vigil-train"
    )]
    NewerSchema {
        /// The manifest file.
        origin: String,
        /// The version in the file.
        found: u64,
        /// The version this build reads.
        supported: u32,
    },
    /// The model names data outside itself (ONNX external data): what the box would act on is
    /// then not what was hashed and signed, and a crafted path could read any file.
    #[error(
        "model bundle {path}: tensor `{tensor}` keeps its data in an external file; vigil serves self-contained models only: export it again with vigil-train (or save the ONNX with its data inside, e.g. onnx.save(model, path, save_as_external_data=False))"
    )]
    ExternalData {
        /// The model file.
        path: PathBuf,
        /// The first tensor that does.
        tensor: String,
    },
}

/// A loaded bundle: the manifest, the model bytes and their hash.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The path the bundle was loaded from (folder or `.onnx` file).
    pub path: PathBuf,
    /// The ONNX file.
    pub model_path: PathBuf,
    /// The validated manifest.
    pub manifest: Manifest,
    /// The ONNX file's bytes, read once and shared with the engines (emptied by
    /// [`crate::engine::load_releasing`] once the engine holds its own copy).
    pub model_bytes: Arc<[u8]>,
    /// Hex SHA-256 of `model_bytes`, reported in alerts.
    pub model_sha256: String,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io { path: path.to_path_buf(), source }
}

/// Parses and validates manifest JSON; `origin` names it in errors.
pub fn parse_manifest(bytes: &[u8], origin: &str) -> Result<Manifest, BundleError> {
    let bad = |detail: String, hint: &str| BundleError::BadManifest {
        origin: origin.to_owned(),
        detail,
        hint: hint.to_owned(),
    };
    // Look at the version before the shape, so a newer manifest is reported as newer
    // rather than as having "unknown fields".
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON: {e}"), "fix the JSON syntax"))?;
    match value.get("schema_version") {
        None => {
            return Err(bad("missing `schema_version`".into(), &format!("add \"schema_version\": {SCHEMA_VERSION}")));
        }
        Some(v) => match v.as_u64() {
            Some(found) if found > u64::from(SCHEMA_VERSION) => {
                return Err(BundleError::NewerSchema { origin: origin.to_owned(), found, supported: SCHEMA_VERSION });
            }
            Some(found) if found >= u64::from(OLDEST_SCHEMA_VERSION) => {}
            _ => {
                return Err(bad(
                    format!("`schema_version` is {v}"),
                    &format!("this vigil reads schema_version {OLDEST_SCHEMA_VERSION} to {SCHEMA_VERSION}"),
                ));
            }
        },
    }
    let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| {
        let msg = e.to_string();
        let hint = if msg.contains("unknown field") {
            "remove or correct that key (docs/bundle.md lists every key)"
        } else if msg.contains("missing field") {
            "add that key (docs/bundle.md lists every key)"
        } else {
            "correct that value (docs/bundle.md lists every key)"
        };
        bad(msg, hint)
    })?;
    manifest.validate().map_err(|p| bad(p.to_string(), "correct that value and load the bundle again"))?;
    Ok(manifest)
}

/// The manifest JSON embedded in a model, if any.
pub fn embedded_manifest(model: &view::ModelView) -> Option<&str> {
    model.metadata_props.iter().find(|p| p.key == METADATA_KEY).map(|p| p.value.as_str())
}

/// Stores the manifest JSON in the model's `metadata_props`, replacing an older copy.
pub fn embed_manifest(model: &mut pb::ModelProto, manifest: &Manifest) {
    let json = serde_json::to_string(manifest).expect("a manifest always serialises");
    model.metadata_props.retain(|p| p.key != METADATA_KEY);
    model.metadata_props.push(pb::StringStringEntryProto { key: METADATA_KEY.into(), value: json });
}

/// The first tensor of `model` (initializers and constant attributes, in subgraphs too) whose
/// data lives in an external file, if any.
fn external_tensor(model: &view::ModelView) -> Option<String> {
    fn external(t: &view::TensorView) -> bool {
        !t.external_data.is_empty() || t.data_location == Some(pb::tensor_proto::DataLocation::External as i32)
    }
    fn in_graph(g: &view::GraphView) -> Option<String> {
        let named = |t: &view::TensorView| if t.name.is_empty() { "(unnamed)".to_owned() } else { t.name.clone() };
        if let Some(t) = g.initializer.iter().find(|t| external(t)) {
            return Some(named(t));
        }
        if let Some(t) = g.sparse_initializer.iter().filter_map(|s| s.values.as_ref()).find(|t| external(t)) {
            return Some(named(t));
        }
        for n in &g.node {
            for a in &n.attribute {
                if let Some(t) = a.t.as_ref().filter(|t| external(t)).or_else(|| a.tensors.iter().find(|t| external(t)))
                {
                    return Some(format!("{} (attribute `{}` of node `{}`)", named(t), a.name, n.name));
                }
                if let Some(found) = a.g.as_ref().and_then(in_graph).or_else(|| a.graphs.iter().find_map(in_graph)) {
                    return Some(found);
                }
            }
        }
        None
    }
    model.graph.as_ref().and_then(in_graph)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BundleError> {
    crate::fsio::write_atomic(path, bytes).map_err(io_err(path))
}

impl Bundle {
    /// Loads a bundle folder, or a lone `.onnx` file with an embedded manifest.
    pub fn load(path: impl AsRef<Path>) -> Result<Bundle, BundleError> {
        let path = path.as_ref();
        let meta = fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => BundleError::NotFound(path.to_path_buf()),
            _ => io_err(path)(e),
        })?;
        let (model_path, manifest_path) = if meta.is_dir() {
            let model = path.join(MODEL_FILE);
            if !model.is_file() {
                return Err(BundleError::MissingModel(path.to_path_buf()));
            }
            (model, Some(path.join(MANIFEST_FILE)).filter(|m| m.exists()))
        } else {
            (path.to_path_buf(), None)
        };
        let model_bytes: Arc<[u8]> = fs::read(&model_path).map_err(io_err(&model_path))?.into();
        // Still refuse a model file that is not ONNX, even with a good manifest.
        let model = view::ModelView::decode(&model_bytes[..])
            .map_err(|e| BundleError::BadOnnx { path: model_path.clone(), reason: e.to_string() })?;
        if let Some(tensor) = external_tensor(&model) {
            return Err(BundleError::ExternalData { path: model_path, tensor });
        }
        let manifest = match manifest_path {
            Some(m) => {
                let bytes = fs::read(&m).map_err(io_err(&m))?;
                parse_manifest(&bytes, &m.display().to_string())?
            }
            None => {
                let json = embedded_manifest(&model).ok_or_else(|| BundleError::NoManifest(path.to_path_buf()))?;
                parse_manifest(json.as_bytes(), &format!("{}#{METADATA_KEY}", model_path.display()))?
            }
        };
        let model_sha256 = crate::digest::sha256_hex(&model_bytes);
        Ok(Bundle { path: path.to_path_buf(), model_path, manifest, model_bytes, model_sha256 })
    }

    /// Writes a bundle folder: the model with the manifest embedded, and `manifest.json`.
    /// Files are written to a temporary name and renamed, so a reader never sees half a bundle
    /// file. `extra` files (model card, weights) are written beside them.
    pub fn write(
        dir: impl AsRef<Path>,
        manifest: &Manifest,
        mut model: pb::ModelProto,
        extra: &[(&str, &[u8])],
    ) -> Result<Bundle, BundleError> {
        let dir = dir.as_ref();
        manifest.validate().map_err(|p| BundleError::BadManifest {
            origin: dir.join(MANIFEST_FILE).display().to_string(),
            detail: p.to_string(),
            hint: "this is a bug in the program that wrote the bundle".into(),
        })?;
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        embed_manifest(&mut model, manifest);
        let bytes = model.encode_to_vec();
        for (name, content) in extra {
            write_atomic(&dir.join(name), content)?;
        }
        let json = serde_json::to_vec_pretty(manifest).expect("a manifest always serialises");
        write_atomic(&dir.join(MANIFEST_FILE), &json)?;
        write_atomic(&dir.join(MODEL_FILE), &bytes)?;
        Bundle::load(dir)
    }

    /// The model's interface, metadata and tensor names, decoded without copying its weights
    /// (see [`view`]).
    pub fn model_view(&self) -> Result<view::ModelView, BundleError> {
        view::ModelView::decode(&self.model_bytes[..])
            .map_err(|e| BundleError::BadOnnx { path: self.model_path.clone(), reason: e.to_string() })
    }

    /// The model decoded as ONNX protobuf (for inspection; engines read `model_bytes`).
    pub fn model_proto(&self) -> Result<pb::ModelProto, BundleError> {
        pb::ModelProto::decode(&self.model_bytes[..])
            .map_err(|e| BundleError::BadOnnx { path: self.model_path.clone(), reason: e.to_string() })
    }
}
