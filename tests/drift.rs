//! Drift on the shipped bundle (`models/surface-dae`) and the project's synthetic surfaces:
//! frames brightened, shifted and blurred step by step raise it before the alert rate
//! explodes; a camera-week of unchanged frames raises it at most once; and the daemon says so
//! everywhere (log, metric, MQTT, Home Assistant, page) and clears it when the view comes back.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use image::GrayImage;
use vigil::decide::drift::{Change, DriftConfig, Tracker, standardise};
use vigil_model::bundle::Bundle;
use vigil_model::engine::{self, EngineChoice};
use vigil_model::preprocess::Preprocessor;
use vigil_model::rng::Rng;
use vigil_model::synth::{SynthConfig, generate};

use crate::common::engine_config;
use crate::common::mosquitto::{Mosquitto, Subscriber, http_get, metric};
use crate::daemon::{Plant, WAIT, mqtt_section, run_binary};

fn shipped() -> Bundle {
    Bundle::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/surface-dae")).unwrap()
}

/// 200 normal synthetic surfaces the bundle never saw (another seed than its training set's).
fn normals() -> &'static [GrayImage] {
    static IMAGES: OnceLock<Vec<GrayImage>> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), &SynthConfig { size: 128, n_train: 0, n_test: 400, rgb: false, seed: 41 }).unwrap();
        let good = dir.path().join("test/good");
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&good).unwrap().map(|e| e.unwrap().path()).collect();
        paths.sort();
        paths.iter().map(|p| image::open(p).unwrap().to_luma8()).collect()
    })
}

fn png(img: &GrayImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(vec![]);
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// The scores of `images` through the bundle (tract), in batches.
fn scores(bundle: &Bundle, images: &[GrayImage]) -> Vec<f32> {
    let engine = engine::load(bundle, &engine_config(EngineChoice::Tract)).unwrap();
    let pre = Preprocessor::new(&bundle.manifest.input);
    let mut out = vec![];
    for chunk in images.chunks(8) {
        let tensors: Vec<_> = chunk.iter().map(|img| pre.tensor_from_bytes(&png(img)).unwrap()).collect();
        let views: Vec<_> = tensors.iter().map(|t| t.view()).collect();
        let batch = ndarray::stack(ndarray::Axis(0), &views).unwrap();
        out.extend(engine.run(batch.view()).unwrap().scores);
    }
    out
}

/// A change of the view, `step` steps along.
type Transform = fn(&GrayImage, u32) -> GrayImage;

fn brighten(img: &GrayImage, step: u32) -> GrayImage {
    GrayImage::from_fn(img.width(), img.height(), |x, y| {
        image::Luma([img.get_pixel(x, y)[0].saturating_add((4 * step) as u8)])
    })
}

/// The camera bumped: the view moves `2·step` pixels right and down (the edge repeated).
fn shift(img: &GrayImage, step: u32) -> GrayImage {
    let d = 2 * step;
    GrayImage::from_fn(img.width(), img.height(), |x, y| *img.get_pixel(x.saturating_sub(d), y.saturating_sub(d)))
}

/// The lens dirty or out of focus.
fn blur(img: &GrayImage, step: u32) -> GrayImage {
    if step == 0 { img.clone() } else { image::imageops::blur(img, 0.35 * step as f32) }
}

#[test]
fn drift_rises_before_the_alert_rate_explodes_as_the_view_degrades_step_by_step() {
    let bundle = shipped();
    let m = &bundle.manifest;
    let n = m.normalization.as_ref().expect("the shipped bundle has its calibration statistics");
    let cfg = DriftConfig::default();
    let threshold = m.threshold.value;
    let transforms: [(&str, Transform); 3] = [("brightened", brighten), ("shifted", shift), ("blurred", blur)];
    let mut results = vec![];
    for (name, transform) in transforms {
        // One camera whose view degrades a step every 200 frames: the window slides on.
        let mut tracker = Tracker::new(cfg.window);
        let (mut raised_at, mut exploded_at) = (None, None);
        let (mut frame, mut recent) = (0usize, std::collections::VecDeque::new());
        let mut rows = vec![];
        for step in 0..12 {
            let images: Vec<GrayImage> = normals().iter().map(|img| transform(img, step)).collect();
            let s = scores(&bundle, &images);
            let alert_rate = s.iter().filter(|&&v| v > threshold).count() as f64 / s.len() as f64;
            for &v in &s {
                frame += 1;
                let above = v > threshold;
                let z = standardise(v, n).unwrap();
                if let Some(Change::Raised(_)) = tracker.observe(&cfg, &bundle.model_sha256, z, above, n.count) {
                    raised_at.get_or_insert((step, frame));
                }
                // The alert rate over the last 200 frames, as an operator would feel it.
                recent.push_back(above);
                if recent.len() > 200 {
                    recent.pop_front();
                }
                if recent.len() == 200 && recent.iter().filter(|a| **a).count() >= 20 {
                    exploded_at.get_or_insert((step, frame));
                }
            }
            let shift = tracker.last().map_or(0.0, |r| r.shift);
            rows.push(format!("step {step}: median shift {shift:+.2}, share above the threshold {alert_rate:.3}"));
        }
        let table = rows.join("\n  ");
        eprintln!(
            "{name} (bound {:.2}): drift at {raised_at:?}, 10 % alerts at {exploded_at:?}\n  {table}",
            cfg.bound(n.count)
        );
        results.push((name, raised_at, exploded_at, table));
    }
    for (name, raised, exploded, table) in results {
        let (step, frame) = raised.unwrap_or_else(|| panic!("{name}: drift never rose:\n  {table}"));
        assert!(step > 0, "{name}: drift rose on unchanged frames:\n  {table}");
        if let Some((_, exploded)) = exploded {
            assert!(
                frame < exploded,
                "{name}: drift rose at frame {frame}, alerts reached 10 % at {exploded}:\n  {table}"
            );
        }
    }
}

#[test]
fn a_camera_week_of_unchanged_frames_raises_drift_at_most_once() {
    let bundle = shipped();
    let n = bundle.manifest.normalization.clone().unwrap();
    let threshold = bundle.manifest.threshold.value;
    let z: Vec<(f32, bool)> =
        scores(&bundle, normals()).iter().map(|&v| (standardise(v, &n).unwrap(), v > threshold)).collect();
    let cfg = DriftConfig::default();
    let mut tracker = Tracker::new(cfg.window);
    let mut rng = Rng::new(9);
    // A frame a second for a week, each an unchanged frame's score drawn at random.
    let frames = 7 * 24 * 3600;
    let raised = (0..frames)
        .filter(|_| {
            let (z, above) = z[rng.below(z.len())];
            matches!(tracker.observe(&cfg, "m", z, above, n.count), Some(Change::Raised(_)))
        })
        .count();
    eprintln!("{frames} unchanged frames: drift raised {raised} times (bound {:.2})", cfg.bound(n.count));
    assert!(raised <= 1, "{raised} false drifts in a camera-week");
}

/// A child process killed when it goes out of scope, a failed assertion included.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_daemon_raises_drift_everywhere_and_clears_it_when_the_view_comes_back() {
    let plant = Plant::new();
    let broker = Mosquitto::start();
    let sub = Subscriber::new(broker.port, "#");
    let bundle = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/surface-dae");
    let log = plant.path("out/daemon.log");
    let cfg = plant.config(&format!(
        "{}homeassistant = true\npublish_scores = true\n[drift]\nwindow = 20\n[[cameras]]\nid = \"cam1\"\nbundle = \"{}\"\nsource = {{ type = \"folder\", path = \"{}\", settle = \"50ms\" }}\n",
        mqtt_section(broker.port),
        bundle.display(),
        plant.path("frames/x").parent().unwrap().display()
    ));
    // The binary itself, for its log.
    let _daemon = Killed(run_binary(&cfg, std::process::Stdio::from(std::fs::File::create(&log).unwrap())));
    crate::common::wait_until("the daemon ready", WAIT, || {
        std::net::TcpStream::connect(("127.0.0.1", plant.http)).is_ok() && http_get(plant.http, "/healthz").0 == 200
    });
    sub.wait_for_text("vigil/box1/available", "online", WAIT);
    let discovery = sub.wait_for("homeassistant/device/vigil_box1/config", 1, WAIT)[0].json();
    let sensor = &discovery["components"]["cam1_drift"];
    assert_eq!(
        (&sensor["platform"], &sensor["device_class"]),
        (&"binary_sensor".into(), &"problem".into()),
        "{sensor}"
    );
    assert_eq!(sensor["state_topic"], "vigil/box1/cam1/drift");
    let scored = |n: f64| plant.wait_frames("cam1", "normal", n);
    let total = |m: &str| {
        metric(m, "vigil_frames_total{camera=\"cam1\",result=\"normal\"}")
            + metric(m, "vigil_frames_total{camera=\"cam1\",result=\"anomalous\"}")
    };
    let feed = |from: usize, images: &[GrayImage]| {
        for (i, img) in images.iter().enumerate() {
            plant.drop_frame(&format!("f{:04}.png", from + i), &png(img));
        }
        let want = (from + images.len()) as f64;
        let deadline = std::time::Instant::now() + WAIT;
        while total(&plant.metrics()) < want {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(std::time::Instant::now() < deadline, "{want} frames not scored:\n{}\n{log}", plant.metrics());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    // A window of unchanged frames: judged, no drift.
    feed(0, &normals()[..20]);
    scored(1.0);
    let state = sub.wait_for("vigil/box1/cam1/drift", 1, WAIT);
    assert_eq!(state[0].json()["state"], "OFF", "{}", state[0].json());
    let late = Subscriber::new(broker.port, "vigil/box1/cam1/drift");
    let kept = late.wait_for("vigil/box1/cam1/drift", 1, WAIT);
    assert!(kept[0].retain && kept[0].json()["state"] == "OFF", "the state is retained for later subscribers");
    // The lamp brightens: drift rises.
    let bright: Vec<GrayImage> = normals()[20..40].iter().map(|img| brighten(img, 12)).collect();
    feed(20, &bright);
    let state = sub.wait_for("vigil/box1/cam1/drift", 2, WAIT);
    let on = state[1].json();
    assert_eq!(on["state"], "ON", "{on}");
    let (shift, bound) = (on["shift"].as_f64().unwrap(), on["bound"].as_f64().unwrap());
    assert!(shift > bound || on["tail"].as_f64().unwrap() > on["tail_bound"].as_f64().unwrap(), "{on}");
    let m = plant.metrics();
    assert_eq!(metric(&m, "vigil_drift{camera=\"cam1\"}"), 1.0, "{m}");
    assert_eq!(metric(&m, "vigil_drift_raised_total{camera=\"cam1\"}"), 1.0, "{m}");
    let page = http_get(plant.http, "/").1;
    assert!(page.contains("class=\"drift\" role=\"alert\">The scores of cam1 have drifted"), "the page's banner");
    let api: serde_json::Value = serde_json::from_str(&http_get(plant.http, "/api/state").1).unwrap();
    assert_eq!(api["cameras"][0]["drift"]["state"], "ON");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("drift: The scores of cam1 have drifted") && text.contains("vigil retrain --camera cam1"),
        "{text}"
    );
    // The lamp is fixed: it clears.
    feed(40, &normals()[40..60]);
    let state = sub.wait_for("vigil/box1/cam1/drift", 3, WAIT);
    assert_eq!(state[2].json()["state"], "OFF", "{}", state[2].json());
    assert_eq!(metric(&plant.metrics(), "vigil_drift{camera=\"cam1\"}"), 0.0);
    assert!(http_get(plant.http, "/").1.contains("class=\"drift\" role=\"alert\" hidden>"), "the banner is gone");
    assert!(std::fs::read_to_string(&log).unwrap().contains("drift cleared"));
}
