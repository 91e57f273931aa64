//! `vigil-train` as a user runs it: every error path names the problem and the fix.

use std::path::Path;
use std::process::{Command, Output};

fn vigil_train(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vigil-train")).args(args).env_remove("VIGIL_LOG").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn fails_with(args: &[&str], expected: &[&str]) {
    let out = vigil_train(args);
    assert_eq!(out.status.code(), Some(1), "{args:?} should fail: {}", stderr(&out));
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    for e in expected {
        assert!(err.contains(e), "{args:?}: expected `{e}` in: {err}");
    }
}

#[test]
fn synth_writes_an_mvtec_data_set() {
    let dir = tempfile::tempdir().unwrap();
    let out = vigil_train(&[
        "synth",
        "--out",
        dir.path().to_str().unwrap(),
        "--n-train",
        "4",
        "--n-test",
        "8",
        "--size",
        "32",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["train_good"], 4);
    assert!(dir.path().join("ground_truth/crack/0000_mask.png").is_file());
}

#[test]
fn synth_writes_a_data_set_per_product() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = vigil_train(&["synth", "--out", d, "--n-train", "2", "--n-test", "2", "--size", "32", "--products", "2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().map(|l| l["product"].as_str().unwrap()).collect::<Vec<_>>(), ["brushed", "crosswise"]);
    assert!(dir.path().join("crosswise/test/good/0000.png").is_file());
    fails_with(&["synth", "--out", d, "--products", "9"], &["--products must be 1 to 4"]);
}

#[test]
fn training_errors_name_the_problem_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let run = s(&d.join("run"));
    fails_with(&["train", "--out", &run], &["no data: pass --data DIR"]);
    fails_with(&["train", "--data", &s(d), "--out", &run], &["no train/good folder", "expected MVTec AD layout"]);
    let empty = d.join("empty/train/good");
    std::fs::create_dir_all(&empty).unwrap();
    fails_with(&["train", "--data", &s(&d.join("empty")), "--out", &run], &["no normal images"]);
    fails_with(&["train", "--normal", &s(&d.join("missing")), "--out", &run], &["missing: not a folder"]);
    fails_with(&["train", "--data", &s(d), "--out", &run, "--size", "48"], &["multiple of 32", "padim"]);
    fails_with(&["train", "--model", "dae", "--data", &s(d), "--out", &run, "--size", "48"], &["power of two"]);
    let bad = d.join("bad.toml");
    std::fs::write(&bad, "epochs = 3\nlearning_rate = 0.1\n").unwrap();
    fails_with(
        &["train", "--data", &s(d), "--out", &run, "--config", &s(&bad)],
        &["bad.toml", "unknown field `learning_rate`"],
    );
    fails_with(&["train", "--resume", &s(&d.join("nothing"))], &["not a vigil-train run folder"]);
    fails_with(&["export", &s(&d.join("nothing")), "--out", &s(&d.join("b"))], &["not a vigil-train run folder"]);
    fails_with(&["eval", "--bundle", &s(&d.join("nothing")), "--data", &s(d)], &["not found"]);
}

#[test]
fn asking_for_a_gpu_without_one_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    vigil_model::synth::generate(
        &data,
        &vigil_model::synth::SynthConfig { size: 32, n_train: 8, n_test: 0, rgb: false, seed: 1 },
    )
    .unwrap();
    let out = vigil_train(&[
        "train",
        "--model",
        "dae",
        "--data",
        data.to_str().unwrap(),
        "--out",
        dir.path().join("run").to_str().unwrap(),
        "--device",
        "gpu",
        "--size",
        "32",
        "--epochs",
        "1",
        "--batch",
        "4",
        "--no-export",
    ]);
    if !out.status.success() {
        let err = stderr(&out);
        assert!(err.contains("no hardware GPU") && err.contains("--device cpu"), "{err}");
    } else {
        // A machine with a real GPU trained on it and said which.
        assert!(stderr(&out).contains("training on gpu:"), "{}", stderr(&out));
    }
}

#[test]
fn train_from_the_command_line_exports_an_evaluated_bundle_that_vigil_serves() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    vigil_model::synth::generate(
        &data,
        &vigil_model::synth::SynthConfig { size: 64, n_train: 24, n_test: 8, rgb: true, seed: 2 },
    )
    .unwrap();
    let cfg = dir.path().join("train.toml");
    std::fs::write(&cfg, "size = 32\nlatent = 16\nwidth = 8\nbatch = 8\nsmoothing_sigma = 1.0\n").unwrap();
    let run = dir.path().join("run");
    let out = vigil_train(&[
        "train",
        "--model",
        "dae",
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--epochs",
        "2",
        "--config",
        cfg.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(summary["metrics"]["image_auroc"].is_number(), "{summary}");
    assert_eq!(summary["threshold"]["method"], "quantile");
    assert!(stderr(&out).contains("training on cpu (flex)"), "{}", stderr(&out));
    // The resolved config is saved, with the channels found in the data.
    let saved = std::fs::read_to_string(run.join("train.toml")).unwrap();
    assert!(saved.contains("channels = 3") && saved.contains("epochs = 2"), "{saved}");
    let bundle = vigil_model::bundle::Bundle::load(run.join("bundle")).unwrap();
    assert_eq!(bundle.manifest.input.color, vigil_model::bundle::manifest::ColorMode::Rgb);
    assert_eq!(bundle.manifest.training.as_ref().unwrap().epochs, 2);
    // Running it again into the same folder is refused rather than overwriting the run.
    let again =
        vigil_train(&["train", "--data", data.to_str().unwrap(), "--out", run.to_str().unwrap(), "--device", "cpu"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("already holds a run; pass --resume"), "{}", stderr(&again));
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    vigil_model::synth::generate(
        &data,
        &vigil_model::synth::SynthConfig { size: 32, n_train: 32, n_test: 0, rgb: false, seed: 3 },
    )
    .unwrap();
    let run = dir.path().join("run");
    let child = Command::new(env!("CARGO_BIN_EXE_vigil-train"))
        .args(["train", "--model", "dae", "--data", data.to_str().unwrap(), "--out", run.to_str().unwrap()])
        .args(["--size", "32", "--batch", "4", "--epochs", "100000", "--device", "cpu", "--no-export"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first finished epoch, so there is something to keep.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !run.join("losses.csv").exists() {
        assert!(std::time::Instant::now() < deadline, "no epoch finished in 120 s");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("continue with --resume"), "{err}");
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("state.json")).unwrap()).unwrap();
    let done = state["epochs_done"].as_u64().unwrap();
    assert!((1..100000).contains(&done), "{state}");
    assert!(run.join("checkpoint").read_dir().unwrap().count() > 0);
}

#[test]
fn bench_quality_trains_and_evaluates_every_family_with_its_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let out = vigil_train(&["synth", "--out", &s(&data), "--n-train", "10", "--n-test", "4", "--size", "32"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = vigil_train(&[
        "bench-quality",
        "--data",
        &s(&data),
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--out",
        &s(&dir.path().join("runs")),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let models: Vec<&str> = lines.iter().map(|l| l["model"].as_str().unwrap()).collect();
    assert_eq!(models, ["padim", "fdisc", "patchcore", "fae", "dae", "vae", "gan", "wgan"]);
    for l in &lines {
        let fa = l["false_alarms_per_1000"].as_f64().unwrap_or_else(|| panic!("false alarms missing in {l}"));
        assert!((0.0..=1000.0).contains(&fa) && l["recall_at_1_in_100"].is_number(), "{l}");
        for key in ["image_auroc", "pixel_auroc", "f1", "train_s"] {
            let v = l[key].as_f64().unwrap_or_else(|| panic!("{key} missing in {l}"));
            assert!((0.0..=1.0).contains(&v) || key == "train_s", "{key} = {v} in {l}");
        }
        let per_type = l["auroc_per_type"].as_object().unwrap();
        assert!(!per_type.is_empty() && per_type.values().all(|v| v.is_number()), "{l}");
        assert!(Path::new(l["bundle"].as_str().unwrap()).join("model.onnx").is_file());
    }
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    assert!(out.status.success(), "{}", stderr(out));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn the_training_benchmarks_time_both_convolution_implementations() {
    let layers = json_lines(&vigil_train(&["bench-layers", "--batch", "1", "--repeats", "1", "--device", "cpu"]));
    // Four convolutions and four transposed convolutions, each both ways, and three batch norms.
    assert_eq!(layers.len(), 19, "{layers:?}");
    for l in &layers {
        assert!(l["forward_ms"].as_f64().unwrap() > 0.0, "{l}");
        assert!(l["forward_backward_ms"].as_f64().unwrap() > 0.0, "{l}");
        assert!(l["max_abs_diff"].as_f64().unwrap() < 1e-4, "the matrix products compute the same layer: {l}");
    }
    let matmul: Vec<&str> =
        layers.iter().filter(|l| l["implementation"] == "matmul").map(|l| l["layer"].as_str().unwrap()).collect();
    assert_eq!(matmul.len(), 8, "{matmul:?}");
    for conv_impl in ["burn", "matmul"] {
        let args = ["bench-train", "--model", "dae", "--batch", "2", "--steps", "1", "--device", "cpu", "--conv-impl"];
        let lines = json_lines(&vigil_train(&[&args[..], &[conv_impl]].concat()));
        assert_eq!(lines.len(), 1);
        assert!(lines[0]["samples_per_s"].as_f64().unwrap() > 0.0, "{conv_impl}: {}", lines[0]);
    }
}

#[test]
fn a_conditional_model_trains_from_class_folders_and_eval_and_the_benchmark_report_each_class() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("products");
    let out = vigil_train(&[
        "synth",
        "--out",
        data.to_str().unwrap(),
        "--n-train",
        "12",
        "--n-test",
        "8",
        "--size",
        "32",
        "--products",
        "2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run = d.join("run");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> =
            ["train", "--model", "dae", "--epochs", "1", "--batch", "4", "--size", "32", "--device", "cpu"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let train = args(&["--conditional", "--data", data.to_str().unwrap(), "--out", run.to_str().unwrap()]);
    let out = vigil_train(&train.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", stderr(&out));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("bundle/manifest.json")).unwrap()).unwrap();
    let classes: Vec<&str> =
        manifest["conditioning"]["classes"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(classes, ["brushed", "crosswise"]);
    let bundle = run.join("bundle");
    let (b, dd) = (bundle.to_str().unwrap(), data.to_str().unwrap());
    // Per class over both products, and one product's data by name.
    let out = vigil_train(&["eval", "--bundle", b, "--conditional", "--data", dd, "--engine", "tract"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        e["per_class"]["brushed"]["image_auroc"].is_number() && e["per_class"]["crosswise"]["image_auroc"].is_number(),
        "{e}"
    );
    let one = data.join("crosswise");
    let out = vigil_train(&[
        "eval",
        "--bundle",
        b,
        "--data",
        one.to_str().unwrap(),
        "--class",
        "crosswise",
        "--engine",
        "tract",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["per_class"].as_object().unwrap().keys().collect::<Vec<_>>(), ["crosswise"]);
    fails_with(
        &["eval", "--bundle", b, "--data", one.to_str().unwrap(), "--class", "nope"],
        &["unknown class `nope`", "brushed, crosswise"],
    );
    fails_with(&["eval", "--bundle", b, "--data", one.to_str().unwrap()], &["conditional", "--class"]);
    fails_with(
        &["train", "--conditional", "--data", one.to_str().unwrap(), "--out", d.join("x").to_str().unwrap()],
        &["a conditional model needs at least 2"],
    );
    // The comparison: one line per setup, each product's AUROC in each.
    let small = d.join("small.toml");
    std::fs::write(&small, "size = 64\npadim_dims = 32\n").unwrap();
    let out = vigil_train(&[
        "bench-conditional",
        "--data",
        dd,
        "--models",
        "padim",
        "--config",
        small.to_str().unwrap(),
        "--out",
        d.join("bench").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = json_lines(&out);
    let setups: Vec<&str> = rows.iter().map(|r| r["setup"].as_str().unwrap()).collect();
    assert_eq!(setups, ["conditional", "pooled", "per_product"]);
    for r in &rows {
        assert!(
            r["auroc"]["brushed"].is_number() && r["auroc"]["crosswise"].is_number() && r["mean_auroc"].is_number(),
            "{r}"
        );
    }
}

#[test]
fn cyclegan_and_augment_run_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = d.join("data");
    let out =
        vigil_train(&["synth", "--out", data.to_str().unwrap(), "--n-train", "6", "--n-test", "8", "--size", "32"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let normal = data.join("train/good");
    let defect = data.join("test/scratch");
    let run = d.join("cg");
    let (n, r) = (normal.to_str().unwrap(), run.to_str().unwrap());
    let tiny = ["--size", "32", "--epochs", "1", "--steps", "3", "--width", "4", "--blocks", "1", "--device", "cpu"];
    let mut args = vec!["cyclegan", "--normal", n, "--defect", defect.to_str().unwrap(), "--out", r];
    args.extend(tiny);
    let out = vigil_train(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let state: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(state["epochs_done"], 1);
    assert!(run.join("samples/epoch-001.png").is_file());
    let gen_out = d.join("generated");
    let out =
        vigil_train(&["augment", "--generator", r, "--normal", n, "--out", gen_out.to_str().unwrap(), "--n", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["images"], 3);
    let missing = vigil_train(&["cyclegan", "--normal", n, "--defect", n]);
    assert!(!missing.status.success() && stderr(&missing).contains("--out"), "{}", stderr(&missing));
    fails_with(
        &["augment", "--generator", n, "--normal", n, "--out", r],
        &["not a CycleGAN run folder", "vigil-train cyclegan"],
    );
    fails_with(
        &["cyclegan", "--normal", n, "--defect", n, "--out", d.join("x").to_str().unwrap(), "--size", "30"],
        &["multiple of 8"],
    );
}
