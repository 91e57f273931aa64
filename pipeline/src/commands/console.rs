//! What the subcommands share at the terminal: JSON lines on stdout, and Ctrl-C as a request
//! to stop training cleanly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::export::bundle::Exported;

/// Prints one JSON line.
pub fn print_json<T: serde::Serialize>(row: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(row)?);
    Ok(())
}

/// Says where the bundle went (stderr) and prints its summary as one JSON line.
pub fn print_export(e: &Exported) -> anyhow::Result<()> {
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

/// A flag set by the first Ctrl-C (training stops after the step and saves a checkpoint);
/// a second Ctrl-C quits at once.
pub fn stop_on_ctrl_c() -> anyhow::Result<Arc<AtomicBool>> {
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
