//! Gated retraining on a camera's data set laid out as the daemon writes it (normal/,
//! abnormal/): a new bundle that is not worse on the held-out files replaces the served one
//! atomically, a worse one is set aside with the reason, and the held-out files never reach
//! training or calibration. PaDiM on a small synthetic set (fitted, not trained, so fast).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;

use vigil_model::bundle::Bundle;
use vigil_model::bundle::install::sibling;
use vigil_model::engine::{self, EngineChoice};
use vigil_model::synth::{SynthConfig, generate};
use vigil_pipeline::config::TrainConfig;
use vigil_pipeline::data::{DataSource, list_images};
use vigil_pipeline::device::DeviceChoice;
use vigil_pipeline::gate::{
    Figures, HOLDOUT_FRACTION, HeldOut, REPORT_FILE, Tolerances, figures, gate, holdout_rank, judge, split_holdout,
    stage,
};
use vigil_pipeline::model::ModelKind;
use vigil_pipeline::retrain::{GatedRequest, RetrainRequest, Verdict, retrain_gated};
use vigil_pipeline::train::{RunDir, RunState};

use crate::common::{engine_config, export_run, train_source};

/// The synthetic images (MVTec layout), written once per test process.
fn synthetic() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vigil-gate-tests-{}", std::process::id()));
        generate(&dir, &SynthConfig { size: 64, n_train: 120, n_test: 60, rgb: false, seed: 11 }).unwrap();
        dir
    })
}

fn padim() -> TrainConfig {
    TrainConfig {
        model: ModelKind::Padim,
        size: 64,
        epochs: 1,
        batch: 8,
        padim_dims: 48,
        smoothing_sigma: 1.0,
        // Enough validation normals for a threshold that holds on the held-out ones.
        val_fraction: 0.25,
        ..TrainConfig::default()
    }
}

/// The served bundle, version 1: PaDiM fitted on the first 40 normal images (none of which
/// is in the data sets below), written once; each test copies it.
fn served_v1() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = synthetic().join("served");
        let normals = root.join("normals");
        std::fs::create_dir_all(&normals).unwrap();
        for p in &list_images(&synthetic().join("train/good")).unwrap()[..40] {
            std::fs::copy(p, normals.join(p.file_name().unwrap())).unwrap();
        }
        let source = DataSource::Folders { normal: normals, abnormal: None, masks: None };
        let run = train_source(padim(), source, &root.join("surface"));
        export_run(&run, &root.join("bundle"));
        root.join("bundle")
    })
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
}

/// `<box>/models/current` holding version 1, as a camera's `bundle` path.
fn install_v1(root: &Path) -> PathBuf {
    let current = root.join("models/current");
    copy_dir(served_v1(), &current);
    current
}

/// The defect images of the synthetic test set.
fn defects() -> Vec<PathBuf> {
    let mut v = vec![];
    for e in std::fs::read_dir(synthetic().join("test")).unwrap() {
        let dir = e.unwrap().path();
        if dir.file_name().unwrap() != "good" {
            v.extend(list_images(&dir).unwrap());
        }
    }
    v.sort();
    v
}

/// Copies `files` into `dir` under the names `names` gives them.
fn put(dir: &Path, files: &[PathBuf], names: impl Iterator<Item = String>) {
    std::fs::create_dir_all(dir).unwrap();
    for (f, n) in files.iter().zip(names) {
        std::fs::copy(f, dir.join(n)).unwrap();
    }
}

/// Names `<prefix>_NNNN.png` whose hold-out rank is below (`held`) or above the fraction.
fn names(prefix: &str, held: bool) -> impl Iterator<Item = String> {
    (0..)
        .map(move |i| format!("{prefix}_{i:04}.png"))
        .filter(move |n| (holdout_rank(Path::new(n)) < HOLDOUT_FRACTION) == held)
}

/// A good data set: the other 80 normal images and the defects, as the daemon names frames.
fn good_dataset(root: &Path, with_defects: bool) -> PathBuf {
    let ds = root.join("dataset/cam1");
    let normals = list_images(&synthetic().join("train/good")).unwrap();
    put(&ds.join("normal"), &normals[40..], (0..).map(|i| format!("frame-{i:04}.png")));
    if with_defects {
        put(&ds.join("abnormal"), &defects(), (0..).map(|i| format!("defect-{i:04}.png")));
    }
    ds
}

fn vigil_train(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vigil-train")).args(args).env_remove("VIGIL_LOG").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join(REPORT_FILE)).unwrap()).unwrap()
}

fn gated_install(current: &Path, dataset: &Path) -> Output {
    let (c, d) = (current.to_str().unwrap(), dataset.to_str().unwrap());
    vigil_train(&[
        "retrain",
        "--from",
        c,
        "--dataset",
        d,
        "--gate",
        "--install",
        "--device",
        "cpu",
        "--engine",
        "tract",
    ])
}

#[test]
fn a_retrain_that_is_not_worse_replaces_the_served_bundle_and_keeps_the_previous() {
    let dir = tempfile::tempdir().unwrap();
    let current = install_v1(dir.path());
    let v1_sha = Bundle::load(&current).unwrap().model_sha256;
    let dataset = good_dataset(dir.path(), true);

    let out = gated_install(&current, &dataset);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("gate passed") && err.contains("vigil rollback --camera"), "{err}");
    let served = Bundle::load(&current).unwrap();
    assert_eq!(served.manifest.version, 2);
    let previous = sibling(&current, "previous");
    assert_eq!(Bundle::load(&previous).unwrap().model_sha256, v1_sha);
    let r = report(&current);
    eprintln!("{}", r["reason"]);
    assert_eq!(r["passed"], true, "{r:#}");
    assert!(r["rule"].as_str().unwrap().contains("with confirmed defects"), "{r:#}");
    let (held_normal, held_defects) =
        (r["held_out"]["normal"].as_array().unwrap(), r["held_out"]["abnormal"].as_array().unwrap());
    assert!(held_normal.len() >= 2 && !held_defects.is_empty(), "{r:#}");
    assert_eq!(r["served"]["normals"].as_u64().unwrap() as usize, held_normal.len());
    assert!(r["new"]["image_auroc"].as_f64().unwrap() > 0.9, "{r:#}");
    // The scratch folders are gone: the new one is in service, its run was removed.
    assert!(!sibling(&current, "next").exists() && !sibling(&current, "next.run").exists());

    // Again: version 3 in service, version 2 the previous one, version 1 gone.
    let out = gated_install(&current, &dataset);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(Bundle::load(&current).unwrap().manifest.version, 3);
    assert_eq!(Bundle::load(&previous).unwrap().model_sha256, served.model_sha256);
    let left: Vec<String> = std::fs::read_dir(current.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 2, "only current and current.previous: {left:?}");
}

#[test]
fn a_worse_retrain_is_set_aside_with_the_reason_and_the_served_bundle_stays() {
    let dir = tempfile::tempdir().unwrap();
    let current = install_v1(dir.path());
    let v1_sha = Bundle::load(&current).unwrap().model_sha256;
    // A polluted data set: every normal frame that trains is in truth a defect (marked normal by
    // mistake); the held-out normals are clean, and the one confirmed defect is held out.
    let ds = dir.path().join("dataset/cam1");
    let normals = list_images(&synthetic().join("train/good")).unwrap();
    put(&ds.join("normal"), &normals[40..48], names("frame", true));
    let defects = defects();
    put(&ds.join("normal"), &defects[1..], names("frame", false));
    put(&ds.join("abnormal"), &defects[..1], names("defect", true));

    let out = gated_install(&current, &ds);
    assert_eq!(out.status.code(), Some(3), "the gate should reject it: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("gate failed") && err.contains("not put in service"), "{err}");
    // Untouched: same model, no previous.
    assert_eq!(Bundle::load(&current).unwrap().model_sha256, v1_sha);
    assert!(!sibling(&current, "previous").exists());
    let rejected = sibling(&current, "rejected");
    assert_eq!(Bundle::load(&rejected).unwrap().manifest.version, 2);
    let r = report(&rejected);
    eprintln!("{}", r["reason"]);
    assert_eq!(r["passed"], false, "{r:#}");
    let reason = r["reason"].as_str().unwrap();
    assert!(reason.starts_with("worse") && reason.contains("lower, more than"), "{reason}");
    let (served_f1, new_f1) = (r["served"]["f1"].as_f64().unwrap(), r["new"]["f1"].as_f64().unwrap());
    assert!(new_f1 < served_f1 - 0.02 || reason.contains("image AUROC"), "{r:#}");
}

#[test]
fn without_confirmed_defects_the_gate_counts_false_alarms_on_held_out_normals() {
    let dir = tempfile::tempdir().unwrap();
    let current = install_v1(dir.path());
    let dataset = good_dataset(dir.path(), false);
    let out = dir.path().join("v2");
    let run = dir.path().join("v2-run");
    let req = GatedRequest {
        retrain: RetrainRequest {
            from: current.clone(),
            source: DataSource::Folders { normal: dataset.join("normal"), abnormal: None, masks: None },
            val_abnormal: None,
            out: out.clone(),
            run: Some(run.clone()),
            epochs: None,
            device: DeviceChoice::Cpu,
            engine: engine_config(EngineChoice::Tract),
        },
        gate: Some(Tolerances::default()),
        install: false,
        rejected: None,
        scratch: false,
    };
    let outcome = retrain_gated(&req, &AtomicBool::new(false)).unwrap().unwrap();
    let r = outcome.report.unwrap();
    eprintln!("{} (thresholds {} and {})", r.reason, r.served.threshold, r.new.threshold);
    assert!(r.rule.contains("no confirmed defects") && r.reason.contains("false-alarm rate"), "{r:?}");
    assert!(r.passed, "{r:?}");
    assert_eq!(outcome.verdict, Verdict::Passed);
    assert_eq!((r.served.defects, r.new.f1), (0, None));

    // The held-out normals never reached training or calibration: the run read the staged
    // folder, which holds the rest only.
    let state = RunState::load(&RunDir(run.clone())).unwrap();
    let trained_on = state.data.source().unwrap();
    let DataSource::Folders { normal, .. } = trained_on else { panic!("{trained_on:?}") };
    let staged: Vec<String> =
        list_images(&normal).unwrap().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(staged.len() + r.held_out.normal.len(), 80);
    assert!(r.held_out.normal.iter().all(|h| !staged.contains(h)), "{staged:?} vs {:?}", r.held_out.normal);

    // The same bundle with a threshold lowered to the median of normal scores: more false
    // alarms, refused.
    let lowered = dir.path().join("lowered");
    copy_dir(&out, &lowered);
    let manifest_path = lowered.join(vigil_model::bundle::MANIFEST_FILE);
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    m["threshold"]["value"] =
        serde_json::json!(r.new.threshold.min(m["normalization"]["median"].as_f64().unwrap() as f32));
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let held = HeldOut {
        normal: r.held_out.normal.iter().map(|n| dataset.join("normal").join(n)).collect(),
        abnormal: vec![],
    };
    let worse = gate(&current, &lowered, &held, &Tolerances::default(), &engine_config(EngineChoice::Tract)).unwrap();
    eprintln!("{}", worse.reason);
    assert!(!worse.passed && worse.reason.starts_with("more false alarms"), "{worse:?}");
    assert!(worse.new.false_alarm_rate > worse.served.false_alarm_rate);
    // Allowed with a tolerance as large as the difference.
    let d = worse.new.false_alarm_rate - worse.served.false_alarm_rate;
    assert!(judge(&worse.served, &worse.new, &Tolerances { false_alarm: d, ..Tolerances::default() }).passed);
    assert!(lowered.join(REPORT_FILE).is_file());
}

#[test]
fn the_hold_out_is_the_same_every_time_and_disjoint_from_what_trains() {
    let dir = tempfile::tempdir().unwrap();
    let ds = good_dataset(dir.path(), true);
    let a = stage(&ds.join("normal"), Some(&ds.join("abnormal")), &dir.path().join("a")).unwrap();
    let b = stage(&ds.join("normal"), Some(&ds.join("abnormal")), &dir.path().join("b")).unwrap();
    assert_eq!(a.held_out, b.held_out);
    let names = |d: &Path| -> Vec<PathBuf> {
        list_images(d).unwrap().iter().map(|p| PathBuf::from(p.file_name().unwrap())).collect()
    };
    let held_names =
        |v: &[PathBuf]| -> Vec<PathBuf> { v.iter().map(|p| PathBuf::from(p.file_name().unwrap())).collect() };
    let (kept_normal, kept_defects) = (names(&a.normal), names(a.abnormal.as_ref().unwrap()));
    let (held_normal, held_defects) = (held_names(&a.held_out.normal), held_names(&a.held_out.abnormal));
    assert_eq!(kept_normal.len() + held_normal.len(), 80);
    assert!(kept_normal.iter().all(|n| !held_normal.contains(n)));
    assert!(kept_defects.iter().all(|n| !held_defects.contains(n)) && !held_defects.is_empty());
    // The staged files are links to the data set's own.
    let link = a.normal.join(&kept_normal[0]);
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        std::fs::canonicalize(ds.join("normal").join(&kept_normal[0])).unwrap()
    );
    // New frames later: the held-out ones stay held out.
    std::fs::copy(synthetic().join("test/good/0000.png"), ds.join("normal/frame-9999.png")).unwrap();
    let c = stage(&ds.join("normal"), None, &dir.path().join("c")).unwrap();
    assert!(a.held_out.normal.iter().all(|p| c.held_out.normal.contains(p)));

    // Too few normals for both sides: a clear error.
    let tiny = dir.path().join("tiny");
    put(&tiny, &list_images(&ds.join("normal")).unwrap()[..5], (0..).map(|i| format!("f{i}.png")));
    let err = stage(&tiny, None, &dir.path().join("d")).unwrap_err().to_string();
    assert!(err.contains("5 normal image(s)") && err.contains("collect at least 6"), "{err}");
}

#[test]
fn the_gate_needs_plain_folders_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let current = install_v1(dir.path());
    let (c, data) = (current.to_str().unwrap(), synthetic().to_str().unwrap());
    let out = vigil_train(&["retrain", "--from", c, "--data", data, "--gate", "--device", "cpu"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("pass --dataset DIR"), "{}", stderr(&out));
    let missing = dir.path().join("nothing");
    let out = vigil_train(&["retrain", "--from", c, "--dataset", missing.to_str().unwrap(), "--gate"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no normal/ folder"), "{}", stderr(&out));
    let out = vigil_train(&["retrain", "--from", c, "--normal", data, "--gate", "--gate-f1", "1.5"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("give values in 0..1"), "{}", stderr(&out));
    assert_eq!(Bundle::load(&current).unwrap().manifest.version, 1);
}

fn fig(auroc: Option<f64>, f1: Option<f64>, far: f64, defects: usize) -> Figures {
    Figures {
        bundle: "b".into(),
        name: "m".into(),
        version: 1,
        threshold: 0.5,
        image_auroc: auroc,
        f1,
        false_alarm_rate: far,
        normals: 10,
        defects,
        skipped: 0,
    }
}

#[test]
fn the_rule_allows_the_tolerances_and_no_more() {
    let tol = Tolerances::default();
    let served = fig(Some(0.95), Some(0.90), 0.0, 4);
    assert!(judge(&served, &fig(Some(0.945), Some(0.885), 0.5, 4), &tol).passed);
    let d = judge(&served, &fig(Some(0.93), Some(0.90), 0.0, 4), &tol);
    assert!(!d.passed && d.reason.contains("image AUROC 0.9300 against 0.9500: 0.0200 lower"), "{d:?}");
    let d = judge(&served, &fig(Some(0.96), Some(0.85), 0.0, 4), &tol);
    assert!(!d.passed && d.reason.contains("F1") && !d.reason.contains("AUROC"), "{d:?}");
    // Without defects only false alarms count, whatever else differs.
    let served = fig(None, None, 0.1, 0);
    assert!(judge(&served, &fig(None, None, 0.1, 0), &tol).passed);
    let d = judge(&served, &fig(None, None, 0.2, 0), &tol);
    assert!(!d.passed && d.rule.contains("no confirmed defects"), "{d:?}");
    assert!(judge(&served, &fig(None, None, 0.2, 0), &Tolerances { false_alarm: 0.1, ..tol }).passed);
}

#[test]
fn the_hold_out_follows_each_name_and_keeps_both_sides() {
    let files: Vec<PathBuf> = (0..200).map(|i| PathBuf::from(format!("/d/f{i:04}.png"))).collect();
    let (kept, held) = split_holdout(files.clone(), 2, 4);
    assert!((25..=55).contains(&held.len()), "{} held out of 200", held.len());
    assert!(held.iter().all(|p| holdout_rank(p) < HOLDOUT_FRACTION) && kept.iter().all(|p| !held.contains(p)));
    let more: Vec<PathBuf> = (0..400).map(|i| PathBuf::from(format!("/d/f{i:04}.png"))).collect();
    let (kept2, held2) = split_holdout(more, 2, 4);
    assert!(held.iter().all(|p| held2.contains(p)) && kept.iter().all(|p| kept2.contains(p)));
    let (kept, held) = split_holdout(files[..6].to_vec(), 2, 4);
    assert_eq!((kept.len(), held.len()), (4, 2));
}

#[test]
fn both_bundles_are_scored_through_their_graphs() {
    let bundle = Bundle::load(served_v1()).unwrap();
    let engine = engine::load(&bundle, &engine_config(EngineChoice::Tract)).unwrap();
    let held = HeldOut { normal: list_images(&synthetic().join("test/good")).unwrap(), abnormal: defects() };
    let f = figures(&bundle, &engine, &held);
    assert_eq!((f.normals, f.defects, f.skipped), (held.normal.len(), held.abnormal.len(), 0));
    assert!(f.image_auroc.unwrap() > 0.9 && f.f1.unwrap() > 0.5, "{f:?}");
}
