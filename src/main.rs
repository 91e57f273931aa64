//! The `vigil` binary: parses the command line, calls the library, prints errors once.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use vigil::bundle::Bundle;
use vigil::bundle::manifest::Reduction;
use vigil::commands::{inspect, score, wrap};
use vigil::engine::{EngineChoice, EngineConfig};

#[derive(Parser)]
#[command(name = "vigil", version, about = "Edge anomaly detection for factory cameras")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct EngineArgs {
    /// Inference engine: auto prefers ONNX Runtime and falls back to tract.
    #[arg(long, value_enum, default_value_t = EngineChoice::Auto)]
    engine: EngineChoice,
    /// Threads per inference (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// The ONNX Runtime library (default: ORT_DYLIB_PATH, then the usual system places).
    #[arg(long)]
    ort_library: Option<PathBuf>,
}

impl EngineArgs {
    fn config(&self) -> EngineConfig {
        EngineConfig { kind: self.engine, threads: self.threads, ort_library: self.ort_library.clone() }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Score image files; prints one JSON line per image.
    Score {
        /// Bundle folder, or a .onnx file with an embedded manifest.
        #[arg(long)]
        model: PathBuf,
        #[command(flatten)]
        engine: EngineArgs,
        /// Image files (PNG, JPEG, BMP, TIFF).
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Print a bundle's manifest and its model's inputs and outputs as JSON.
    Inspect {
        /// Bundle folder, or a .onnx file with an embedded manifest.
        bundle: PathBuf,
    },
    /// Make a bundle from an ONNX model exported elsewhere.
    Wrap {
        /// The foreign .onnx file.
        model: PathBuf,
        /// Bundle folder to write.
        #[arg(long)]
        out: PathBuf,
        /// The output holding a reconstruction of the input: vigil appends its score head.
        #[arg(long, conflicts_with = "score", required_unless_present = "score")]
        reconstruction: Option<String>,
        /// The output holding a score the model computes itself (family `external`).
        #[arg(long)]
        score: Option<String>,
        /// The output holding the model's own anomaly map (with --score).
        #[arg(long, requires = "score")]
        map: Option<String>,
        /// Decision threshold on the score.
        #[arg(long)]
        threshold: f32,
        /// Bundle name (default: the file's stem).
        #[arg(long)]
        name: Option<String>,
        /// Pixel scale applied before mean/std.
        #[arg(long, default_value_t = 1.0 / 255.0)]
        scale: f32,
        /// Mean per channel (or one value for all), subtracted after scaling.
        #[arg(long, value_delimiter = ',', default_value = "0")]
        mean: Vec<f32>,
        /// Std per channel (or one value for all), dividing after the mean.
        #[arg(long, value_delimiter = ',', default_value = "1")]
        std: Vec<f32>,
        /// Gaussian smoothing of the anomaly map, in pixels (0 = none).
        #[arg(long, default_value_t = 4.0)]
        smoothing_sigma: f32,
        /// Map to score: max, mean, or top-k mean as `top-k:K`.
        #[arg(long, default_value = "max", value_parser = parse_reduction)]
        reduction: Reduction,
    },
}

fn parse_reduction(s: &str) -> Result<Reduction, String> {
    match s {
        "max" => Ok(Reduction::Max),
        "mean" => Ok(Reduction::Mean),
        _ => s
            .strip_prefix("top-k:")
            .and_then(|k| k.parse().ok())
            .map(|k| Reduction::TopKMean { k })
            .ok_or_else(|| format!("`{s}`: expected max, mean or top-k:K (K pixels)")),
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Score { model, engine, images } => {
            let (bundle, engine) = score::prepare(&model, &engine.config())?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            let failures = score::run(&bundle, &engine, &images, &mut out)?;
            out.flush()?;
            if failures > 0 {
                eprintln!("vigil score: {failures} of {} image(s) could not be scored", images.len());
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Inspect { bundle } => {
            let bundle = Bundle::load(&bundle)?;
            println!("{}", serde_json::to_string_pretty(&inspect::inspect(&bundle)?)?);
        }
        Command::Wrap {
            model,
            out,
            reconstruction,
            score,
            map,
            threshold,
            name,
            scale,
            mean,
            std,
            smoothing_sigma,
            reduction,
        } => {
            let outputs = match (reconstruction, score) {
                (Some(r), _) => wrap::ForeignOutputs::Reconstruction(r),
                (None, Some(score)) => wrap::ForeignOutputs::Score { score, map },
                (None, None) => unreachable!("clap requires one of --reconstruction and --score"),
            };
            let bundle = wrap::wrap(&wrap::WrapRequest {
                model,
                out,
                name,
                outputs,
                threshold,
                scale,
                mean,
                std,
                smoothing_sigma,
                reduction,
            })?;
            eprintln!("wrote bundle {}", bundle.path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG").unwrap_or_else(|_| "info,ort=warn".into()),
        )
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vigil: {e:#}");
            ExitCode::FAILURE
        }
    }
}
