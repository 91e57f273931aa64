//! The page's API: state, score history, live events (Server-Sent Events), the latest frame
//! with its anomaly map, alert snapshots and frames; threshold changes and verdicts; and
//! `/metrics`, `/healthz`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};

use super::App;
use super::auth::{check_read, check_write};
use crate::control::{ThresholdError, parse_threshold};
use crate::dataset::{Source, Verdict, VerdictError, valid_alert_id};
use crate::problem::valid_id;

fn text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body + "\n").into_response()
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// `GET /metrics`: the Prometheus exposition.
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], app.metrics.render()).into_response()
}

/// `GET /healthz`: 200 once ready (with any warnings), 503 while starting, stopping or failed.
pub async fn healthz(State(app): State<Arc<App>>) -> Response {
    // 503 while starting, stopping or failed (a stage ended, state_dir full): a load balancer
    // or monitor sees a box that scores nothing as down. Warnings keep 200 with their lines.
    let report = app.metrics.health.report();
    let status = if report.ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    text(status, report.text)
}

/// Anything else.
pub async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found: the page is at /, metrics at /metrics, health at /healthz".into())
}

/// Every camera the page shows: the configured ones, and members of MQTT groups seen so far.
pub fn cameras(app: &App) -> Vec<String> {
    let mut ids = app.policy.cameras();
    ids.extend(app.board.cameras());
    ids.sort();
    ids.dedup();
    ids
}

/// One listed alert with its verdict so far and whether its frame is still kept.
pub fn alert_entry(app: &App, camera: &str, alert: crate::alert::Alert) -> serde_json::Value {
    let verdict = app.dataset.verdict_of(camera, &alert.id);
    let frame = app.dataset.alert_frame(camera, &alert.id).is_some();
    serde_json::json!({ "alert": alert, "verdict": verdict, "frame": frame })
}

/// One camera's state as the page shows it.
pub fn camera_state(app: &App, camera: &str) -> serde_json::Value {
    let count = |result: &str| app.metrics.count("vigil_frames_total", &[("camera", camera), ("result", result)]);
    let alerts: Vec<serde_json::Value> =
        app.board.alerts(camera).into_iter().map(|a| alert_entry(app, camera, a)).collect();
    let slot = app.policy.slot_of(camera);
    let model = slot.map(|s| {
        let m = app.policy.model(s);
        let manifest = &m.bundle.manifest;
        serde_json::json!({ "name": manifest.name, "version": manifest.version, "family": manifest.family, "classes": manifest.class_names() })
    });
    serde_json::json!({
        "id": camera,
        "model": model,
        "threshold": app.policy.state(camera),
        "counters": {
            "normal": count("normal"), "anomalous": count("anomalous"), "rejected": count("rejected"),
            "alerts": app.metrics.count("vigil_alerts_total", &[("camera", camera)]),
        },
        "latest": app.board.latest(camera).map(|l| l.seq),
        "drift": app.board.drift_state(camera),
        "alerts": alerts,
    })
}

/// `GET /api/state`: every camera.
pub async fn state(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(r) = check_read(&app, &headers) {
        return r;
    }
    let cameras: Vec<serde_json::Value> = cameras(&app).iter().map(|c| camera_state(&app, c)).collect();
    Json(serde_json::json!({
        "device": app.device_id,
        "version": crate::VERSION,
        "history_seconds": crate::live::HISTORY.as_secs(),
        "cameras": cameras,
    }))
    .into_response()
}

/// `?since=` milliseconds since 1970.
#[derive(serde::Deserialize)]
pub struct Since {
    #[serde(default)]
    since: u64,
}

/// `GET /api/cameras/{camera}/history?since=ms`: the score chart's points.
pub async fn history(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(camera): Path<String>,
    Query(q): Query<Since>,
) -> Response {
    if let Err(r) = check_read(&app, &headers) {
        return r;
    }
    Json(app.board.history(&camera, q.since)).into_response()
}

/// `GET /api/events`: the live events as Server-Sent Events (`message` events, JSON data).
pub async fn events(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Err(r) = check_read(&app, &headers) {
        return r;
    }
    let Ok(permit) = app.live_pages.clone().try_acquire_owned() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live pages open: close one, or raise http.max_connections (half of it may be live pages)".into(),
        );
    };
    let rx = app.board.subscribe();
    // The permit lives as long as the stream: a closed page frees its place.
    let stream = futures_util::stream::unfold((rx, permit), |(mut rx, permit)| async move {
        let event = match rx.recv().await {
            Ok(json) => Event::default().data(json),
            // Fell behind: tell the page to fetch the whole state again.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Event::default().data(r#"{"type":"resync"}"#),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok::<Event, Infallible>(event), (rx, permit)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

fn image(bytes: Vec<u8>, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-store")], bytes).into_response()
}

/// `GET /api/cameras/{camera}/latest.jpg`: the latest frame with its anomaly map.
pub async fn latest(State(app): State<Arc<App>>, headers: HeaderMap, Path(camera): Path<String>) -> Response {
    if let Err(r) = check_read(&app, &headers) {
        return r;
    }
    let Some(latest) = app.board.latest(&camera) else {
        return text(StatusCode::NOT_FOUND, format!("no frame of camera `{}` yet", camera.escape_default()));
    };
    if let Some((seq, jpeg)) = app.rendered.lock().expect("render cache").get(&camera)
        && *seq == latest.seq
    {
        return image(jpeg.to_vec(), "image/jpeg");
    }
    let seq = latest.seq;
    let rendered = tokio::task::spawn_blocking(move || {
        let image = vigil_model::preprocess::decode(&latest.bytes).ok()?;
        let map = latest.map.as_deref().cloned().unwrap_or_else(|| ndarray::Array2::zeros((1, 1)));
        let none = crate::alert::Region { bbox: [0, 0, 0, 0], area_fraction: 0.0 };
        Some(crate::sink::snapshot::render(&image, latest.area, map.view(), latest.threshold, &none))
    })
    .await
    .ok()
    .flatten();
    match rendered {
        Some(jpeg) => {
            let jpeg = Arc::new(jpeg);
            app.rendered.lock().expect("render cache").insert(camera, (seq, jpeg.clone()));
            image(jpeg.to_vec(), "image/jpeg")
        }
        None => text(StatusCode::INTERNAL_SERVER_ERROR, "the latest frame could not be rendered".into()),
    }
}

fn alert_path(camera: &str, id: &str) -> Result<(), Response> {
    if valid_id(camera) && valid_alert_id(id) {
        Ok(())
    } else {
        Err(text(
            StatusCode::NOT_FOUND,
            "no such alert: camera ids are letters, digits, - and _; alert ids 26 characters".into(),
        ))
    }
}

/// `GET /api/cameras/{camera}/alerts/{id}/snapshot.jpg`: an alert's snapshot.
pub async fn snapshot(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((camera, id)): Path<(String, String)>,
) -> Response {
    if let Err(r) = check_read(&app, &headers).and_then(|_| alert_path(&camera, &id)) {
        return r;
    }
    let dir = app.snapshot_dir.clone();
    match tokio::fs::read(crate::sink::snapshot::path(&dir, &camera, &id)).await {
        Ok(b) => image(b, "image/jpeg"),
        Err(_) => text(StatusCode::NOT_FOUND, format!("no snapshot kept for alert {id}")),
    }
}

/// `GET /api/cameras/{camera}/alerts/{id}/frame`: an alert's clean frame, as it arrived.
pub async fn frame(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((camera, id)): Path<(String, String)>,
) -> Response {
    if let Err(r) = check_read(&app, &headers).and_then(|_| alert_path(&camera, &id)) {
        return r;
    }
    let Some(path) = app.dataset.alert_frame(&camera, &id) else {
        return text(StatusCode::NOT_FOUND, format!("no frame kept for alert {id}"));
    };
    let kind = match path.extension().and_then(|e| e.to_str()) {
        Some("png") => "image/png",
        Some("jpg") => "image/jpeg",
        Some("bmp") => "image/bmp",
        Some("tiff") => "image/tiff",
        _ => "application/octet-stream",
    };
    match tokio::fs::read(&path).await {
        Ok(b) => image(b, kind),
        Err(_) => text(StatusCode::NOT_FOUND, format!("no frame kept for alert {id}")),
    }
}

/// `POST /api/cameras/{camera}/threshold` with the body of `threshold/set`.
pub async fn threshold(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(camera): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = check_write(&app, &headers) {
        return r;
    }
    let set = match parse_threshold(&body) {
        Ok(s) => s,
        Err(e) => {
            app.metrics.inc("vigil_errors_total", &[("kind", "bad_threshold")]);
            return error(StatusCode::BAD_REQUEST, e);
        }
    };
    match app.control.set_threshold(&camera, &set).await {
        Ok(()) => Json(app.policy.state(&camera)).into_response(),
        Err(e @ ThresholdError::UnknownCamera(_)) => error(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ ThresholdError::UnknownClass { .. }) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ ThresholdError::NotSaved(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The body of a verdict.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerdictBody {
    verdict: Verdict,
}

/// `POST /api/cameras/{camera}/alerts/{id}/verdict` with `{"verdict": "false_alarm" | "confirmed"}`;
/// recorded as given on the page, from the client's address.
pub async fn verdict(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((camera, id)): Path<(String, String)>,
    peer: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    body: Bytes,
) -> Response {
    if let Err(r) = check_write(&app, &headers) {
        return r;
    }
    let v: VerdictBody = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            app.metrics.inc("vigil_errors_total", &[("kind", "bad_feedback")]);
            return error(
                StatusCode::BAD_REQUEST,
                format!("{e}: send {{\"verdict\": \"false_alarm\"}} or {{\"verdict\": \"confirmed\"}}"),
            );
        }
    };
    let source = Source::Page { client: peer.map(|axum::Extension(c)| c.0.to_string()) };
    match app.control.verdict(&camera, &id, v.verdict, &source).await {
        Ok(a) => Json(serde_json::json!({ "id": id, "verdict": v.verdict, "changed": a.changed })).into_response(),
        Err(e @ VerdictError::Io(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e @ VerdictError::BadId(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ VerdictError::Unknown { .. }) => error(StatusCode::NOT_FOUND, e.to_string()),
    }
}
