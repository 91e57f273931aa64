//! The daemon: wires sources → scoring → decision → sinks, serves metrics, reloads bundles,
//! and stops gracefully. [`run`] is the entry point for `vigil run` and for the tests.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, watch};

use crate::alert::{ALERT_SCHEMA, Alert, ModelRef, SnapshotRef, alert_id, rfc3339};
use crate::broker::{self, Broker, Incoming};
use crate::config::{CameraConfig, Config, ConfigError, Problem, SourceConfig};
use crate::decide::{Decider, Decision, region};
use crate::frame::Outcome;
use crate::metrics::Metrics;
use crate::scoring::{self, Finished, Model, Models};
use crate::sink::delivery::Delivery;
use crate::sink::outbox::Outbox;
use crate::sink::{Sinks, jsonl::Jsonl};
use crate::source::folder::{self, FolderCamera};
use crate::source::mqtt::{self as mqtt_source, MqttCamera};
use crate::state::{Ledger, Thresholds};

/// How long a stop may take before what is left is abandoned (systemd's default stop
/// timeout is 90 s; this leaves room).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Loads every camera's bundle (each distinct path once), checks and test-runs it; with
/// `skip_missing`, cameras whose bundle path does not exist are left out (validation has
/// reported them). Returns the models loaded and a problem per bundle that failed.
fn load_each(config: &Config, skip_missing: bool) -> (Vec<Arc<Model>>, Vec<Problem>) {
    let mut loaded: HashMap<PathBuf, Arc<Model>> = HashMap::new();
    let mut problems = vec![];
    let mut out = vec![];
    for (i, c) in config.cameras.iter().enumerate() {
        if skip_missing && !c.bundle.exists() {
            continue;
        }
        if let Some(m) = loaded.get(&c.bundle) {
            out.push(m.clone());
            continue;
        }
        match Model::load(&c.bundle, &config.engine) {
            Ok(m) => {
                let m = Arc::new(m);
                loaded.insert(c.bundle.clone(), m.clone());
                out.push(m);
            }
            Err(e) => problems.push(Problem { key: format!("cameras[{i}].bundle"), message: format!("{e:#}") }),
        }
    }
    (out, problems)
}

/// Loads every camera's bundle, in `[[cameras]]` order, or says which failed and why.
pub fn load_models(config: &Config) -> Result<Vec<Arc<Model>>, Vec<Problem>> {
    let (models, problems) = load_each(config, false);
    if problems.is_empty() { Ok(models) } else { Err(problems) }
}

/// Everything `vigil validate` checks: the config's own rules, then each bundle loaded and
/// test-run on the configured engine.
pub fn check(config: &Config) -> Vec<Problem> {
    let mut problems = config.validate();
    problems.extend(load_each(config, true).1);
    problems
}

fn config_error(problems: Vec<Problem>) -> anyhow::Error {
    ConfigError { path: PathBuf::new(), problems }.into()
}

/// Runs the daemon until `shutdown` completes, then stops gracefully: sources stop, frames
/// in flight are scored and alerted, sinks are flushed, `stopped` is published.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // Before anything slow: a SIGHUP without a handler would end the process, and the bundle
    // watcher must see a bundle replaced while the models load.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let problems = config.validate();
    if !problems.is_empty() {
        return Err(config_error(problems));
    }
    tracing::info!("vigil {} starting: device {}", crate::VERSION, config.device_id);
    // Bundle files changing on disk trigger a reload of that bundle.
    let (changed_tx, mut changed_rx) = mpsc::unbounded_channel::<PathBuf>();
    let _bundle_watcher = watch_bundles(&config, changed_tx);
    std::fs::create_dir_all(&config.state_dir).with_context(|| {
        format!("state_dir {}: cannot create it; fix the path or its permissions", config.state_dir.display())
    })?;
    let metrics = Arc::new(Metrics::default());
    let started = Instant::now();
    let cfg = config.clone();
    let loaded = tokio::task::spawn_blocking(move || load_models(&cfg)).await?.map_err(config_error)?;
    for (c, m) in config.cameras.iter().zip(&loaded) {
        tracing::info!(
            camera = c.id,
            "serving bundle {} v{} ({}) on {}",
            m.bundle.manifest.name,
            m.bundle.manifest.version,
            c.bundle.display(),
            m.engine.name()
        );
        model_info(&metrics, &c.id, m);
    }
    let models = Arc::new(Models::new(loaded, config.cameras.iter().map(|c| c.bundle.clone()).collect()));
    // Loading freed far more than the models keep (protobuf, graph optimisation).
    crate::memory::trim();

    if let Some(addr) = config.http.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("http.listen {addr}: cannot listen there; pick a free address or port"))?;
        tokio::spawn(crate::metrics::serve(listener, metrics.clone()));
    }

    let (results_tx, results_rx) = mpsc::channel(scoring::results_capacity(&config.scoring));
    let rois = config.cameras.iter().map(|c| c.roi).collect();
    let stages = scoring::start(&config.scoring, models.clone(), rois, results_tx);

    let mqtt_cameras: Vec<MqttCamera> = config
        .cameras
        .iter()
        .enumerate()
        .filter_map(|(slot, c)| match &c.source {
            SourceConfig::Mqtt(m) => Some(MqttCamera { slot, id: c.id.clone(), config: m.clone() }),
            SourceConfig::Folder(_) => None,
        })
        .collect();
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (messages_tx, messages_rx) = mpsc::channel(1024);
    let connection = match &config.mqtt {
        Some(m) => {
            let filters = mqtt_cameras.iter().map(|c| c.config.topic.clone()).collect();
            Some(broker::start(m, &config.device_id, filters, control_tx, messages_tx, metrics.clone())?)
        }
        None => None,
    };
    let broker = connection.as_ref().map(|(b, _)| b.clone());

    let thresholds = Arc::new(Mutex::new(Thresholds::open(&config.state_dir)?));
    let policy = Arc::new(Policy { cameras: config.cameras.clone(), models: models.clone(), thresholds });
    let delivery = match &config.mqtt {
        Some(m) => {
            let path = config.state_dir.join("outbox.jsonl");
            let outbox = Outbox::open(&path, config.alerts.outbox_max, config.alerts.outbox_full)?;
            Some(Delivery::start(m, &config.device_id, outbox, metrics.clone())?)
        }
        None => None,
    };
    let sinks = Sinks {
        stdout: config.alerts.stdout,
        jsonl: config.alerts.jsonl.as_deref().map(|p| Jsonl::open(p, true)).transpose()?,
        mqtt: broker.clone(),
        delivery,
        metrics: metrics.clone(),
    };
    let decide = tokio::spawn(decide_loop(
        DecideContext {
            device: config.device_id.clone(),
            config: config.clone(),
            policy: policy.clone(),
            metrics: metrics.clone(),
            snapshot_dir: config.alerts.snapshot_dir.clone().unwrap_or_else(|| config.state_dir.join("snapshots")),
            decisions: config.alerts.decisions_jsonl.as_deref().map(|p| Jsonl::open(p, false)).transpose()?,
        },
        results_rx,
        sinks,
    ));

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sources = tokio::task::JoinSet::new();
    let mut watching = vec![];
    for (slot, c) in config.cameras.iter().enumerate() {
        if let SourceConfig::Folder(f) = &c.source {
            let ledger = Ledger::open(&config.state_dir.join("folders").join(format!("{}.done", c.id)))?;
            let cam =
                FolderCamera { slot, camera: c.id.clone(), config: f.clone(), ledger: Arc::new(Mutex::new(ledger)) };
            let (frames, metrics, stop) = (stages.frames.clone(), metrics.clone(), stop_rx.clone());
            let (started_tx, started_rx) = tokio::sync::oneshot::channel();
            watching.push(started_rx);
            sources.spawn(async move {
                let id = cam.camera.clone();
                if let Err(e) = folder::run(cam, frames, metrics, stop, started_tx).await {
                    tracing::error!(camera = id, "folder source stopped: {e:#}");
                }
            });
        }
    }
    if let Some(b) = &broker {
        sources.spawn(mqtt_source::run(
            mqtt_cameras,
            messages_rx,
            stages.frames.clone(),
            b.clone(),
            metrics.clone(),
            stop_rx.clone(),
        ));
        tokio::spawn(control_loop(control_rx, b.clone(), policy.clone(), metrics.clone(), config.clone()));
    }

    let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2).unwrap_or(Duration::from_secs(3600));
    let mut watchdog_tick = tokio::time::interval(watchdog);
    let mut gauge_tick = tokio::time::interval(Duration::from_secs(1));
    let stats_every = config.mqtt.as_ref().map(|m| m.stats_interval).filter(|d| !d.is_zero());
    let mut stats_tick = tokio::time::interval(stats_every.unwrap_or(Duration::from_secs(3600)));
    stats_tick.tick().await;

    // Ready once every folder is watched (a source that failed has logged why).
    for w in watching {
        let _ = w.await;
    }
    metrics.set_ready(true);
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(
        "vigil {} ready: device {}, {} camera(s), started in {:.1}s",
        crate::VERSION,
        config.device_id,
        config.cameras.len(),
        started.elapsed().as_secs_f64()
    );

    tokio::pin!(shutdown);
    let mut due: HashSet<PathBuf> = HashSet::new();
    let mut due_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: reloading every bundle");
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                for p in unique_bundles(&config) {
                    reload(&config, &models, &metrics, p).await;
                }
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            }
            Some(p) = changed_rx.recv() => {
                // Wait for writes to settle: a bundle is often copied in several steps.
                due.insert(p);
                due_at = Some(tokio::time::Instant::now() + Duration::from_millis(500));
            }
            _ = async { tokio::time::sleep_until(due_at.expect("checked")).await }, if due_at.is_some() => {
                due_at = None;
                for p in std::mem::take(&mut due) {
                    tracing::info!("bundle {} changed on disk: reloading", p.display());
                    reload(&config, &models, &metrics, p).await;
                }
            }
            _ = watchdog_tick.tick() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
            _ = gauge_tick.tick() => {
                let depth = stages.frames.max_capacity() - stages.frames.capacity();
                metrics.set("vigil_queue_depth", &[], depth as f64);
                if depth == 0 {
                    // Idle: hand what a burst of frames left in the allocator back to the system.
                    crate::memory::trim();
                }
            }
            _ = stats_tick.tick(), if stats_every.is_some() => {
                if let Some(b) = &broker {
                    let body = serde_json::json!({ "device": config.device_id, "time": rfc3339(std::time::SystemTime::now()), "counters": metrics.snapshot() });
                    b.publish_lossy(b.topics.stats(), false, body.to_string().into_bytes());
                }
            }
        }
    }

    tracing::info!("stopping: finishing frames in flight");
    metrics.set_ready(false);
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let drained = tokio::time::timeout(STOP_TIMEOUT, async {
        let _ = stop_tx.send(true);
        while sources.join_next().await.is_some() {}
        tokio::task::spawn_blocking(move || stages.join()).await.ok();
        decide.await.ok()
    })
    .await;
    let sinks = match drained {
        Ok(sinks) => sinks,
        Err(_) => {
            tracing::warn!("stop: frames still in flight after {}s were abandoned", STOP_TIMEOUT.as_secs());
            None
        }
    };
    if let Some(d) = sinks.and_then(|s| s.delivery) {
        d.stop().await;
    }
    if let Some((b, conn)) = connection {
        conn.stop(&b, &metrics).await;
    }
    tracing::info!("stopped");
    Ok(())
}

fn model_info(metrics: &Metrics, camera: &str, m: &Model) {
    let version = m.bundle.manifest.version.to_string();
    metrics.set(
        "vigil_model_info",
        &[("camera", camera), ("name", &m.bundle.manifest.name), ("version", &version), ("engine", m.engine.name())],
        1.0,
    );
}

fn unique_bundles(config: &Config) -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    config.cameras.iter().map(|c| c.bundle.clone()).filter(|p| seen.insert(p.clone())).collect()
}

/// Loads, checks and test-runs the bundle at `path`, then swaps it in; a broken bundle is
/// refused and the old one keeps serving.
async fn reload(config: &Config, models: &Models, metrics: &Metrics, path: PathBuf) {
    let engine = config.engine.clone();
    let p = path.clone();
    match tokio::task::spawn_blocking(move || Model::load(&p, &engine)).await {
        Ok(Ok(m)) => {
            tracing::info!(
                "bundle {}: now serving {} v{}",
                path.display(),
                m.bundle.manifest.name,
                m.bundle.manifest.version
            );
            let m = Arc::new(m);
            for c in config.cameras.iter().filter(|c| c.bundle == path) {
                model_info(metrics, &c.id, &m);
            }
            models.swap(&path, m);
            crate::memory::trim();
            metrics.inc("vigil_reloads_total", &[("result", "ok")]);
        }
        Ok(Err(e)) => {
            tracing::error!("bundle {}: reload refused, the previous model keeps serving: {e:#}", path.display());
            metrics.inc("vigil_reloads_total", &[("result", "refused")]);
        }
        Err(e) => tracing::error!("bundle {}: reload failed: {e}", path.display()),
    }
}

fn watch_bundles(config: &Config, changed: mpsc::UnboundedSender<PathBuf>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let bundles = unique_bundles(config);
    let targets = bundles.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(ev) = res else { return };
        if matches!(ev.kind, notify::EventKind::Access(_)) {
            return;
        }
        for b in &targets {
            if ev.paths.iter().any(|p| p.starts_with(b) || p == b) {
                let _ = changed.send(b.clone());
            }
        }
    })
    .ok()?;
    for b in &bundles {
        // A folder bundle is watched itself; a lone .onnx through its folder.
        let target = if b.is_dir() { b.clone() } else { b.parent().map(|p| p.to_path_buf()).unwrap_or_default() };
        if let Err(e) = watcher.watch(&target, notify::RecursiveMode::NonRecursive) {
            tracing::warn!("cannot watch bundle {} for changes ({e}); reload it with SIGHUP", b.display());
        }
    }
    Some(watcher)
}

/// The threshold in force per camera: set at run time over MQTT, else the camera's config,
/// else the bundle's calibrated one.
struct Policy {
    cameras: Vec<CameraConfig>,
    models: Arc<Models>,
    thresholds: Arc<Mutex<Thresholds>>,
}

impl Policy {
    fn slot_of(&self, camera: &str) -> Option<usize> {
        self.cameras.iter().position(|c| c.id == camera).or_else(|| {
            // A camera id from a topic or payload belongs to an MQTT group.
            self.cameras.iter().position(|c| {
                matches!(&c.source, SourceConfig::Mqtt(m) if m.camera_from_topic.is_some() || m.camera_field.is_some())
            })
        })
    }

    fn threshold(&self, camera: &str, slot: usize) -> (f32, &'static str) {
        if let Some(t) = self.thresholds.lock().expect("thresholds lock").get(camera) {
            return (t, "runtime");
        }
        if let Some(t) = self.cameras[slot].threshold {
            return (t, "config");
        }
        (self.models.get(slot).bundle.manifest.threshold.value, "bundle")
    }

    fn state(&self, camera: &str) -> Option<serde_json::Value> {
        let slot = self.slot_of(camera)?;
        let (threshold, source) = self.threshold(camera, slot);
        Some(serde_json::json!({
            "camera": camera,
            "threshold": threshold,
            "source": source,
            "bundle_threshold": self.models.get(slot).bundle.manifest.threshold.value,
        }))
    }
}

/// Handles (re)connections and threshold changes.
async fn control_loop(
    mut rx: mpsc::UnboundedReceiver<Incoming>,
    broker: Broker,
    policy: Arc<Policy>,
    metrics: Arc<Metrics>,
    config: Config,
) {
    let publish_state = |camera: String| {
        let (broker, policy, metrics) = (broker.clone(), policy.clone(), metrics.clone());
        async move {
            if let Some(state) = policy.state(&camera) {
                let topic = broker.topics.camera(&camera, "threshold/state");
                let _ = broker.publish(&metrics, topic, true, state.to_string().into_bytes()).await;
            }
        }
    };
    while let Some(msg) = rx.recv().await {
        match msg {
            Incoming::Connected => {
                let mut cameras: Vec<String> = config.cameras.iter().map(|c| c.id.clone()).collect();
                cameras.extend(policy.thresholds.lock().expect("thresholds lock").all().keys().cloned());
                cameras.sort();
                cameras.dedup();
                for c in cameras {
                    publish_state(c).await;
                }
            }
            Incoming::ThresholdSet { camera, payload, handled } => {
                let mut saved_ok = true;
                match parse_threshold(&payload) {
                    Ok(value) if crate::config::valid_id(&camera) && policy.slot_of(&camera).is_some() => {
                        let saved = policy.thresholds.lock().expect("thresholds lock").set(&camera, value);
                        match saved {
                            Ok(()) => tracing::info!(camera, "threshold set over MQTT: {value:?}"),
                            Err(e) => {
                                tracing::error!(
                                    camera,
                                    "threshold could not be saved: {e:#}; it applies until a restart, and the broker delivers it again"
                                );
                                saved_ok = false;
                            }
                        }
                        publish_state(camera).await;
                    }
                    Ok(_) => {
                        tracing::warn!("threshold/set for unknown camera `{}` ignored", camera.escape_default());
                        metrics.inc("vigil_errors_total", &[("kind", "bad_threshold")]);
                    }
                    Err(e) => {
                        tracing::warn!(camera, "threshold/set refused: {e}");
                        metrics.inc("vigil_errors_total", &[("kind", "bad_threshold")]);
                    }
                }
                // Acknowledged only once saved: had vigil died before, or had the save failed,
                // the broker delivers it again.
                if saved_ok {
                    let _ = handled.send(());
                } else {
                    broker.redeliver();
                }
            }
        }
    }
}

/// A threshold payload: a number, `{"threshold": n}`, or `reset` / `null` / empty to go back
/// to the configured or calibrated threshold.
pub fn parse_threshold(payload: &[u8]) -> Result<Option<f32>, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "payload is not UTF-8 text".to_owned())?.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("reset") || text == "null" {
        return Ok(None);
    }
    let value = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Number(n)) => n.as_f64(),
        Ok(serde_json::Value::Object(o)) => match o.get("threshold") {
            Some(serde_json::Value::Null) => return Ok(None),
            Some(v) => v.as_f64(),
            None => None,
        },
        _ => None,
    };
    match value {
        Some(v) if v.is_finite() => Ok(Some(v as f32)),
        _ => Err(format!("`{}`: send a number, {{\"threshold\": n}}, or \"reset\"", text.escape_default())),
    }
}

struct DecideContext {
    device: String,
    config: Config,
    policy: Arc<Policy>,
    metrics: Arc<Metrics>,
    snapshot_dir: PathBuf,
    decisions: Option<Jsonl>,
}

impl DecideContext {
    /// Appends a frame's decision to `decisions_jsonl`, if configured.
    fn record(&mut self, line: serde_json::Value) {
        if let Some(d) = &mut self.decisions
            && let Err(e) = d.append(&line.to_string())
        {
            tracing::warn!("{e:#}");
            self.metrics.inc("vigil_errors_total", &[("kind", "sink_decisions")]);
        }
    }
}

/// Decides for every scored frame, sends alerts, and reports each frame done to its source.
async fn decide_loop(mut ctx: DecideContext, mut results: mpsc::Receiver<Finished>, mut sinks: Sinks) -> Sinks {
    let mut decider = Decider::default();
    let a = ctx.config.alerts.clone();
    let snapshots = crate::snapshot::Worker::start(
        ctx.snapshot_dir.clone(),
        a.snapshot_keep,
        sinks.mqtt.clone(),
        ctx.metrics.clone(),
    );
    let publish_scores = ctx.config.mqtt.as_ref().is_some_and(|m| m.publish_scores);
    while let Some(finished) = results.recv().await {
        match finished {
            Finished::Rejected { mut frame, kind, reason } => {
                ctx.metrics.rejected(&frame.camera, &frame.origin.describe(), kind, &reason);
                ctx.record(serde_json::json!({
                    "camera": frame.camera, "source": frame.origin.describe(), "result": "rejected",
                    "kind": kind, "error": reason,
                }));
                if let Some(done) = frame.done.take() {
                    let _ = done.send(Outcome::Rejected(reason));
                }
            }
            Finished::Scored { mut prepared, score, mut map } => {
                let frame = &mut prepared.frame;
                let model = prepared.model.clone();
                let manifest = &model.bundle.manifest;
                let (threshold, _) = ctx.policy.threshold(&frame.camera, frame.slot);
                let normalized =
                    manifest.normalized_score(score, threshold).unwrap_or(if score > threshold { 1.0 } else { 0.0 });
                let cooldown = ctx.config.cameras[frame.slot].cooldown.unwrap_or(a.cooldown);
                let before = decider.save(&frame.camera);
                let decision = decider.decide(&frame.camera, score, threshold, cooldown, a.hysteresis, Instant::now());
                let result = if decision == Decision::Normal { "normal" } else { "anomalous" };
                ctx.metrics.inc("vigil_frames_total", &[("camera", &frame.camera), ("result", result)]);
                ctx.metrics.score(&frame.camera, normalized as f64);
                let source = frame.origin.describe();
                if publish_scores && let Some(b) = &sinks.mqtt {
                    let body = serde_json::json!({
                        "camera": frame.camera, "source": source, "frame_time": rfc3339(frame.time),
                        "score": score, "normalized_score": normalized, "threshold": threshold, "anomalous": result == "anomalous",
                    });
                    b.publish_lossy(b.topics.camera(&frame.camera, "score"), false, body.to_string().into_bytes());
                }
                let mut outcome = Outcome::Scored;
                let mut record = serde_json::json!({
                    "camera": frame.camera, "source": source, "frame_time": rfc3339(frame.time), "score": score,
                    "normalized_score": normalized, "threshold": threshold, "result": result,
                    "latency_ms": frame.received.elapsed().as_secs_f64() * 1e3,
                });
                match decision {
                    Decision::Normal => {}
                    Decision::Suppressed => {
                        ctx.metrics.inc("vigil_alerts_suppressed_total", &[("camera", &frame.camera)])
                    }
                    Decision::Alert { suppressed_before } => {
                        let id = alert_id(frame.time, &ctx.device, &frame.camera, &source, &prepared.sha256);
                        let reg = map.as_ref().map(|m| region(m.view(), threshold, prepared.area));
                        // The snapshot is rendered after the alert is on its way; the alert
                        // names where it will be.
                        let snapshot = match (map.take(), &reg) {
                            (Some(map), Some(region)) => Some(crate::snapshot::Job {
                                frame: std::mem::take(&mut frame.bytes),
                                area: prepared.area,
                                map,
                                threshold,
                                region: region.clone(),
                                camera: frame.camera.clone(),
                                id: id.clone(),
                            }),
                            _ => None,
                        };
                        let file = (snapshot.is_some() && a.snapshot_keep > 0).then(|| {
                            crate::snapshot::path(&ctx.snapshot_dir, &frame.camera, &id).display().to_string()
                        });
                        let topic = sinks
                            .mqtt
                            .as_ref()
                            .filter(|_| snapshot.is_some())
                            .map(|b| b.topics.camera(&frame.camera, "snapshot"));
                        let alert = Alert {
                            schema: ALERT_SCHEMA.into(),
                            id,
                            device: ctx.device.clone(),
                            camera: frame.camera.clone(),
                            source,
                            frame_time: rfc3339(frame.time),
                            detected_at: rfc3339(std::time::SystemTime::now()),
                            score,
                            normalized_score: normalized,
                            threshold,
                            model: ModelRef {
                                name: manifest.name.clone(),
                                version: manifest.version,
                                sha256: model.bundle.model_sha256.clone(),
                            },
                            region: reg,
                            snapshot: (topic.is_some() || file.is_some()).then_some(SnapshotRef { topic, file }),
                            suppressed_before,
                        };
                        tracing::info!(
                            camera = alert.camera,
                            id = alert.id,
                            "anomaly: score {score:.4} > {threshold:.4} in {}",
                            alert.source
                        );
                        record["alert"] = alert.id.clone().into();
                        if let Err(e) = sinks.alert(&alert) {
                            outcome = Outcome::Retry(format!("{e:#}"));
                            decider.restore(&frame.camera, before);
                        }
                        if let Some(job) = snapshot {
                            snapshots.submit(job);
                        }
                        ctx.metrics.inc("vigil_alerts_total", &[("camera", &alert.camera)]);
                    }
                }
                ctx.metrics.latency(frame.received.elapsed().as_secs_f64());
                ctx.record(record);
                if let Some(done) = frame.done.take() {
                    let _ = done.send(outcome);
                }
            }
        }
    }
    sinks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_payloads() {
        assert_eq!(parse_threshold(b"0.25"), Ok(Some(0.25)));
        assert_eq!(parse_threshold(br#"{"threshold": 2}"#), Ok(Some(2.0)));
        assert_eq!(parse_threshold(b"reset"), Ok(None));
        assert_eq!(parse_threshold(br#"{"threshold": null}"#), Ok(None));
        assert!(parse_threshold(b"high").is_err());
        assert!(parse_threshold(&[0xff]).is_err());
    }
}
