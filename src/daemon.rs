//! The daemon's wiring and its stop sequence: [`run`] starts sources → scoring → decide →
//! sinks with the MQTT session, the control task and the metrics server, serves until the
//! `shutdown` future completes, then stops as `shutdown.rs` describes. It is the entry point
//! of `vigil run` and of the tests.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc;

use crate::alert::rfc3339;
use crate::config::Config;
use crate::control::Control;
use crate::dataset::Dataset;
use crate::decide::{self, Policy};
use crate::homeassistant::Announcer;
use crate::live::Board;
use crate::metrics::Metrics;
use crate::mqtt::{self, Connection};
use crate::problem::{ConfigError, Problem};
use crate::reload;
use crate::scoring::Queue;
use crate::scoring::{self, Models};
use crate::shutdown::Stop;
use crate::sink::delivery::Delivery;
use crate::sink::outbox::Outbox;
use crate::sink::publish::Publisher;
use crate::sink::{Sinks, jsonl::Jsonl};
use crate::source::SourceConfig;
use crate::source::folder::{self, FolderCamera};
use crate::source::mqtt::{self as mqtt_source, MqttCamera};
use crate::source::{rtsp, v4l2};
use crate::state::{Ledger, Thresholds};
use crate::trigger::Triggers;
use crate::web::App;
use crate::web::auth::Token;

/// How long a stop may take before what is left is abandoned (systemd's default stop
/// timeout is 90 s; this leaves room).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a changed bundle must be quiet before it is reloaded: bundles are often copied in
/// several steps.
const RELOAD_SETTLE: Duration = Duration::from_millis(500);

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
    let (changed_tx, mut changed_rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut bundle_watcher = reload::watch(&config, changed_tx);
    std::fs::create_dir_all(&config.state_dir).with_context(|| {
        format!("state_dir {}: cannot create it; fix the path or its permissions", config.state_dir.display())
    })?;
    let metrics = Arc::new(Metrics::default());
    // From here until the stop, a vital task that ends is a failure (health.rs).
    metrics.health.arm();
    let started = Instant::now();
    let models = load(&config, &metrics).await?;

    let (results_tx, results_rx) = mpsc::channel(scoring::results_capacity(&config.scoring));
    let rois = config.cameras.iter().map(|c| c.roi).collect();
    let stages = scoring::start(&config.scoring, models.clone(), rois, results_tx, &metrics.health);

    let mqtt_cameras: Vec<MqttCamera> = config
        .cameras
        .iter()
        .enumerate()
        .filter_map(|(slot, c)| match &c.source {
            SourceConfig::Mqtt(m) => {
                Some(MqttCamera { slot, id: c.id.clone(), class: c.class.clone(), config: m.clone() })
            }
            _ => None,
        })
        .collect();
    let triggers = Arc::new(Triggers::new(
        config.cameras.iter().enumerate().filter_map(|(slot, c)| c.trigger.clone().map(|t| (slot, c.id.clone(), t))),
        metrics.clone(),
    ));
    let queue = Queue::new(stages.frames.clone(), triggers.clone());
    let (control_tx, control_rx) = mqtt::control_channel();
    let (messages_tx, messages_rx) = mpsc::channel(1024);
    let session = match &config.mqtt {
        Some(m) => {
            let filters = mqtt_cameras.iter().map(|c| c.config.topic.clone()).collect();
            let homeassistant =
                Announcer::new(config.mqtt.as_ref(), &config.device_id, &config.cameras, &config.state_dir, &metrics)?
                    .map(Arc::new);
            let session = mqtt::Subscriptions {
                frames: filters,
                triggers: triggers.clone(),
                homeassistant,
                fleet: config.fleet.is_some(),
            };
            Some(mqtt::start(m, &config.device_id, session, control_tx, messages_tx, metrics.clone())?)
        }
        None => None,
    };
    let client = session.as_ref().map(|(c, _)| c.clone());
    let publisher = Publisher::new(client.clone(), config.mqtt.as_ref().is_some_and(|m| m.publish_scores));

    let thresholds = Thresholds::open(&config.state_dir, &metrics)?;
    let policy = Arc::new(Policy::new(config.cameras.clone(), models.clone(), thresholds));
    let board = Arc::new(Board::default());
    let dataset =
        Arc::new(Dataset::new(&config.state_dir, config.dataset.clone()).with_reserve(config.alerts.disk_reserve()));
    for c in &config.cameras {
        board.seed_alerts(&c.id, dataset.recent_alerts(&c.id, crate::live::RECENT_ALERTS));
    }
    let control = Arc::new(Control {
        publisher: publisher.clone(),
        policy: policy.clone(),
        metrics: metrics.clone(),
        dataset: dataset.clone(),
        board: board.clone(),
        fleet: config.fleet.as_ref().map(|f| {
            Arc::new(crate::fleet::Receiver::new(
                f,
                &config.device_id,
                &config.state_dir,
                &config.engine,
                &config.cameras,
            ))
        }),
    });
    if config.http.listen.is_some() {
        let token = match config.http.page {
            true => Token::load(config.http.token_file.as_deref(), &config.state_dir)?,
            // Nothing to protect: only /metrics and /healthz are served.
            false => Token::new(""),
        };
        let app = Arc::new(App {
            device_id: config.device_id.clone(),
            http: config.http.clone(),
            snapshot_dir: config.alerts.snapshot_dir(&config.state_dir),
            metrics: metrics.clone(),
            board: board.clone(),
            dataset: dataset.clone(),
            policy: policy.clone(),
            control: control.clone(),
            token,
            rendered: Default::default(),
            live_pages: Arc::new(tokio::sync::Semaphore::new((config.http.max_connections / 2).max(1))),
        });
        if let Some(addr) = crate::web::start(app).await? {
            tracing::info!(
                "http: {} on http://{addr}",
                if config.http.page { "the page, /metrics and /healthz" } else { "/metrics and /healthz" }
            );
        }
    }
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
        publisher: publisher.clone(),
        delivery,
        metrics: metrics.clone(),
    };
    let decide = decide::Stage {
        device: config.device_id.clone(),
        alerts: config.alerts.clone(),
        snapshot_dir: config.alerts.snapshot_dir(&config.state_dir),
        cooldowns: config.cameras.iter().map(|c| c.cooldown).collect(),
        sample_normal: config.dataset.sample_normal > 0,
        drift: config.drift.clone(),
        policy: policy.clone(),
        metrics: metrics.clone(),
        decisions: config.alerts.decisions_jsonl.as_deref().map(|p| Jsonl::open(p, false)).transpose()?,
        sinks,
        board,
        dataset,
    };
    let vital = metrics.health.vital("decide stage");
    let decide = tokio::spawn(async move {
        let _vital = vital;
        decide.run(results_rx).await
    });

    let stop = Stop::new();
    let mut sources = tokio::task::JoinSet::new();
    let mut watching = vec![];
    for (slot, c) in config.cameras.iter().enumerate() {
        if let SourceConfig::Folder(f) = &c.source {
            let ledger = Ledger::open(&config.state_dir.join("folders").join(format!("{}.done", c.id)))?;
            let cam = FolderCamera {
                slot,
                camera: c.id.clone(),
                class: c.class.clone(),
                config: f.clone(),
                ledger: Arc::new(Mutex::new(ledger)),
            };
            let (frames, metrics, shutdown) = (queue.clone(), metrics.clone(), stop.subscribe());
            let (started_tx, started_rx) = tokio::sync::oneshot::channel();
            watching.push(started_rx);
            sources.spawn(folder_camera(cam, frames, metrics, shutdown, started_tx));
        }
    }
    for (slot, c) in config.cameras.iter().enumerate() {
        let out = || crate::source::camera::Output {
            slot,
            camera: c.id.clone(),
            class: c.class.clone(),
            origin: String::new(),
            queue: queue.clone(),
            metrics: metrics.clone(),
        };
        let triggered = c.trigger.is_some();
        match &c.source {
            SourceConfig::Rtsp(r) => {
                let camera = rtsp::RtspCamera { config: r.clone(), triggered };
                let out = crate::source::camera::Output { origin: r.url.clone(), ..out() };
                let vital = metrics.health.vital(format!("camera {} (rtsp)", c.id));
                let run = rtsp::run(camera, out, stop.subscribe());
                sources.spawn(async move {
                    let _vital = vital;
                    run.await
                });
            }
            SourceConfig::V4l2(v) => {
                let out = crate::source::camera::Output { origin: v.device.display().to_string(), ..out() };
                let vital = metrics.health.vital(format!("camera {} (v4l2)", c.id));
                let run = v4l2::run(v.clone(), triggered, out, stop.subscribe());
                sources.spawn(async move {
                    let _vital = vital;
                    run.await
                });
            }
            SourceConfig::Folder(_) | SourceConfig::Mqtt(_) => {}
        }
    }
    if let Some(c) = &client {
        let vital = metrics.health.vital("MQTT frame source");
        // Group members with kept frames from earlier runs count against their group's bound.
        let configured: std::collections::HashSet<&str> = config.cameras.iter().map(|c| c.id.as_str()).collect();
        let known = std::fs::read_dir(config.state_dir.join("frames"))
            .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|id| !configured.contains(id.as_str()))
            .collect();
        let run = mqtt_source::run(
            mqtt_cameras,
            messages_rx,
            queue.clone(),
            c.clone(),
            metrics.clone(),
            known,
            stop.subscribe(),
        );
        sources.spawn(async move {
            let _vital = vital;
            run.await
        });
        let vital = metrics.health.vital("control (threshold, feedback, rollout)");
        let run = crate::control::run(control_rx, c.clone(), control.clone());
        tokio::spawn(async move {
            let _vital = vital;
            run.await
        });
    }

    if !triggers.is_empty() {
        let vital = metrics.health.vital("triggers");
        let run = triggers.clone().watch(stop.subscribe());
        tokio::spawn(async move {
            let _vital = vital;
            run.await
        });
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
    let mut changed = reload::Settling::new(RELOAD_SETTLE);
    let mut raised = std::collections::BTreeSet::new();
    let mut failure: Option<(String, Instant)> = None;
    let mut ended = None;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = hangup.recv() => {
                tracing::info!("SIGHUP: reloading every bundle");
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                for p in reload::unique_bundles(&config) {
                    reload::reload(&config, &models, &metrics, p).await;
                }
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            }
            Some(p) = changed_rx.recv() => changed.add(p),
            due = changed.settled() => {
                for p in due {
                    tracing::info!("bundle {} changed on disk: reloading", p.display());
                    if let Some(w) = bundle_watcher.as_mut() {
                        reload::rewatch(w, &p);
                    }
                    reload::reload(&config, &models, &metrics, p).await;
                }
            }
            _ = watchdog_tick.tick() => {
                // A daemon whose stage ended is not fed to the watchdog: systemd restarts it even
                // if the stop below hangs.
                if failure.is_none() {
                    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
                }
            }
            _ = gauge_tick.tick() => {
                let outbox_failing = metrics.gauge("vigil_outbox_failing", &[]) > 0.0;
                crate::space::check(&config.state_dir, config.alerts.disk_reserve(), outbox_failing, &metrics);
                health_gauges(&metrics, &mut raised);
                if let Some((name, c)) = metrics.health.failed().filter(|(n, _)| n.starts_with("stage:")) {
                    let since = failure.get_or_insert_with(|| (name.clone(), Instant::now())).1;
                    // Reported on /healthz for a moment (monitors, the test) before the process
                    // ends and systemd starts it again.
                    if since.elapsed() >= FAILED_GRACE {
                        tracing::error!("{name}: {}; ending", c.message);
                        ended = Some(anyhow::anyhow!("{name}: {}", c.message));
                        break;
                    }
                }
                let depth = stages.frames.max_capacity() - stages.frames.capacity();
                metrics.set("vigil_queue_depth", &[], depth as f64);
                if depth == 0 {
                    // Idle: hand what a burst of frames left in the allocator back to the system.
                    crate::memory::trim();
                }
            }
            _ = stats_tick.tick(), if stats_every.is_some() => {
                publisher.stats(&serde_json::json!({
                    "device": config.device_id, "time": rfc3339(std::time::SystemTime::now()), "counters": metrics.snapshot(),
                }));
            }
        }
    }

    // The stop sequence (shutdown.rs): sources, scoring, decisions, then the sinks.
    tracing::info!("stopping: finishing frames in flight");
    metrics.health.set_stopping();
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    // The scoring stages drain once every sender of frames is gone: this one, then the sources'.
    drop(queue);
    let drained = tokio::time::timeout(STOP_TIMEOUT, async {
        stop.stop();
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
    publisher.stopped().await;
    if let Some((_, connection)) = session {
        Connection::stop(connection).await;
    }
    tracing::info!("stopped");
    match ended {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// How long a daemon whose stage ended reports it before it ends.
const FAILED_GRACE: Duration = Duration::from_secs(3);

/// `vigil_health_condition`: 1 for each condition raised, 0 once cleared.
fn health_gauges(metrics: &Metrics, raised: &mut std::collections::BTreeSet<(String, &'static str)>) {
    let now: std::collections::BTreeSet<(String, &'static str)> = metrics
        .health
        .conditions()
        .into_iter()
        .map(|(n, c)| (n, if c.severity == crate::health::Severity::Failed { "failed" } else { "warning" }))
        .collect();
    for (n, s) in raised.difference(&now) {
        metrics.set("vigil_health_condition", &[("condition", n), ("severity", s)], 0.0);
    }
    for (n, s) in &now {
        metrics.set("vigil_health_condition", &[("condition", n), ("severity", s)], 1.0);
    }
    *raised = now;
}

/// A folder camera: started again with a backoff when it fails (a folder removed, the file
/// watcher refused), its `source:<camera>` condition raised until it runs again.
async fn folder_camera(
    cam: FolderCamera,
    frames: Queue,
    metrics: Arc<Metrics>,
    mut shutdown: crate::shutdown::Shutdown,
    started: tokio::sync::oneshot::Sender<()>,
) {
    let _vital = metrics.health.vital(format!("camera {} (folder)", cam.camera));
    let condition = format!("source:{}", cam.camera);
    let mut backoff = crate::backoff::Backoff::default();
    let mut started = Some(started);
    let worked = std::sync::atomic::AtomicBool::new(false);
    loop {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let run = folder::run(cam.clone(), frames.clone(), metrics.clone(), shutdown.clone(), tx);
        let watch = async {
            if rx.await.is_ok() {
                worked.store(true, std::sync::atomic::Ordering::Relaxed);
                metrics.health.clear(&condition);
                if let Some(s) = started.take() {
                    let _ = s.send(());
                }
            }
            std::future::pending::<()>().await
        };
        let result = tokio::select! {
            r = run => r,
            () = watch => unreachable!("pending"),
        };
        match result {
            Ok(()) => return, // stopped
            Err(e) => {
                // Ready is not held back for a camera that cannot start: the others serve.
                if let Some(s) = started.take() {
                    let _ = s.send(());
                }
                metrics.inc("vigil_errors_total", &[("kind", "source")]);
                let wait =
                    crate::backoff::jitter(backoff.next(worked.swap(false, std::sync::atomic::Ordering::Relaxed)));
                metrics.health.raise(
                    &condition,
                    crate::health::Severity::Failed,
                    format!("folder camera {} stopped: {e:#}; trying again in {}s", cam.camera, wait.as_secs()),
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.recv() => return,
                }
            }
        }
    }
}

/// Loads every camera's bundle (off the async threads) and reports what each camera serves.
async fn load(config: &Config, metrics: &Metrics) -> anyhow::Result<Arc<Models>> {
    let cfg = config.clone();
    let loaded = tokio::task::spawn_blocking(move || reload::load_models(&cfg)).await?.map_err(config_error)?;
    for (c, m) in config.cameras.iter().zip(&loaded) {
        tracing::info!(
            camera = c.id,
            "serving bundle {} v{} ({}) on {}",
            m.bundle.manifest.name,
            m.bundle.manifest.version,
            c.bundle.display(),
            m.engine.name()
        );
        reload::model_info(metrics, &c.id, m);
    }
    let models = Models::new(loaded, config.cameras.iter().map(|c| c.bundle.clone()).collect());
    // Loading freed far more than the models keep (protobuf, graph optimisation).
    crate::memory::trim();
    Ok(Arc::new(models))
}
