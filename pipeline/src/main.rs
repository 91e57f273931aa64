//! The `vigil-train` binary: parses the command line, calls the pipeline library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use vigil::bundle::manifest::Family;
use vigil::onnx::reference::ArchSpec;

#[derive(Parser)]
#[command(name = "vigil-train", version, about = "Train, calibrate, evaluate and export vigil model bundles")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModelArg {
    Dae,
    Vae,
    Gan,
    Wgan,
}

impl From<ModelArg> for Family {
    fn from(m: ModelArg) -> Family {
        match m {
            ModelArg::Dae => Family::Dae,
            ModelArg::Vae => Family::Vae,
            ModelArg::Gan => Family::Gan,
            ModelArg::Wgan => Family::Wgan,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Write an untrained reference-architecture bundle (random weights) for benchmarks.
    ReferenceBundle {
        /// Model family.
        #[arg(long, value_enum, default_value = "dae")]
        model: ModelArg,
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

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::ReferenceBundle { model, channels, size, seed, out } => {
            let spec = ArchSpec { channels, size, ..ArchSpec::default() };
            let bundle = vigil_pipeline::reference::write_reference_bundle(&out, model.into(), &spec, seed)?;
            eprintln!("wrote bundle {}", bundle.path.display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil-train: {e:#}");
            ExitCode::FAILURE
        }
    }
}
