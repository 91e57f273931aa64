//! The bundles the project ships: they load, fit their manifests, and separate the synthetic
//! test set as their manifests claim.

use std::path::Path;

use vigil_model::bundle::Bundle;
use vigil_model::engine::{self, EngineChoice};
use vigil_model::preprocess::{Preprocessor, decode};
use vigil_model::synth::{SynthConfig, generate};
use vigil_model::tiling::score_frames;

use crate::common::engine_config;

/// Image AUROC by ranks (ties count half).
fn auroc(normal: &[f32], defect: &[f32]) -> f64 {
    let mut wins = 0.0;
    for d in defect {
        for n in normal {
            wins += if d > n {
                1.0
            } else if d == n {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / (normal.len() * defect.len()) as f64
}

#[test]
fn the_default_bundle_separates_the_synthetic_test_set_as_its_manifest_claims() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/surface-dae");
    let bundle = Bundle::load(&root).unwrap();
    let m = &bundle.manifest;
    assert_eq!(m.name, "surface-dae");
    assert!(bundle.model_bytes.len() < 8 << 20, "the default bundle should stay small");
    let card = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(card.starts_with("---\n"), "the model card has YAML front matter");
    // The test set it was evaluated on, regenerated as models/README.md says.
    let dir = tempfile::tempdir().unwrap();
    let cfg = SynthConfig { n_train: 0, ..SynthConfig::default() };
    generate(dir.path(), &cfg).unwrap();
    let engine = engine::load(&bundle, &engine_config(EngineChoice::Tract)).unwrap();
    let pre = Preprocessor::new(&m.input);
    let (mut normal, mut defect) = (vec![], vec![]);
    for entry in walk(&dir.path().join("test")) {
        let inputs = pre.inputs(&decode(&std::fs::read(&entry).unwrap()).unwrap());
        let score = score_frames(&engine, &m.score, &[&inputs], None).unwrap()[0].0;
        let good = entry.parent().unwrap().file_name().unwrap() == "good";
        if good { normal.push(score) } else { defect.push(score) }
    }
    assert_eq!((normal.len(), defect.len()), (40, 40));
    let measured = auroc(&normal, &defect);
    let claimed = m.metrics["image_auroc"];
    assert!((measured - claimed).abs() < 0.01, "image AUROC {measured}, the manifest claims {claimed}");
    assert!(claimed >= 0.9, "the default bundle should detect synthetic defects (AUROC {claimed})");
    // And its threshold separates them as its recall and precision say (within a frame).
    let caught = defect.iter().filter(|s| **s > m.threshold.value).count() as f64;
    let false_alarms = normal.iter().filter(|s| **s > m.threshold.value).count() as f64;
    let (recall, precision) = (caught / 40.0, caught / (caught + false_alarms).max(1.0));
    eprintln!("default bundle: AUROC {measured:.3}, recall {recall:.3}, precision {precision:.3}");
    assert!((recall - m.metrics["recall"]).abs() <= 1.0 / 40.0 + 1e-9, "recall {recall} vs {:?}", m.metrics);
    assert!((precision - m.metrics["precision"]).abs() <= 0.03, "precision {precision} vs {:?}", m.metrics);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out.sort();
    out
}
