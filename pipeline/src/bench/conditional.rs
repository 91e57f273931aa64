//! `vigil-train bench-conditional`: one conditional model against one model trained on the
//! products pooled and one model per product, each scored on the same test images of each
//! product, so the table says what conditioning buys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde::Serialize;

use crate::config::TrainConfig;
use crate::data::sets::DataSource;
use crate::device::DeviceChoice;
use crate::evaluate::scores::Evaluation;
use crate::export::bundle::train_and_export;
use crate::train::RunDir;

/// How the products are modelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Setup {
    /// One model told each image's class.
    Conditional,
    /// One model of all products, not told the class.
    Pooled,
    /// One model per product.
    PerProduct,
}

/// One line of the comparison: a family in a setup, per product.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The family.
    pub model: crate::family::kind::ModelKind,
    /// How the products were modelled.
    pub setup: Setup,
    /// Image AUROC per product, each on that product's test images.
    pub auroc: BTreeMap<String, Option<f64>>,
    /// F1 per product at the threshold the setup calibrated for it.
    pub f1: BTreeMap<String, f64>,
    /// The mean of the products' image AUROC.
    pub mean_auroc: Option<f64>,
    /// Seconds spent training and exporting (all models of the setup).
    pub train_s: f64,
    /// Bundle folders written.
    pub bundles: Vec<PathBuf>,
}

/// What to compare.
#[derive(Debug, Clone)]
pub struct CompareRequest {
    /// The products, each a data source with test images.
    pub classes: Vec<(String, DataSource)>,
    /// The family settings (`model` included).
    pub config: TrainConfig,
    /// Where the runs go.
    pub root: PathBuf,
    /// Where to train.
    pub device: DeviceChoice,
}

fn run_one(
    req: &CompareRequest,
    source: DataSource,
    name: &str,
    stop: &AtomicBool,
) -> anyhow::Result<Option<(Evaluation, PathBuf)>> {
    let Some(e) = train_and_export(req.config.clone(), source, None, RunDir(req.root.join(name)), req.device, stop)?
    else {
        return Ok(None);
    };
    let evaluation = e.evaluation.ok_or_else(|| anyhow::anyhow!("{name}: no test images to evaluate on"))?;
    Ok(Some((evaluation, e.bundle.path)))
}

fn row(model: crate::family::kind::ModelKind, setup: Setup, started: Instant) -> Row {
    Row {
        model,
        setup,
        auroc: BTreeMap::new(),
        f1: BTreeMap::new(),
        mean_auroc: None,
        train_s: started.elapsed().as_secs_f64(),
        bundles: vec![],
    }
}

fn finish(mut r: Row, started: Instant) -> Row {
    let values: Vec<f64> = r.auroc.values().flatten().copied().collect();
    r.mean_auroc =
        (values.len() == r.auroc.len() && !values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64);
    r.train_s = started.elapsed().as_secs_f64();
    r
}

/// Trains and evaluates the three setups; calls `emit` with each row as it is done. Stops
/// early (without error) when `stop` is set.
pub fn compare(
    req: &CompareRequest,
    stop: &AtomicBool,
    emit: &mut dyn FnMut(&Row) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    anyhow::ensure!(req.classes.len() >= 2, "the comparison needs at least 2 products");
    let model = req.config.model;
    for (setup, source, name) in [
        (Setup::Conditional, DataSource::Classes(req.classes.clone()), "conditional"),
        (Setup::Pooled, DataSource::Pooled(req.classes.clone()), "pooled"),
    ] {
        let started = Instant::now();
        let Some((e, bundle)) = run_one(req, source, name, stop)? else { return Ok(()) };
        let mut r = row(model, setup, started);
        for (class, ce) in &e.per_class {
            r.auroc.insert(class.clone(), ce.image_auroc);
            r.f1.insert(class.clone(), ce.at_threshold.f1);
        }
        r.bundles.push(bundle);
        emit(&finish(r, started))?;
    }
    let started = Instant::now();
    let mut r = row(model, Setup::PerProduct, started);
    for (class, source) in &req.classes {
        let Some((e, bundle)) = run_one(req, source.clone(), &format!("product-{class}"), stop)? else {
            return Ok(());
        };
        r.auroc.insert(class.clone(), e.image_auroc);
        r.f1.insert(class.clone(), e.at_threshold.f1);
        r.bundles.push(bundle);
    }
    emit(&finish(r, started))
}

/// The products under `dir` (one subfolder each, as `train --conditional` reads them).
pub fn products_in(dir: &Path) -> anyhow::Result<Vec<(String, DataSource)>> {
    match DataSource::classes_in(dir)? {
        DataSource::Classes(c) => Ok(c),
        _ => unreachable!("classes_in returns classes"),
    }
}
