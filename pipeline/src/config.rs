//! The training configuration: every `vigil-train train` option, settable from a TOML file,
//! saved in the run folder so that a run can be resumed and reproduced.

use std::path::Path;

use serde::{Deserialize, Serialize};
use vigil_model::bundle::manifest::{PixelError, Reduction, Tiling};
use vigil_model::onnx::reference::ArchSpec;

use crate::family::autoencoder::{AutoencoderConfig, ReconstructionLoss};
use crate::family::features::config::FeatureConfig;
use crate::family::features::fae::FaeConfig;
use crate::family::features::fdisc::FdiscConfig;
use crate::family::features::padim::PadimConfig;
use crate::family::features::patchcore::PatchcoreConfig;
use crate::family::features::student::StudentConfig;
use crate::family::gan::GanConfig;
use crate::family::kind::{GanScore, ModelKind};

/// Data augmentation of the training images (all off by default: many parts have an
/// orientation, and a flipped part is not a normal part).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Augment {
    /// Random horizontal flips.
    pub hflip: bool,
    /// Random vertical flips.
    pub vflip: bool,
    /// Random brightness change of up to ± this (pixels are in [0, 1]).
    pub brightness: f32,
    /// Random shift of up to ± this many pixels in each direction, edges repeated
    /// (for cameras whose parts are not placed to the pixel).
    pub shift: usize,
}

/// What the autoencoders (DAE, VAE, and the feature autoencoder `fae`) learn to remove from
/// their input. Written `"synthetic"`, `"gaussian"`, `"none"` or `"cyclegan:RUN"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(try_from = "String", into = "String")]
pub enum Corruption {
    /// Synthetic defects (blobs of foreign texture, intensity changes, scratches; see
    /// `data/corrupt.rs`): the network learns to restore normal images, so real defects stand out
    /// in the residual. The default: on real images it detects defects that a network
    /// trained on noise reconstructs. `fae`: the features of each training image with such
    /// defects pasted on, computed once.
    #[default]
    Synthetic,
    /// Gaussian noise of `noise_sigma` (the classic denoising autoencoder; DAE only), or, for
    /// `fae`, of `fae_noise` on the standardised features.
    Gaussian,
    /// None: the input is the image (a plain autoencoder).
    None,
    /// Realistic defects: each training image through the normal → defective generator of
    /// this CycleGAN run (`vigil-train cyclegan`, trained at the model's size and colour); DAE
    /// and VAE.
    CycleGan(std::path::PathBuf),
}

impl TryFrom<String> for Corruption {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        Ok(match s.as_str() {
            "synthetic" => Corruption::Synthetic,
            "gaussian" => Corruption::Gaussian,
            "none" => Corruption::None,
            other => match other.strip_prefix("cyclegan:") {
                Some(run) if !run.is_empty() => Corruption::CycleGan(run.into()),
                _ => {
                    return Err(format!(
                        "corruption `{other}`: use \"synthetic\", \"gaussian\", \"none\" or \"cyclegan:RUN\" (a `vigil-train cyclegan` run folder)"
                    ));
                }
            },
        })
    }
}

impl From<Corruption> for String {
    fn from(c: Corruption) -> String {
        match c {
            Corruption::Synthetic => "synthetic".into(),
            Corruption::Gaussian => "gaussian".into(),
            Corruption::None => "none".into(),
            Corruption::CycleGan(run) => format!("cyclegan:{}", run.display()),
        }
    }
}

/// Everything that shapes a training run: the options every family reads, and a section per
/// family (beside the family's code). `train.toml` keeps every key at the top level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "FlatConfig", into = "FlatConfig")]
pub struct TrainConfig {
    /// `dae`, `vae`, `gan` or `wgan`.
    pub model: ModelKind,
    /// Passes over the training images.
    pub epochs: u32,
    /// Images per step (lowered to the number of training images when there are fewer).
    pub batch: usize,
    /// Side of the square model input in pixels (a power of two, at least 32).
    pub size: usize,
    /// 1 (gray) or 3 (RGB); absent: gray when the first training image is gray, else RGB.
    pub channels: Option<usize>,
    /// The product classes of a conditional model, in class order (set from the data by
    /// `--conditional` or `--classes`); empty: one product.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
    /// Stretch each channel's level range, measured on the training images, to [0, 1]
    /// (recorded in the bundle as `input.mean`/`input.std`): a dim or low-contrast camera
    /// then trains as a full-range one does.
    pub normalize: bool,
    /// Per channel, the levels (as fractions of 255) that `normalize` maps to 0 and 1.
    /// Measured at the start of a run when absent, then kept in the run's `train.toml`, so a
    /// resumed or retrained model sees its inputs as before.
    pub pixel_range: Option<Vec<[f32; 2]>>,
    /// Latent size.
    pub latent: usize,
    /// Channels of the first encoder convolution.
    pub width: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Adam beta 1.
    pub beta1: f32,
    /// Adam beta 2.
    pub beta2: f32,
    /// Seed of every random choice.
    pub seed: u64,
    /// Share of the normal images held out to calibrate the threshold.
    pub val_fraction: f64,
    /// Quantile of validation-normal scores used as the threshold.
    pub quantile: f64,
    /// The threshold as about this many false alarms per 1000 good parts (the quantile
    /// `1 - rate / 1000` of validation normals, also when defects are labelled); instead of
    /// `quantile`.
    pub false_alarms_per_1000: Option<f64>,
    /// The threshold that catches this share of the labelled validation defects
    /// (`--val-abnormal`), its false-alarm rate reported; instead of `quantile`.
    pub recall_target: Option<f64>,
    /// What the DAE and VAE learn to remove: `synthetic` defects, `gaussian` noise, `none`.
    pub corruption: Corruption,
    /// The anomaly map's per-pixel measure: `squared`, `absolute`, `ssim` (structural
    /// dissimilarity) or `ssim_squared` (both added).
    pub pixel_error: PixelError,
    /// Gaussian smoothing of the anomaly map, in pixels at the model's size.
    pub smoothing_sigma: f32,
    /// Anomaly map to image score.
    pub reduction: Reduction,
    /// Training-time augmentation.
    pub augment: Augment,
    /// Decoded training images kept in memory, in MiB; a larger set is read from disk per
    /// batch, so data sets larger than memory train too.
    pub cache_mib: usize,
    /// Cut images into `size`-pixel tiles instead of resizing them (`{ overlap = 16,
    /// max_side = 1024 }`): for large images with small defects. Training takes every tile
    /// as a sample; scoring stitches the tiles' maps. Absent: resize.
    pub tiling: Option<Tiling>,
    /// The autoencoders trained from scratch (DAE, VAE): `noise_sigma`, `kl_weight`, `loss`.
    pub autoencoder: AutoencoderConfig,
    /// The GANs (GAN, WGAN, the f-AnoGAN encoder): `n_critic`, `gp_weight`,
    /// `feature_weight`, `encoder_epochs`, `gan_score`.
    pub gan: GanConfig,
    /// What the feature families share: `backbone`, `aspect`.
    pub features: FeatureConfig,
    /// PaDiM: `padim_dims`.
    pub padim: PadimConfig,
    /// PatchCore: `bank_size`.
    pub patchcore: PatchcoreConfig,
    /// The feature autoencoder: `fae_latent`, `fae_lr`, `fae_noise`, `fae_variational`.
    pub fae: FaeConfig,
    /// The feature discriminator: `fdisc_hidden`, `fdisc_steps`, `fdisc_cells`, `fdisc_lr`,
    /// `fdisc_noise`, `fdisc_standardise`.
    pub fdisc: FdiscConfig,
    /// The student–teacher family: `student_width`, `student_steps`, `student_batch`,
    /// `student_lr`, `student_hard_share`.
    pub student: StudentConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: ModelKind::Padim,
            epochs: 30,
            batch: 64,
            size: 256,
            channels: None,
            classes: vec![],
            normalize: true,
            pixel_range: None,
            latent: 128,
            width: 32,
            lr: 2e-4,
            beta1: 0.5,
            beta2: 0.999,
            seed: 0,
            val_fraction: 0.1,
            quantile: crate::evaluate::calibrate::DEFAULT_QUANTILE,
            false_alarms_per_1000: None,
            recall_target: None,
            corruption: Corruption::Synthetic,
            pixel_error: PixelError::Squared,
            smoothing_sigma: 4.0,
            reduction: Reduction::Max,
            augment: Augment::default(),
            cache_mib: 2048,
            tiling: None,
            autoencoder: AutoencoderConfig::default(),
            gan: GanConfig::default(),
            features: FeatureConfig::default(),
            padim: PadimConfig::default(),
            patchcore: PatchcoreConfig::default(),
            fae: FaeConfig::default(),
            fdisc: FdiscConfig::default(),
            student: StudentConfig::default(),
        }
    }
}

/// `train.toml` as it is written and read: every key at the top level, as it always was.
/// serde's `flatten` would accept unknown keys despite `deny_unknown_fields`, so the
/// sections are filled by hand from this flat form, which refuses them.
#[derive(Serialize, Deserialize)]
#[serde(rename = "TrainConfig", deny_unknown_fields, default)]
struct FlatConfig {
    model: ModelKind,
    epochs: u32,
    batch: usize,
    size: usize,
    channels: Option<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    classes: Vec<String>,
    normalize: bool,
    pixel_range: Option<Vec<[f32; 2]>>,
    latent: usize,
    width: usize,
    lr: f64,
    beta1: f32,
    beta2: f32,
    seed: u64,
    val_fraction: f64,
    quantile: f64,
    false_alarms_per_1000: Option<f64>,
    recall_target: Option<f64>,
    corruption: Corruption,
    noise_sigma: f32,
    kl_weight: f32,
    n_critic: usize,
    gp_weight: f32,
    feature_weight: f32,
    encoder_epochs: Option<u32>,
    gan_score: GanScore,
    loss: ReconstructionLoss,
    pixel_error: PixelError,
    smoothing_sigma: f32,
    reduction: Reduction,
    augment: Augment,
    cache_mib: usize,
    backbone: crate::backbone::Variant,
    aspect: Option<f32>,
    bank_size: usize,
    padim_dims: usize,
    fae_latent: usize,
    fae_lr: f64,
    fae_noise: f32,
    fae_variational: bool,
    fdisc_hidden: usize,
    fdisc_steps: usize,
    fdisc_cells: usize,
    fdisc_lr: f64,
    fdisc_noise: f32,
    fdisc_standardise: crate::family::features::fdisc::Standardise,
    student_width: usize,
    student_steps: usize,
    student_batch: usize,
    student_lr: f64,
    student_hard_share: f32,
    tiling: Option<Tiling>,
}

impl Default for FlatConfig {
    fn default() -> Self {
        TrainConfig::default().into()
    }
}

impl From<TrainConfig> for FlatConfig {
    fn from(c: TrainConfig) -> Self {
        FlatConfig {
            model: c.model,
            epochs: c.epochs,
            batch: c.batch,
            size: c.size,
            channels: c.channels,
            classes: c.classes,
            normalize: c.normalize,
            pixel_range: c.pixel_range,
            latent: c.latent,
            width: c.width,
            lr: c.lr,
            beta1: c.beta1,
            beta2: c.beta2,
            seed: c.seed,
            val_fraction: c.val_fraction,
            quantile: c.quantile,
            false_alarms_per_1000: c.false_alarms_per_1000,
            recall_target: c.recall_target,
            corruption: c.corruption,
            noise_sigma: c.autoencoder.noise_sigma,
            kl_weight: c.autoencoder.kl_weight,
            n_critic: c.gan.n_critic,
            gp_weight: c.gan.gp_weight,
            feature_weight: c.gan.feature_weight,
            encoder_epochs: c.gan.encoder_epochs,
            gan_score: c.gan.score,
            loss: c.autoencoder.loss,
            pixel_error: c.pixel_error,
            smoothing_sigma: c.smoothing_sigma,
            reduction: c.reduction,
            augment: c.augment,
            cache_mib: c.cache_mib,
            backbone: c.features.backbone,
            aspect: c.features.aspect,
            bank_size: c.patchcore.bank_size,
            padim_dims: c.padim.dims,
            fae_latent: c.fae.latent,
            fae_lr: c.fae.lr,
            fae_noise: c.fae.noise,
            fae_variational: c.fae.variational,
            fdisc_hidden: c.fdisc.hidden,
            fdisc_steps: c.fdisc.steps,
            fdisc_cells: c.fdisc.cells,
            fdisc_lr: c.fdisc.lr,
            fdisc_noise: c.fdisc.noise,
            fdisc_standardise: c.fdisc.standardise,
            student_width: c.student.width,
            student_steps: c.student.steps,
            student_batch: c.student.batch,
            student_lr: c.student.lr,
            student_hard_share: c.student.hard_share,
            tiling: c.tiling,
        }
    }
}

impl From<FlatConfig> for TrainConfig {
    fn from(f: FlatConfig) -> Self {
        TrainConfig {
            model: f.model,
            epochs: f.epochs,
            batch: f.batch,
            size: f.size,
            channels: f.channels,
            classes: f.classes,
            normalize: f.normalize,
            pixel_range: f.pixel_range,
            latent: f.latent,
            width: f.width,
            lr: f.lr,
            beta1: f.beta1,
            beta2: f.beta2,
            seed: f.seed,
            val_fraction: f.val_fraction,
            quantile: f.quantile,
            false_alarms_per_1000: f.false_alarms_per_1000,
            recall_target: f.recall_target,
            corruption: f.corruption,
            pixel_error: f.pixel_error,
            smoothing_sigma: f.smoothing_sigma,
            reduction: f.reduction,
            augment: f.augment,
            cache_mib: f.cache_mib,
            tiling: f.tiling,
            autoencoder: AutoencoderConfig { noise_sigma: f.noise_sigma, kl_weight: f.kl_weight, loss: f.loss },
            gan: GanConfig {
                n_critic: f.n_critic,
                gp_weight: f.gp_weight,
                feature_weight: f.feature_weight,
                encoder_epochs: f.encoder_epochs,
                score: f.gan_score,
            },
            features: FeatureConfig { backbone: f.backbone, aspect: f.aspect },
            padim: PadimConfig { dims: f.padim_dims },
            patchcore: PatchcoreConfig { bank_size: f.bank_size },
            fae: FaeConfig { latent: f.fae_latent, lr: f.fae_lr, noise: f.fae_noise, variational: f.fae_variational },
            fdisc: FdiscConfig {
                hidden: f.fdisc_hidden,
                steps: f.fdisc_steps,
                cells: f.fdisc_cells,
                lr: f.fdisc_lr,
                noise: f.fdisc_noise,
                standardise: f.fdisc_standardise,
            },
            student: StudentConfig {
                width: f.student_width,
                steps: f.student_steps,
                batch: f.student_batch,
                lr: f.student_lr,
                hard_share: f.student_hard_share,
            },
        }
    }
}

/// The input side a family trains at when none is given: the reference architecture's 128 for
/// the families trained from scratch, 256 for the feature families (a 32x32 feature grid).
pub fn default_size(model: ModelKind) -> usize {
    if model.is_feature() { 256 } else { 128 }
}

/// The narrowest level range `normalize` stretches: below it, sensor noise would be
/// amplified more than 20 times.
pub const MIN_SPAN: f32 = 0.05;

/// File name of the resolved config inside a run folder.
pub const CONFIG_FILE: &str = "train.toml";

impl TrainConfig {
    /// Reads a TOML file; unknown keys are errors. A file that leaves `size` out gets its
    /// family's default size.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
        let mut cfg: TrainConfig =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
        if !table.contains_key("size") {
            cfg.size = default_size(cfg.model);
        }
        Ok(cfg)
    }

    /// The same settings for family `model`: a size that is the old family's default becomes
    /// the new family's, any other size is kept.
    pub fn with_model(mut self, model: ModelKind) -> Self {
        if self.size == default_size(self.model) {
            self.size = default_size(model);
        }
        self.model = model;
        self
    }

    /// Writes the config as TOML.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, toml::to_string_pretty(self)?)?;
        Ok(())
    }

    /// The network sizes, once the channel count is known.
    pub fn arch(&self, channels: usize) -> ArchSpec {
        ArchSpec { channels, size: self.size, latent: self.latent, width: self.width, classes: self.classes.len() }
    }

    /// Where the threshold goes: `recall_target`, else `false_alarms_per_1000`, else
    /// `quantile`.
    pub fn operating_point(&self) -> crate::evaluate::calibrate::OperatingPoint {
        use crate::evaluate::calibrate::OperatingPoint;
        match (self.recall_target, self.false_alarms_per_1000) {
            (Some(r), _) => OperatingPoint::Recall(r),
            (None, Some(f)) => OperatingPoint::FalseAlarms(f),
            (None, None) => OperatingPoint::Quantile(self.quantile),
        }
    }

    /// Checks values before any work starts; the message names the option and the fix.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !(self.recall_target.is_some() && self.false_alarms_per_1000.is_some()),
            "recall_target and false_alarms_per_1000 both place the threshold: set one of them"
        );
        anyhow::ensure!(
            self.false_alarms_per_1000.is_none_or(|r| r.is_finite() && r > 0.0 && r < 1000.0),
            "false_alarms_per_1000 must be more than 0 and less than 1000 (e.g. 1.0: one false alarm in 1000 good parts)"
        );
        anyhow::ensure!(
            self.recall_target.is_none_or(|r| r.is_finite() && r > 0.0 && r <= 1.0),
            "recall_target must be more than 0 and at most 1 (e.g. 0.9: catch 9 in 10 of the labelled defects)"
        );
        if self.model.is_feature() {
            let multiple = vigil_model::onnx::features::INPUT_MULTIPLE;
            anyhow::ensure!(
                self.size >= 2 * multiple && self.size.is_multiple_of(multiple),
                "size must be a multiple of {multiple} and at least {} for {}",
                2 * multiple,
                self.model.family().as_str()
            );
            anyhow::ensure!(
                self.tiling.is_none(),
                "tiling is not available for the feature families yet; resize instead"
            );
            anyhow::ensure!(
                self.features.aspect.is_none_or(|a| a.is_finite() && (0.1..=10.0).contains(&a)),
                "aspect (height / width) must be between 0.1 and 10"
            );
            anyhow::ensure!(self.patchcore.bank_size >= 1, "bank_size must be at least 1");
            anyhow::ensure!(self.padim.dims >= 1, "padim_dims must be at least 1");
            anyhow::ensure!(self.fae.latent >= 1, "fae_latent must be at least 1");
            let d = &self.fdisc;
            anyhow::ensure!(
                d.hidden >= 1 && d.steps >= 1 && d.cells >= 1,
                "fdisc_hidden, fdisc_steps and fdisc_cells must be at least 1"
            );
            anyhow::ensure!(d.lr.is_finite() && d.lr > 0.0, "fdisc_lr must be a positive number");
            anyhow::ensure!(d.noise.is_finite() && d.noise > 0.0, "fdisc_noise must be a positive number");
            let st = &self.student;
            anyhow::ensure!(
                st.width >= 2 && st.steps >= 1 && st.batch >= 1,
                "student_width must be at least 2, student_steps and student_batch at least 1"
            );
            anyhow::ensure!(st.lr.is_finite() && st.lr > 0.0, "student_lr must be a positive number");
            anyhow::ensure!(
                st.hard_share.is_finite() && st.hard_share > 0.0 && st.hard_share <= 1.0,
                "student_hard_share must be in (0, 1]: the share of the largest errors the loss averages"
            );
            anyhow::ensure!(self.channels.is_none_or(|c| c == 3), "the feature families take RGB input: channels = 3");
        } else {
            self.arch(self.channels.unwrap_or(3))
                .validate()
                .map_err(|e| anyhow::anyhow!("--size/--channels/latent/width: {e}"))?;
        }
        anyhow::ensure!(self.epochs >= 1, "epochs must be at least 1");
        if let Some(range) = &self.pixel_range {
            anyhow::ensure!(
                self.channels.is_none_or(|c| c == range.len()),
                "pixel_range has {} entries; give one [low, high] per channel",
                range.len()
            );
            anyhow::ensure!(
                range.iter().all(|[lo, hi]| 0.0 <= *lo && lo + MIN_SPAN <= *hi && *hi <= 1.0),
                "pixel_range entries must be [low, high] with 0 <= low, high <= 1 and high - low >= {MIN_SPAN}; remove the key to measure it"
            );
        }
        anyhow::ensure!(self.batch >= 2, "batch must be at least 2 (batch norm needs two images)");
        anyhow::ensure!(self.lr > 0.0 && self.lr.is_finite(), "lr must be a positive number");
        anyhow::ensure!((0.0..0.9).contains(&self.val_fraction), "val_fraction must be in 0..0.9");
        anyhow::ensure!((0.5..=1.0).contains(&self.quantile), "quantile must be in 0.5..=1");
        anyhow::ensure!(self.autoencoder.noise_sigma >= 0.0, "noise_sigma must be 0 or more");
        anyhow::ensure!(self.gan.n_critic >= 1, "n_critic must be at least 1");
        anyhow::ensure!(self.smoothing_sigma >= 0.0, "smoothing_sigma must be 0 or more");
        if let Corruption::CycleGan(run) = &self.corruption {
            anyhow::ensure!(
                matches!(self.model, ModelKind::Dae | ModelKind::Vae),
                "corruption = \"cyclegan:{}\" corrupts images, for dae and vae; {} takes synthetic, gaussian or none",
                run.display(),
                self.model.family().as_str()
            );
        }
        if let Some(t) = &self.tiling {
            anyhow::ensure!(t.overlap < self.size, "tiling.overlap must be below size ({})", self.size);
            anyhow::ensure!(
                t.max_side.is_none_or(|m| m as usize >= self.size),
                "tiling.max_side must be at least size ({})",
                self.size
            );
            anyhow::ensure!(
                !self.model.is_gan(),
                "tiling needs a score computed from the anomaly map: use it with dae or vae"
            );
        }
        if let Reduction::TopKMean { k } = self.reduction {
            anyhow::ensure!(k >= 1 && k <= self.size * self.size, "reduction k must be 1..={}", self.size * self.size);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switching_family_moves_a_default_size_and_keeps_a_chosen_one() {
        let dae = TrainConfig::default().with_model(ModelKind::Dae);
        assert_eq!(dae.size, 128);
        assert_eq!(dae.clone().with_model(ModelKind::Padim).size, 256);
        let chosen = TrainConfig { size: 320, ..TrainConfig::default() };
        assert_eq!(chosen.with_model(ModelKind::Patchcore).size, 320);
    }

    #[test]
    fn train_toml_stays_flat_and_refuses_unknown_keys() {
        let mut cfg = TrainConfig::default();
        cfg.gan.n_critic = 3;
        cfg.padim.dims = 48;
        cfg.fae.variational = true;
        let text = toml::to_string_pretty(&cfg).unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(table["n_critic"].as_integer(), Some(3));
        assert_eq!(table["padim_dims"].as_integer(), Some(48));
        assert_eq!(table["fae_variational"].as_bool(), Some(true));
        for section in ["autoencoder", "gan", "features", "padim", "patchcore", "fae"] {
            assert!(!table.contains_key(section), "`{section}` written as a table");
        }
        assert_eq!(toml::from_str::<TrainConfig>(&text).unwrap(), cfg);
        // A key of no section, and a section's key written as a table, are both refused.
        for bad in ["learning_rate = 0.1", "n_critic = 2\nbank_sise = 10", "[gan]\nn_critic = 2"] {
            let err = toml::from_str::<TrainConfig>(bad).unwrap_err().to_string();
            assert!(err.contains("unknown field"), "{bad}: {err}");
        }
    }
}
