//! `vigil-train eval`: a bundle's scores on labelled images, as JSON and optionally a report.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use vigil_model::bundle::Bundle;
use vigil_model::engine::{self, EngineChoice, EngineConfig};

use crate::commands::args::DataArgs;
use crate::data::sets::{DataSource, TestImage, discover};

#[derive(Args)]
pub struct EvalArgs {
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
}

/// Every labelled image of `source` and its class names: the test images, and for plain
/// folders the normals too (they have no test split, and are labelled good by where they are).
fn labelled_images(source: &DataSource) -> anyhow::Result<(Vec<TestImage>, Vec<String>)> {
    let set = discover(source, 0.1, 0)?;
    let mut test = set.test.clone();
    let plain = |s: &DataSource| matches!(s, DataSource::Folders { .. });
    let plain_classes: Vec<bool> = match source {
        DataSource::Classes(c) | DataSource::Pooled(c) => c.iter().map(|(_, s)| plain(s)).collect(),
        other => vec![plain(other)],
    };
    let labelled = |i: usize| if set.classes.is_empty() { None } else { Some(i) };
    for (paths, classes) in [(&set.train, &set.train_class), (&set.val, &set.val_class)] {
        for (j, p) in paths.iter().enumerate() {
            let k = classes.get(j).copied().unwrap_or(0);
            if plain_classes[k] {
                test.push(TestImage { path: p.clone(), kind: "good".into(), mask: None, class: labelled(k) });
            }
        }
    }
    Ok((test, set.classes))
}

/// Scores the images with the bundle and prints the evaluation as one JSON line.
pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    let EvalArgs { bundle, data, engine: kind, report, class } = a;
    let bundle = Bundle::load(&bundle)?;
    let engine = engine::load(&bundle, &EngineConfig { kind, ..EngineConfig::default() })?;
    let source = data.source()?.context("pass --data DIR (MVTec layout) or --normal DIR --abnormal DIR")?;
    let (mut test, mut classes) = labelled_images(&source)?;
    anyhow::ensure!(!test.is_empty(), "no test images: MVTec layout needs DIR/test/<type>/");
    if let Some(name) = class {
        bundle.manifest.class_index(&name).map_err(anyhow::Error::msg)?;
        classes = vec![name];
        test.iter_mut().for_each(|t| t.class = Some(0));
    }
    if classes.is_empty() {
        // A conditional bundle cannot score images of no class.
        bundle.manifest.resolve_class(None).map_err(anyhow::Error::msg)?;
    }
    let (e, details) = crate::evaluate::scores::evaluate(&bundle, &engine, &test, &classes);
    if let Some(dir) = report {
        crate::evaluate::report::write(&dir, &bundle, &e, &details)?;
        eprintln!("report: {}", dir.join("index.md").display());
    }
    println!("{}", serde_json::to_string(&e)?);
    Ok(())
}
