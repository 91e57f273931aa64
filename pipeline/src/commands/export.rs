//! `vigil-train export`: a finished run as a calibrated, evaluated bundle.

use std::path::PathBuf;

use clap::Args;
use vigil_model::engine::EngineConfig;

use crate::commands::console::print_export;
use crate::export::bundle::{ExportRequest, export};
use crate::train::RunDir;

#[derive(Args)]
pub struct ExportArgs {
    /// The run folder.
    run: PathBuf,
    /// Bundle folder to write.
    #[arg(long)]
    out: PathBuf,
    /// Bundle name (default: the run folder's name).
    #[arg(long)]
    name: Option<String>,
}

/// Exports the run as version 1 of its bundle.
pub fn run(a: ExportArgs) -> anyhow::Result<()> {
    let ExportArgs { run, out, name } = a;
    let exported = export(&ExportRequest {
        run: RunDir(run),
        out,
        name,
        version: 1,
        parent: None,
        engine: EngineConfig::default(),
    })?;
    print_export(&exported)
}
