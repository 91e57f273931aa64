//! The versioned manifest of a model bundle: what a server needs to serve the model without guessing.
//!
//! The manifest is the contract between `vigil-train` (which writes it) and the daemon (which
//! reads it). Every struct refuses unknown keys, so a misspelt key is an error rather than a
//! silently ignored setting, and `schema_version` is checked before anything else so that a
//! manifest from a newer vigil is named as such instead of failing on its first new key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use super::calibration::{Normalization, Threshold, ThresholdMethod};

/// The newest manifest schema this build of vigil reads and writes: 2 added the
/// pretrained-feature families (`padim`, `patchcore`, `fae`, score source `features`), 3 the
/// conditional models (`conditioning`: a class input and a threshold per class), 4 the
/// feature discriminator (`fdisc`) and the thresholds set by an operating point
/// (`false_alarms`, `recall`), 5 the student–teacher family (`student`) and bundles whose graph
/// holds part of what a retrain extends (`training.head_in_graph`).
pub const SCHEMA_VERSION: u32 = 5;
/// The oldest schema it reads.
pub const OLDEST_SCHEMA_VERSION: u32 = 1;

/// Everything a server needs to know about a model: inputs, outputs, threshold, provenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`Manifest::required_schema_version`] for manifests this vigil writes: the oldest
    /// schema that can describe the bundle, so older vigils keep reading what they can serve.
    pub schema_version: u32,
    /// Short identifier of the model, e.g. `surface-dae`. Letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// Increases by one on every retrain of the same model.
    pub version: u32,
    /// When the bundle was written, RFC 3339 (UTC).
    pub created: String,
    /// Which kind of network computes the score.
    pub family: Family,
    /// Free text for people: what the model watches, how it was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// How a decoded image becomes the model's input tensor.
    pub input: InputSpec,
    /// Names of the graph outputs the server reads.
    pub outputs: OutputSpec,
    /// How the graph turns its output into the anomaly map and score (informational for
    /// `external` models, whose graph is opaque to vigil).
    pub score: ScoreSpec,
    /// The decision threshold on `score`.
    pub threshold: Threshold,
    /// Statistics of scores on normal images, used to report a 0..1 normalised score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalization: Option<Normalization>,
    /// Evaluation results, keyed by metric name (e.g. `image_auroc`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    /// How the model was trained; absent for external models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<Training>,
    /// The bundle this one was retrained from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Parent>,
    /// A conditional model: one graph for several products, told each image's class through
    /// a second input; absent for a model of one product.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditioning: Option<Conditioning>,
}

/// The classes of a conditional model and how the graph is told an image's class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conditioning {
    /// The graph input holding each image's class index, int64 `[N]`.
    pub input: String,
    /// The classes in index order: the class named `classes[i].name` is fed as `i`.
    pub classes: Vec<ClassSpec>,
}

/// One class of a conditional model, with its own calibration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassSpec {
    /// The class name cameras and messages use. Letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// The decision threshold for images of this class (the manifest's top-level
    /// `threshold` is calibrated on all classes together and serves only as a summary).
    pub threshold: Threshold,
    /// Statistics of this class's normal scores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalization: Option<Normalization>,
    /// Evaluation results on this class's test images.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
}

/// The model family, which decides how the score head was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// Denoising convolutional autoencoder.
    Dae,
    /// Variational autoencoder.
    Vae,
    /// DCGAN trained with the minimax loss.
    Gan,
    /// Wasserstein GAN with gradient penalty.
    Wgan,
    /// PaDiM on a pretrained backbone's features.
    Padim,
    /// PatchCore on a pretrained backbone's features.
    Patchcore,
    /// An autoencoder of a pretrained backbone's features.
    Fae,
    /// A discriminator trained on a pretrained backbone's features against synthetic
    /// anomalies (and confirmed defects, when there are some).
    Fdisc,
    /// A student network trained to predict a pretrained backbone's features from the image;
    /// scored by their difference.
    Student,
    /// A model made elsewhere; its graph already outputs a score.
    External,
}

impl Family {
    /// The oldest manifest schema that has this family (see
    /// [`Manifest::required_schema_version`] for the whole manifest).
    pub fn schema_version(self) -> u32 {
        match self {
            Family::Padim | Family::Patchcore | Family::Fae => 2,
            Family::Fdisc => 4,
            Family::Student => 5,
            _ => 1,
        }
    }

    /// The name used in manifests and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Dae => "dae",
            Family::Vae => "vae",
            Family::Gan => "gan",
            Family::Wgan => "wgan",
            Family::Padim => "padim",
            Family::Patchcore => "patchcore",
            Family::Fae => "fae",
            Family::Fdisc => "fdisc",
            Family::Student => "student",
            Family::External => "external",
        }
    }
}

/// Colour handling of the input image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ColorMode {
    /// One channel, luma of the decoded image.
    Gray,
    /// Three channels, R G B in that order.
    Rgb,
}

impl ColorMode {
    /// The number of tensor channels this mode produces.
    pub fn channels(self) -> usize {
        match self {
            ColorMode::Gray => 1,
            ColorMode::Rgb => 3,
        }
    }
}

/// The interpolation used when resizing to the model's input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ResizeFilter {
    /// Nearest neighbour.
    Nearest,
    /// Bilinear (a triangle kernel); the default, as in most training pipelines.
    #[default]
    Bilinear,
    /// Bicubic (Catmull-Rom).
    Bicubic,
    /// Lanczos with a window of 3.
    Lanczos3,
}

/// What happens to the aspect ratio when the image does not have the model's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    /// Scale each axis independently to the input size (the aspect ratio may change).
    #[default]
    Stretch,
    /// Scale so the shorter side fits, then cut the centre (nothing is distorted, edges are lost).
    CenterCrop,
}

/// Memory layout of the input tensor. Only NCHW exists today; the field makes it explicit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// Batch, channels, height, width.
    #[default]
    Nchw,
}

/// How a decoded image becomes the input tensor: `((pixel * scale) - mean[c]) / std[c]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Name of the graph input.
    pub name: String,
    /// Tensor channels: 1 for `gray`, 3 for `rgb`.
    pub channels: usize,
    /// Tensor height in pixels.
    pub height: usize,
    /// Tensor width in pixels.
    pub width: usize,
    /// Whether the image is converted to gray or RGB before scaling.
    pub color: ColorMode,
    /// Interpolation used by the resize.
    #[serde(default)]
    pub resize_filter: ResizeFilter,
    /// Aspect handling of the resize.
    #[serde(default)]
    pub resize_mode: ResizeMode,
    /// Multiplies 8-bit pixel values; 1/255 maps them to [0, 1].
    pub scale: f32,
    /// Subtracted per channel after scaling.
    pub mean: Vec<f32>,
    /// Divides per channel after the mean is subtracted.
    pub std: Vec<f32>,
    /// Tensor layout.
    #[serde(default)]
    pub layout: Layout,
    /// Cut frames into model-sized tiles instead of resizing them (large frames, small
    /// defects); absent: resize.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiling: Option<Tiling>,
}

/// Tiling: a frame is cut into tiles of the input's size, each tile is scored, the tiles'
/// anomaly maps are stitched back into one map of the frame (averaged where tiles overlap),
/// and the frame's score is `score.reduction` of that map. `resize_mode` does not apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tiling {
    /// Pixels that neighbouring tiles share at least (tiles are spread evenly over the frame).
    #[serde(default)]
    pub overlap: usize,
    /// Frames whose longer side is above this are first scaled down, aspect kept, which
    /// bounds the number of tiles; absent: tiles at the frame's own resolution.
    #[serde(default)]
    pub max_side: Option<u32>,
}

/// Names of the outputs the server reads from the graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// The image score, shape `[N]` (or `[N, 1]`); higher means more anomalous.
    pub score: String,
    /// The per-pixel anomaly map, shape `[N, 1, H, W]`, if the model has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly_map: Option<String>,
}

/// Where the score comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreSource {
    /// Error between the input and the model's reconstruction of it.
    Reconstruction,
    /// How fake the discriminator or critic finds the input (−logit).
    Discriminator,
    /// Reconstruction through an encoder into the generator's latent space plus the
    /// discriminator-feature error (f-AnoGAN).
    EncoderFeatures,
    /// A distance in a pretrained backbone's feature space (PaDiM, PatchCore, feature
    /// autoencoder), per grid cell, upsampled to the input.
    Features,
    /// Computed by a graph vigil did not write.
    External,
}

/// The per-pixel error measure of a reconstruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PixelError {
    /// `(x - x̂)²`, averaged over channels.
    #[default]
    Squared,
    /// `|x - x̂|`, averaged over channels.
    Absolute,
    /// `1 - SSIM(x, x̂)`: the structural dissimilarity of each pixel's neighbourhood (means,
    /// variances and covariance over a Gaussian window of σ 1.5 px, 11 taps, reflect border;
    /// the constants of Wang et al. 2004 for the input's dynamic range), averaged over
    /// channels. It sees a changed texture or a missing edge that leaves the mean intensity,
    /// and so the squared error, nearly unchanged.
    Ssim,
    /// `(x - x̂)² + (1 - SSIM(x, x̂))`, averaged over channels: intensity and structure.
    SsimSquared,
}

impl PixelError {
    /// Whether the measure includes the structural term.
    pub fn uses_ssim(self) -> bool {
        matches!(self, PixelError::Ssim | PixelError::SsimSquared)
    }
}

/// Standard deviation in pixels of the SSIM window.
pub const SSIM_SIGMA: f32 = 1.5;
/// Radius in pixels of the SSIM window (11 taps, as Wang et al.).
pub const SSIM_RADIUS: usize = 5;

impl InputSpec {
    /// Per channel, the span of the graph's input values that pixel values 0..=255 map to:
    /// the `L` of SSIM's stabilising constants `(0.01 L)²` and `(0.03 L)²`.
    pub fn dynamic_range(&self) -> Vec<f32> {
        (0..self.channels)
            .map(|c| 255.0 * self.scale / self.std.get(c).or(self.std.first()).copied().unwrap_or(1.0))
            .collect()
    }
}

/// How the image score is reduced from the anomaly map.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reduction {
    /// The largest map value: sensitive to small defects.
    Max,
    /// The mean of the map.
    Mean,
    /// The mean of the `k` largest map values: nearly as sensitive as `max`, less noisy.
    TopKMean {
        /// How many pixels are averaged.
        k: usize,
    },
}

/// How the graph computes the anomaly map and score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreSpec {
    /// What the score measures.
    pub source: ScoreSource,
    /// Per-pixel error of the reconstruction.
    #[serde(default)]
    pub pixel_error: PixelError,
    /// Standard deviation in pixels of the Gaussian that smooths the map; 0 for none.
    #[serde(default)]
    pub smoothing_sigma: f32,
    /// Map to image score.
    pub reduction: Reduction,
    /// Weight of the discriminator-feature error (`encoder_features` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_weight: Option<f32>,
}

/// How the model was trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Training {
    /// SHA-256 over the sorted training file names and contents.
    pub data_fingerprint: String,
    /// Where the data came from, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Seed of every random choice in training.
    pub seed: u64,
    /// Epochs trained.
    pub epochs: u32,
    /// Number of training images.
    #[serde(default)]
    pub images: usize,
    /// The vigil version that trained the model.
    pub vigil_version: String,
    /// Training device, e.g. `cpu` or the GPU adapter name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Everything else worth keeping (hyper-parameters), as free JSON.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub config: serde_json::Map<String, serde_json::Value>,
    /// What a retrain extends is partly in the graph: `weights.safetensors` holds only what
    /// `model.onnx` does not (PaDiM's means and image count; its covariances are rebuilt from
    /// the graph's inverses), so the bundle carries them once. Schema 5.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub head_in_graph: bool,
}

/// The bundle a retrained bundle came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parent {
    /// Name of the parent bundle.
    pub name: String,
    /// Version of the parent bundle.
    pub version: u32,
    /// SHA-256 of the parent's `model.onnx`.
    pub model_sha256: String,
}

/// A manifest that parsed but says something impossible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {problem}")]
pub struct ManifestProblem {
    /// Dotted path of the offending key.
    pub key: String,
    /// What is wrong and what to write instead.
    pub problem: String,
}

/// Whether `name` is usable as a bundle or class name.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Manifest {
    /// The oldest schema that can describe this manifest: its family's, 3 for a conditional
    /// model, 4 for an operating-point threshold, 5 when the graph holds part of what a retrain
    /// extends.
    pub fn required_schema_version(&self) -> u32 {
        let conditional = if self.conditioning.is_some() { 3 } else { 1 };
        let classes = self.conditioning.iter().flat_map(|c| c.classes.iter().map(|k| &k.threshold));
        let operating_point = std::iter::once(&self.threshold).chain(classes).map(Threshold::schema_version).max();
        let head_in_graph = if self.training.as_ref().is_some_and(|t| t.head_in_graph) { 5 } else { 1 };
        self.family.schema_version().max(conditional).max(operating_point.unwrap_or(1)).max(head_in_graph)
    }

    /// The class names of a conditional model, in index order (empty for other models).
    pub fn class_names(&self) -> Vec<&str> {
        self.conditioning.iter().flat_map(|c| c.classes.iter().map(|k| k.name.as_str())).collect()
    }

    /// The index of class `name`, or an error naming the classes the model knows.
    pub fn class_index(&self, name: &str) -> Result<usize, String> {
        let Some(c) = &self.conditioning else {
            return Err(format!(
                "model `{}` is not conditional; it takes no class (remove `class` from the camera or message)",
                self.name
            ));
        };
        c.classes.iter().position(|k| k.name == name).ok_or_else(|| {
            format!(
                "unknown class `{name}`: model `{}` knows {}; fix the camera's `class` or the message's `class` field",
                self.name,
                self.class_names().join(", ")
            )
        })
    }

    /// The class index of an image given its class name, if any: a conditional model needs
    /// one of its classes, any other model none. The error names the classes and the fix.
    pub fn resolve_class(&self, name: Option<&str>) -> Result<Option<usize>, String> {
        match (name, &self.conditioning) {
            (None, None) => Ok(None),
            (Some(name), _) => self.class_index(name).map(Some),
            (None, Some(_)) => Err(format!(
                "model `{}` is conditional (one model for several products) and the image has no class; name one of {} (`--class`, the camera's `class`, or the message's class field)",
                self.name,
                self.class_names().join(", ")
            )),
        }
    }

    /// The threshold and normalisation statistics that decide an image of class `class`
    /// (the top-level ones for a model of one product).
    pub fn calibration(&self, class: Option<usize>) -> (&Threshold, Option<&Normalization>) {
        match (&self.conditioning, class) {
            (Some(c), Some(i)) if i < c.classes.len() => (&c.classes[i].threshold, c.classes[i].normalization.as_ref()),
            _ => (&self.threshold, self.normalization.as_ref()),
        }
    }

    /// Checks the values serde cannot: sizes, matching lengths, finite numbers.
    pub fn validate(&self) -> Result<(), ManifestProblem> {
        let bad = |key: &str, problem: String| Err(ManifestProblem { key: key.to_owned(), problem });
        if !(OLDEST_SCHEMA_VERSION..=SCHEMA_VERSION).contains(&self.schema_version) {
            return bad(
                "schema_version",
                format!("is {}, this vigil reads {OLDEST_SCHEMA_VERSION} to {SCHEMA_VERSION}", self.schema_version),
            );
        }
        if self.conditioning.is_some() && self.schema_version < 3 {
            return bad(
                "schema_version",
                format!("is {}, but a conditional model (`conditioning`) needs schema_version 3", self.schema_version),
            );
        }
        if self.schema_version < self.family.schema_version() {
            return bad(
                "schema_version",
                format!(
                    "is {}, but family `{}` needs schema_version {}",
                    self.schema_version,
                    self.family.as_str(),
                    self.family.schema_version()
                ),
            );
        }
        if !is_plain_name(&self.name) {
            return bad(
                "name",
                format!("{:?} must be non-empty and use only letters, digits, '-', '_' and '.'", self.name),
            );
        }
        let input = &self.input;
        if input.name.is_empty() {
            return bad("input.name", "must name the graph input".into());
        }
        if input.channels != input.color.channels() {
            return bad(
                "input.channels",
                format!(
                    "is {} but input.color {:?} has {} channel(s)",
                    input.channels,
                    input.color,
                    input.color.channels()
                ),
            );
        }
        for (key, v) in [("input.height", input.height), ("input.width", input.width)] {
            if !(1..=8192).contains(&v) {
                return bad(key, format!("is {v}, expected 1..=8192 pixels"));
            }
        }
        if !(input.scale.is_finite() && input.scale > 0.0) {
            return bad(
                "input.scale",
                format!("is {}, expected a positive number such as 0.00392156862745098 (1/255)", input.scale),
            );
        }
        for (key, values) in [("input.mean", &input.mean), ("input.std", &input.std)] {
            if values.len() != input.channels {
                return bad(
                    key,
                    format!("has {} value(s), expected one per channel ({})", values.len(), input.channels),
                );
            }
            if values.iter().any(|v| !v.is_finite()) {
                return bad(key, "must hold finite numbers".into());
            }
        }
        if input.std.iter().any(|v| *v <= 0.0) {
            return bad("input.std", "must be positive".into());
        }
        if let Some(t) = &input.tiling {
            if t.overlap >= input.height.min(input.width) {
                return bad("input.tiling.overlap", format!("is {}, must be below the tile size", t.overlap));
            }
            if t.max_side.is_some_and(|m| (m as usize) < input.height.max(input.width)) {
                return bad("input.tiling.max_side", "must be at least the tile size".into());
            }
            if self.outputs.anomaly_map.is_none()
                || matches!(self.score.source, ScoreSource::Discriminator | ScoreSource::EncoderFeatures)
            {
                return bad(
                    "input.tiling",
                    "needs a model whose score is a reduction of its anomaly_map output (stitched from the tiles)"
                        .into(),
                );
            }
        }
        if self.outputs.score.is_empty() {
            return bad("outputs.score", "must name the graph's score output".into());
        }
        if let Some(map) = &self.outputs.anomaly_map
            && (map.is_empty() || *map == self.outputs.score)
        {
            return bad("outputs.anomaly_map", "must name an output other than the score, or be left out".into());
        }
        if self.score.pixel_error.uses_ssim() && input.height.min(input.width) <= SSIM_RADIUS {
            return bad(
                "score.pixel_error",
                format!(
                    "SSIM needs an input of at least {} pixels a side (its window); use \"squared\" for this {}x{} input",
                    SSIM_RADIUS + 1,
                    input.width,
                    input.height
                ),
            );
        }
        if !(self.score.smoothing_sigma.is_finite() && self.score.smoothing_sigma >= 0.0) {
            return bad("score.smoothing_sigma", "must be 0 or a positive number of pixels".into());
        }
        if let Reduction::TopKMean { k } = self.score.reduction {
            let pixels = input.height * input.width;
            if k == 0 || k > pixels {
                return bad("score.reduction.k", format!("is {k}, expected 1..={pixels} (the map's pixel count)"));
            }
        }
        check_calibration("", &self.threshold, self.normalization.as_ref())?;
        if let Some(c) = &self.conditioning {
            if c.input.is_empty() || c.input == input.name {
                return bad("conditioning.input", "must name the graph's class input (not the image input)".into());
            }
            if c.classes.is_empty() {
                return bad("conditioning.classes", "must list at least one class".into());
            }
            for (i, k) in c.classes.iter().enumerate() {
                if !is_plain_name(&k.name) {
                    return bad(
                        &format!("conditioning.classes[{i}].name"),
                        format!("{:?} must be non-empty and use only letters, digits, '-', '_' and '.'", k.name),
                    );
                }
                if c.classes[..i].iter().any(|o| o.name == k.name) {
                    return bad(&format!("conditioning.classes[{i}].name"), format!("`{}` is listed twice", k.name));
                }
                check_calibration(&format!("conditioning.classes[{i}]."), &k.threshold, k.normalization.as_ref())?;
            }
        }
        Ok(())
    }

    /// The score normalised to 0..1 (0.5 at the threshold), when statistics exist.
    pub fn normalized_score(&self, score: f32, threshold: f32) -> Option<f32> {
        self.normalization.as_ref().map(|n| n.normalize(score, threshold))
    }
}

/// Checks a threshold and its normalisation statistics; `prefix` places them in the manifest.
fn check_calibration(prefix: &str, t: &Threshold, n: Option<&Normalization>) -> Result<(), ManifestProblem> {
    let bad = |key: &str, problem: String| Err(ManifestProblem { key: format!("{prefix}{key}"), problem });
    if !t.value.is_finite() {
        return bad("threshold.value", "must be a finite number".into());
    }
    if let Some(q) = t.quantile
        && !(0.0..=1.0).contains(&q)
    {
        return bad("threshold.quantile", format!("is {q}, expected 0..=1"));
    }
    if let Some(r) = t.false_alarms_per_1000
        && !(r > 0.0 && r < 1000.0)
    {
        return bad("threshold.false_alarms_per_1000", format!("is {r}, expected more than 0 and less than 1000"));
    }
    if let Some(r) = t.recall
        && !(r > 0.0 && r <= 1.0)
    {
        return bad("threshold.recall", format!("is {r}, expected more than 0 and at most 1"));
    }
    if let Some(n) = n {
        let values = [n.mean, n.std, n.min, n.median, n.max];
        if values.iter().any(|v| !v.is_finite()) || n.min > n.max {
            return bad("normalization", "must hold finite statistics with min <= max".into());
        }
    }
    Ok(())
}

impl InputSpec {
    /// The usual input of vigil's own models: pixels scaled to [0, 1], no mean/std shift.
    pub fn unit_range(name: &str, color: ColorMode, height: usize, width: usize) -> Self {
        let c = color.channels();
        InputSpec {
            name: name.into(),
            channels: c,
            height,
            width,
            color,
            resize_filter: ResizeFilter::Bilinear,
            resize_mode: ResizeMode::Stretch,
            scale: 1.0 / 255.0,
            mean: vec![0.0; c],
            std: vec![1.0; c],
            layout: Layout::Nchw,
            tiling: None,
        }
    }
}
