//! `vigil demo`: the daemon's real path on synthetic frames, with no config and no broker.
//!
//! A camera is simulated by writing synthetic frames (normal and defective, labelled in their
//! file names) into a temporary folder; the daemon (folder source → engine → decide → JSONL
//! and, with `--mqtt`, MQTT) scores them; the demo follows its decision log, prints a line per
//! frame and a summary against the known labels, and leaves the heatmap overlays as PNG.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cameras::CameraConfig;
use crate::config::Config;
use crate::mqtt::MqttConfig;
use crate::sink::AlertsConfig;
use crate::source::SourceConfig;
use crate::source::folder::FolderSource;
use crate::web::HttpConfig;
use vigil_model::engine::EngineConfig;
use vigil_model::synth::{DefectKind, sample};

/// The default bundle, built into the binary so the demo runs anywhere.
const DEFAULT_MODEL: &[u8] = include_bytes!("../../models/surface-dae/model.onnx");
const DEFAULT_MANIFEST: &[u8] = include_bytes!("../../models/surface-dae/manifest.json");

/// What `vigil demo` was asked to do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where frames, logs and overlays go.
    pub out: PathBuf,
    /// How many frames the simulated camera writes.
    pub frames: usize,
    /// Time between frames.
    pub interval: Duration,
    /// Also publish to this broker (`mqtt://host:port`).
    pub mqtt: Option<String>,
    /// Keep watching the folder after the simulated frames (until Ctrl-C).
    pub follow: bool,
    /// Serve the operator's page on loopback (and keep running, as with `follow`).
    pub page: bool,
    /// Engine settings.
    pub engine: EngineConfig,
    /// A bundle to use instead of the built-in default.
    pub model: Option<PathBuf>,
    /// Seed of the synthetic frames.
    pub seed: u64,
}

/// The demo's tally against the known labels.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct DemoSummary {
    /// Frames scored.
    pub frames: usize,
    /// Alerts raised.
    pub anomalies: usize,
    /// Defective frames alerted.
    pub true_positives: usize,
    /// Normal frames alerted.
    pub false_positives: usize,
    /// Defective frames missed.
    pub false_negatives: usize,
    /// Frames refused.
    pub rejected: usize,
    /// Frames scored per second of wall time (includes the camera's pacing).
    pub frames_per_s: f64,
    /// Median time from a frame's arrival to its decision, milliseconds.
    pub p50_latency_ms: f64,
    /// Where everything is.
    pub out: PathBuf,
}

fn broker(url: &str) -> anyhow::Result<MqttConfig> {
    let rest = url.strip_prefix("mqtt://").unwrap_or(url);
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse().with_context(|| format!("--mqtt {url}: the port is not a number"))?)),
        None => (rest, None),
    };
    anyhow::ensure!(!host.is_empty(), "--mqtt {url}: give mqtt://HOST[:PORT]");
    // The config's own defaults for everything else.
    let mut m: MqttConfig = serde_json::from_value(serde_json::json!({ "host": host }))?;
    m.port = port;
    Ok(m)
}

/// The label of a demo frame from its file name (`frame-0007-scratch.png`).
fn label(source: &str) -> Option<&str> {
    Path::new(source).file_stem()?.to_str()?.rsplit('-').next()
}

/// Runs the demo and prints as it goes.
pub fn run(opts: &DemoOptions) -> anyhow::Result<DemoSummary> {
    // A page that vanished with the last frame would show nothing: it keeps the demo running,
    // and a demo that keeps running shows its page.
    let follow = opts.follow || opts.page;
    let page = follow.then(page_address).transpose()?;
    let out = &opts.out;
    let frames_dir = out.join("frames");
    std::fs::create_dir_all(&frames_dir).with_context(|| format!("creating {}", frames_dir.display()))?;
    let bundle = match &opts.model {
        Some(m) => m.clone(),
        None => {
            let dir = out.join("model");
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("model.onnx"), DEFAULT_MODEL)?;
            std::fs::write(dir.join("manifest.json"), DEFAULT_MANIFEST)?;
            dir
        }
    };
    let decisions = out.join("decisions.jsonl");
    let alerts = out.join("alerts.jsonl");
    let config = Config {
        device_id: "demo".into(),
        state_dir: out.join("state"),
        log: Default::default(),
        engine: opts.engine.clone(),
        scoring: Default::default(),
        mqtt: opts.mqtt.as_deref().map(broker).transpose()?,
        alerts: AlertsConfig {
            jsonl: Some(alerts.clone()),
            decisions_jsonl: Some(decisions.clone()),
            snapshot_dir: Some(out.join("snapshots")),
            snapshot_keep: 10_000,
            ..Default::default()
        },
        http: HttpConfig { listen: page, page: page.is_some(), ..Default::default() },
        dataset: Default::default(),
        drift: Default::default(),
        fleet: None,
        cameras: vec![CameraConfig {
            id: "demo-cam".into(),
            bundle: bundle.clone(),
            source: SourceConfig::Folder(FolderSource {
                path: frames_dir.clone(),
                recursive: false,
                include: vec!["*.png".into()],
                settle: Duration::from_millis(100),
                after: Default::default(),
                move_to: None,
                max_bytes: 64 << 20,
                quarantine: None,
            }),
            threshold: None,
            cooldown: None,
            class: None,
            roi: None,
            trigger: None,
        }],
    };
    let manifest = vigil_model::bundle::Bundle::load(&bundle)?.manifest;
    println!(
        "vigil demo: bundle {} v{} ({}), a simulated camera writing {} frames into {}",
        manifest.name,
        manifest.version,
        bundle.display(),
        opts.frames,
        frames_dir.display()
    );
    println!("{:>4}  {:<26} {:>9} {:>6}  result", "#", "frame", "score", "norm");

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = rt.spawn(crate::daemon::run(config, async {
        let _ = stop_rx.await;
    }));
    // Wait for the daemon to watch the folder (its decision log appears at start).
    let started = Instant::now();
    while !decisions.exists() {
        if daemon.is_finished() {
            return Err(rt.block_on(daemon)?.err().unwrap_or_else(|| anyhow::anyhow!("the daemon stopped")));
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "the daemon did not start within 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(addr) = page {
        println!(
            "the page: http://{addr}/ (read it on this machine; verdicts and threshold edits take the token in {}; Ctrl-C ends the demo)",
            out.join("state").join("http-token").display()
        );
    }
    let (size, seed, n, interval) = (manifest.input.width.max(128) as u32 * 2, opts.seed, opts.frames, opts.interval);
    let dir = frames_dir.clone();
    let camera = std::thread::spawn(move || -> anyhow::Result<()> {
        for i in 0..n {
            // Every fourth frame has a defect, of each kind in turn.
            let kind = (i % 4 == 3).then(|| DefectKind::ALL[(i / 4) % 4]);
            let (img, _) = sample(size, false, kind, seed.wrapping_add(i as u64 * 7919));
            let name = format!("frame-{i:04}-{}.png", kind.map_or("good", |k| k.name()));
            // As a camera would: write under a hidden name, then rename into place.
            let tmp = dir.join(format!(".{name}.part"));
            img.save_with_format(&tmp, image::ImageFormat::Png)
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, dir.join(&name))?;
            std::thread::sleep(interval);
        }
        Ok(())
    });

    let mut summary = DemoSummary { out: out.clone(), ..Default::default() };
    let mut latencies = vec![];
    let mut reader = BufReader::new(std::fs::File::open(&decisions)?);
    let mut pos = 0;
    let t0 = Instant::now();
    let mut last_change = Instant::now();
    loop {
        reader.seek(SeekFrom::Start(pos))?;
        let mut line = String::new();
        let read = reader.read_line(&mut line)?;
        if read > 0 && line.ends_with('\n') {
            pos += read as u64;
            last_change = Instant::now();
            let d: serde_json::Value = serde_json::from_str(&line)?;
            print_decision(&d, &mut summary, &mut latencies);
            if summary.frames + summary.rejected == opts.frames {
                if !follow {
                    break;
                }
                // Following: the simulated camera's summary once, then frames keep coming.
                finish(&mut summary, t0, &mut latencies);
                overlays(out, &alerts)?;
                print_summary(&summary);
                println!("still watching {} and serving the page; Ctrl-C ends the demo", frames_dir.display());
            }
            continue;
        }
        anyhow::ensure!(
            follow || last_change.elapsed() < Duration::from_secs(60),
            "no decision for 60 s; see the log above"
        );
        if daemon.is_finished() {
            break;
        }
        if camera.is_finished() && last_change.elapsed() > Duration::from_secs(10) {
            // The camera stopped early: say why rather than wait.
            camera.join().map_err(|_| anyhow::anyhow!("the camera thread panicked"))??;
            anyhow::bail!("the daemon decided on {} of {} frames", summary.frames + summary.rejected, opts.frames);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    finish(&mut summary, t0, &mut latencies);
    camera.join().map_err(|_| anyhow::anyhow!("the camera thread panicked"))??;
    let _ = stop_tx.send(());
    rt.block_on(daemon)??;
    overlays(out, &alerts)?;
    print_summary(&summary);
    Ok(summary)
}

/// The rate and the median latency of what was decided so far.
fn finish(summary: &mut DemoSummary, t0: Instant, latencies: &mut [f64]) {
    summary.frames_per_s = summary.frames as f64 / t0.elapsed().as_secs_f64().max(1e-9);
    latencies.sort_by(f64::total_cmp);
    summary.p50_latency_ms = latencies.get(latencies.len() / 2).copied().unwrap_or(0.0);
}

/// Where the demo serves its page: vigil's usual port on loopback, or any free one when a
/// daemon already has it.
fn page_address() -> anyhow::Result<std::net::SocketAddr> {
    let usual = std::net::SocketAddr::from(([127, 0, 0, 1], 9187));
    let free = std::net::TcpListener::bind(usual)
        .or_else(|_| std::net::TcpListener::bind(("127.0.0.1", 0)))
        .context("finding a free port on 127.0.0.1 for the page")?;
    Ok(free.local_addr()?)
}

fn print_decision(d: &serde_json::Value, s: &mut DemoSummary, latencies: &mut Vec<f64>) {
    let source = d["source"].as_str().unwrap_or("?");
    let name = Path::new(source).file_name().map_or(source.into(), |n| n.to_string_lossy().into_owned());
    let defect = label(source).is_some_and(|l| l != "good");
    let n = s.frames + s.rejected + 1;
    match d["result"].as_str() {
        Some("rejected") => {
            s.rejected += 1;
            println!("{n:>4}  {name:<26} rejected: {}", d["error"].as_str().unwrap_or(""));
        }
        Some(result) => {
            s.frames += 1;
            let anomalous = result == "anomalous";
            latencies.push(d["latency_ms"].as_f64().unwrap_or(0.0));
            let verdict = match (anomalous, defect) {
                (true, true) => {
                    s.true_positives += 1;
                    "ANOMALY   (a defect: caught)"
                }
                (true, false) => {
                    s.false_positives += 1;
                    "ANOMALY   (a normal frame: false alarm)"
                }
                (false, true) => {
                    s.false_negatives += 1;
                    "normal    (a defect: missed)"
                }
                (false, false) => "normal",
            };
            if anomalous {
                s.anomalies += 1;
            }
            println!(
                "{n:>4}  {name:<26} {:>9.5} {:>6.2}  {verdict}",
                d["score"].as_f64().unwrap_or(f64::NAN),
                d["normalized_score"].as_f64().unwrap_or(f64::NAN)
            );
        }
        None => {}
    }
}

/// Writes each alert's snapshot (frame, heatmap, region box) as `overlays/<frame>.png`.
fn overlays(out: &Path, alerts: &Path) -> anyhow::Result<()> {
    let dir = out.join("overlays");
    std::fs::create_dir_all(&dir)?;
    let Ok(text) = std::fs::read_to_string(alerts) else { return Ok(()) };
    for line in text.lines() {
        let a: serde_json::Value = serde_json::from_str(line)?;
        let (Some(file), Some(source)) = (a["snapshot"]["file"].as_str(), a["source"].as_str()) else { continue };
        let stem = Path::new(source).file_stem().map_or("frame".into(), |s| s.to_string_lossy().into_owned());
        // While the daemon runs (--follow) the snapshot may still be on its way: it is written
        // after the alert is sent.
        let written = Instant::now();
        while !Path::new(file).exists() && written.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let img = image::open(file).with_context(|| format!("reading snapshot {file}"))?;
        img.save(dir.join(format!("{stem}.png")))?;
    }
    Ok(())
}

fn print_summary(s: &DemoSummary) {
    let defects = s.true_positives + s.false_negatives;
    let precision = if s.anomalies > 0 { s.true_positives as f64 / s.anomalies as f64 } else { f64::NAN };
    let recall = if defects > 0 { s.true_positives as f64 / defects as f64 } else { f64::NAN };
    println!();
    println!(
        "| frames | anomalies | defects caught | false alarms | missed | precision | recall | frames/s | p50 latency |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| {} | {} | {}/{} | {} | {} | {:.2} | {:.2} | {:.1} | {:.1} ms |",
        s.frames,
        s.anomalies,
        s.true_positives,
        defects,
        s.false_positives,
        s.false_negatives,
        precision,
        recall,
        s.frames_per_s,
        s.p50_latency_ms
    );
    println!();
    println!("output in {}:", s.out.display());
    println!("  frames/          the frames the simulated camera wrote");
    println!("  overlays/        each anomaly with its heatmap and region, as PNG");
    println!("  alerts.jsonl     the alerts, as sent over MQTT (schema/alert.schema.json)");
    println!("  decisions.jsonl  every frame's score and decision");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_broker_urls() {
        assert_eq!(label("/x/frame-0007-scratch.png"), Some("scratch"));
        assert_eq!(label("/x/frame-0001-good.png"), Some("good"));
        let m = broker("mqtt://10.0.0.5:1884").unwrap();
        assert_eq!((m.host.as_str(), m.port), ("10.0.0.5", Some(1884)));
        assert_eq!(broker("localhost").unwrap().port, None);
        assert!(broker("mqtt://host:x").is_err());
    }
}
