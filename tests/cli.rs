//! The `vigil` binary: `score`, `inspect` and `wrap`, as a user runs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vigil_model::bundle::manifest::{ColorMode, Family};

use crate::common::{ort_library, reference_bundle, write_png};

fn vigil(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vigil"));
    c.args(args).env("ORT_DYLIB_PATH", ort_library()).env_remove("VIGIL_LOG");
    c
}

fn lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn images(dir: &Path) -> Vec<PathBuf> {
    vec![
        write_png(dir, "a.png", 64, 64, true, 1),
        write_png(dir, "b_gray_other_size.png", 50, 40, false, 2),
        write_png(dir, "c.png", 300, 200, true, 3),
    ]
}

fn path_args(paths: &[PathBuf]) -> Vec<String> {
    paths.iter().map(|p| p.display().to_string()).collect()
}

#[test]
fn score_prints_one_line_per_image_with_matching_scores_on_both_engines() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    reference_bundle(&bundle, Family::Dae, ColorMode::Rgb, 64);
    let imgs = path_args(&images(dir.path()));
    let mut results = vec![];
    for engine in ["tract", "ort"] {
        let mut args = vec!["score", "--model", bundle.to_str().unwrap(), "--engine", engine];
        args.extend(imgs.iter().map(String::as_str));
        let out = vigil(&args).output().unwrap();
        assert!(out.status.success(), "{engine}: {}", stderr(&out));
        let l = lines(&out);
        assert_eq!(l.len(), 3, "{engine}: one line per image");
        for (line, file) in l.iter().zip(&imgs) {
            assert_eq!(line["file"], file.as_str());
            assert_eq!(line["engine"], engine);
            assert_eq!(line["threshold"], 0.05);
            let score = line["score"].as_f64().unwrap();
            assert_eq!(line["anomalous"], score > 0.05);
        }
        results.push(l);
    }
    for (t, o) in results[0].iter().zip(&results[1]) {
        let (a, b) = (t["score"].as_f64().unwrap(), o["score"].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-5, "{}: tract {a} vs ort {b}", t["file"]);
    }
}

#[test]
fn a_bad_image_gets_an_error_line_and_a_failing_exit_while_the_others_are_scored() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    reference_bundle(&bundle, Family::Dae, ColorMode::Gray, 32);
    let good = write_png(dir.path(), "good.png", 32, 32, false, 4);
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.png");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let text = dir.path().join("notes.jpg");
    std::fs::write(&text, "this is not a picture").unwrap();
    let empty = dir.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    let missing = dir.path().join("missing.png");
    let files = path_args(&[good.clone(), truncated, text, empty, missing, good]);
    let mut args = vec!["score", "--model", bundle.to_str().unwrap(), "--engine", "tract"];
    args.extend(files.iter().map(String::as_str));
    let out = vigil(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("4 of 6 image(s) could not be scored"), "{}", stderr(&out));
    let l = lines(&out);
    assert_eq!(l.len(), 6);
    assert!(l[0]["score"].is_number() && l[5]["score"].is_number());
    assert!(l[1]["error"].as_str().unwrap().contains("corrupt or truncated image"), "{}", l[1]);
    assert!(l[2]["error"].as_str().unwrap().contains("not a readable image"), "{}", l[2]);
    assert_eq!(l[3]["error"], "empty file");
    assert!(l[4]["error"].as_str().unwrap().contains("cannot read the file"), "{}", l[4]);
}

#[test]
fn auto_falls_back_to_tract_with_one_log_line_when_onnx_runtime_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    reference_bundle(&bundle, Family::Dae, ColorMode::Gray, 32);
    let img = write_png(dir.path(), "a.png", 32, 32, false, 5);
    let out = vigil(&["score", "--model", bundle.to_str().unwrap(), img.to_str().unwrap()])
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(lines(&out)[0]["engine"], "tract");
    let err = stderr(&out);
    assert_eq!(err.matches("engine auto: using tract, because ONNX Runtime library not found").count(), 1, "{err}");
}

#[test]
fn an_unusable_onnx_runtime_library_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    reference_bundle(&bundle, Family::Dae, ColorMode::Gray, 32);
    let img = write_png(dir.path(), "a.png", 32, 32, false, 6);
    let fake = dir.path().join("libonnxruntime.so.1.31.1");
    std::fs::write(&fake, "not a shared library").unwrap();
    let out = vigil(&[
        "score",
        "--model",
        bundle.to_str().unwrap(),
        "--engine",
        "ort",
        "--ort-library",
        fake.to_str().unwrap(),
        img.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&format!("ONNX Runtime library {}", fake.display())), "{err}");
    assert!(err.contains("vigil needs ONNX Runtime 1.31 or newer"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_missing_bundle_is_named_on_stderr() {
    let out = vigil(&["score", "--model", "/nonexistent/bundle", "x.png"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("model bundle /nonexistent/bundle: not found"), "{}", stderr(&out));
}

#[test]
fn inspect_prints_the_manifest_and_the_model_interface() {
    let dir = tempfile::tempdir().unwrap();
    reference_bundle(dir.path(), Family::Vae, ColorMode::Gray, 32);
    let out = vigil(&["inspect", dir.path().to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["manifest"]["family"], "vae");
    assert_eq!(v["manifest"]["schema_version"], 1);
    assert_eq!(v["opset"], 17);
    assert_eq!(v["inputs"][0]["name"], "image");
    assert_eq!(v["inputs"][0]["shape"], "[N, 1, 32, 32]");
    assert_eq!(v["outputs"][0]["name"], "anomaly_map");
    assert_eq!(v["outputs"][1]["shape"], "[N]");
    assert_eq!(v["model_sha256"].as_str().unwrap().len(), 64);
}

#[test]
fn wrap_turns_a_foreign_autoencoder_into_a_bundle_that_scores() {
    use vigil_model::onnx::graph::{Dim, GraphBuilder};
    use vigil_model::onnx::reference::{ArchSpec, WeightRng, decoder, encoder};
    let spec = ArchSpec { size: 32, channels: 3, latent: 8, width: 8, classes: 0 };
    let mut rng = WeightRng::new(3);
    let (e, d) = (encoder(&spec, 8, false, &mut rng), decoder(&spec, &mut rng).fold_batch_norm().unwrap());
    let mut g = GraphBuilder::new("exported", 13);
    let dims = [Dim::Symbol("b".into()), Dim::Fixed(3), Dim::Fixed(32), Dim::Fixed(32)];
    let x = g.input("pixels", &dims);
    let z = e.emit(&mut g, &x);
    let r = d.emit(&mut g, &z);
    g.output(&r, "reconstruction", &dims);
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("exported.onnx");
    std::fs::write(&foreign, vigil_model::onnx::graph::encode(&g.finish())).unwrap();
    let bundle = dir.path().join("wrapped");
    let out = vigil(&[
        "wrap",
        foreign.to_str().unwrap(),
        "--out",
        bundle.to_str().unwrap(),
        "--reconstruction",
        "reconstruction",
        "--threshold",
        "0.2",
        "--reduction",
        "top-k:50",
    ])
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let loaded = vigil_model::bundle::Bundle::load(&bundle).unwrap();
    assert_eq!(loaded.manifest.name, "exported");
    assert_eq!(loaded.manifest.input.name, "pixels");
    assert_eq!(loaded.manifest.score.reduction, vigil_model::bundle::manifest::Reduction::TopKMean { k: 50 });
    let img = write_png(dir.path(), "a.png", 32, 32, true, 7);
    let out = vigil(&["score", "--model", bundle.to_str().unwrap(), img.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(lines(&out)[0]["threshold"], 0.2);

    // Naming an output the model lacks is refused with the outputs it has.
    let out = vigil(&[
        "wrap",
        foreign.to_str().unwrap(),
        "--out",
        dir.path().join("x").to_str().unwrap(),
        "--reconstruction",
        "output",
        "--threshold",
        "0.2",
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no output `output` (it has [\"reconstruction\"])"), "{}", stderr(&out));
}

#[test]
fn bench_times_the_daemon_stages_the_serial_path_and_the_engine_alone_as_json() {
    let dir = tempfile::tempdir().unwrap();
    reference_bundle(&dir.path().join("b"), Family::Dae, ColorMode::Rgb, 32);
    let frames = dir.path().join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    for i in 0..3 {
        write_png(&frames, &format!("{i}.png"), 64, 48, true, i);
    }
    std::fs::write(frames.join("notes.txt"), "not a frame").unwrap();
    let out =
        vigil(&["bench", "--model", dir.path().join("b").to_str().unwrap(), "--frames", frames.to_str().unwrap()])
            .args(["--engine", "tract", "--threads", "1", "--repeat", "2"])
            .output()
            .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // The daemon's stages, then the serial path: every frame of every pass scored.
    for (line, mode) in lines.iter().zip(["daemon", "serial"]) {
        assert_eq!(line["mode"], mode);
        assert_eq!(line["frames"], 6);
        assert_eq!((line["engine"].as_str(), line["threads"].as_u64()), (Some("tract"), Some(1)));
        for key in ["frames_per_s", "p50_ms", "p99_ms"] {
            assert!(line[key].as_f64().unwrap() > 0.0, "{key}: {line}");
        }
    }
    // Random weights score random frames identically either way.
    assert_eq!(lines[0]["anomalous"], lines[1]["anomalous"]);
    for line in &lines[2..] {
        assert_eq!(line["mode"], "engine_only");
        assert!(line["ms_per_frame"].as_f64().unwrap() > 0.0);
        assert!(line["multiply_adds"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(lines.len(), 4);
}
