//! The daemon's HTTP listener (`[http]`): the operator's page and its API, `/metrics` and
//! `/healthz`, served by axum on hyper with a bound on connections (slow ones make room,
//! `conn`), header size and time, and body size and time, with every body read only after
//! the request has shown it may send one (`gate`).

// Handlers refuse with a ready `Response` (axum's own idiom); boxing it would buy nothing on
// a path that runs once per request.
#![allow(clippy::result_large_err)]

pub mod api;
pub mod auth;
pub mod conn;
pub mod gate;
pub mod limit;
pub mod login;
pub mod page;

pub use conn::serve;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::{Extension, Router, middleware};
use tokio::net::TcpListener;

use crate::dataset::Dataset;
use crate::decide::Policy;
use crate::live::Board;
use crate::metrics::Metrics;
use crate::problem::Problems;

/// `[http]`: the operator's page, metrics and health.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the page, `/metrics` and `/healthz`; absent: no HTTP server. On another
    /// address than loopback the page needs `token_file` (TLS: put a reverse proxy in front,
    /// see docs/operators-loop.md).
    pub listen: Option<SocketAddr>,
    /// Serve the operator's page and its API; false: only `/metrics` and `/healthz`.
    pub page: bool,
    /// File holding the page's token (one line; `openssl rand -hex 32`): changing a threshold
    /// or giving a verdict needs it, and so does reading the page when `listen` is not a
    /// loopback address. Default: `<state_dir>/http-token`, created at the first start.
    pub token_file: Option<PathBuf>,
    /// Connections served at once. When all are taken, the one that has waited longest
    /// (over 0.5 s) without sending a request, or in the body of a login, is closed to make
    /// room; if every one is answering a request, newcomers wait to be accepted. Live pages
    /// hold one each, and may take at most half of them (more are answered 503).
    pub max_connections: usize,
    /// Mark the page's session cookie `Secure` (sent over HTTPS only): set it when the page
    /// is reached through a TLS reverse proxy. The cookie is also `Secure` whenever the login
    /// comes through a proxy that says it was HTTPS (`X-Forwarded-Proto: https`).
    pub secure_cookie: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9187))),
            page: true,
            token_file: None,
            max_connections: 64,
            secure_cookie: false,
        }
    }
}

impl HttpConfig {
    /// Checks the values.
    pub fn validate(&self, p: &mut Problems) {
        if let Some(addr) = self.listen
            && self.page
            && !addr.ip().is_loopback()
            && self.token_file.is_none()
        {
            p.add(
                "http.listen",
                format!(
                    "{addr} is not a loopback address, so the page would be open to the network: set http.token_file to a file holding a token (`openssl rand -hex 32 > /etc/vigil/http-token`), listen on 127.0.0.1 behind a reverse proxy, or set http.page = false to serve only /metrics and /healthz"
                ),
            );
        }
        if self.max_connections == 0 {
            p.add("http.max_connections", "0 would serve nothing: use at least 1 (default 64)");
        }
    }
}

/// What the handlers share.
pub struct App {
    /// This box's id, shown on the page.
    pub device_id: String,
    /// `[http]`.
    pub http: HttpConfig,
    /// Where alert snapshots are kept.
    pub snapshot_dir: std::path::PathBuf,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The live state the page shows.
    pub board: Arc<Board>,
    /// Alert frames and the data set.
    pub dataset: Arc<Dataset>,
    /// Thresholds in force.
    pub policy: Arc<Policy>,
    /// Threshold changes and verdicts, as from MQTT.
    pub control: Arc<crate::control::Control>,
    /// The page's token.
    pub token: auth::Token,
    /// The latest frame of each camera as rendered, by frame count.
    pub rendered: std::sync::Mutex<Rendered>,
    /// Live pages (event streams) open at once: half the connections, so that open pages
    /// never leave `/metrics` and `/healthz` without one.
    pub live_pages: Arc<tokio::sync::Semaphore>,
}

/// Per camera: the board's frame count and that frame's JPEG with its anomaly map.
pub type Rendered = std::collections::HashMap<String, (u64, Arc<Vec<u8>>)>;

/// Largest request body (the API takes small JSON objects and the login form).
const MAX_BODY: usize = 4096;
/// Largest request head; hyper's smallest allowed buffer.
const MAX_HEAD: usize = 8192;
/// A client must send its request head within this time.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The routes: the page and its API when `page`, else only metrics and health.
pub fn router(app: Arc<App>) -> Router {
    let mut r = Router::new().route("/metrics", get(api::metrics)).route("/healthz", get(api::healthz));
    if app.http.page {
        // Writes show the token on their head before their body is read.
        let write = || middleware::from_fn_with_state(app.clone(), gate::write);
        r = r
            .route("/", get(page::index))
            .route("/login", get(login::login_form).post(login::login))
            .route("/static/{file}", get(page::asset))
            .route("/api/state", get(api::state))
            .route("/api/events", get(api::events))
            .route("/api/cameras/{camera}/history", get(api::history))
            .route("/api/cameras/{camera}/latest.jpg", get(api::latest))
            .route("/api/cameras/{camera}/threshold", post(api::threshold).layer(write()))
            .route("/api/cameras/{camera}/alerts/{id}/snapshot.jpg", get(api::snapshot))
            .route("/api/cameras/{camera}/alerts/{id}/frame", get(api::frame))
            .route("/api/cameras/{camera}/alerts/{id}/row", get(page::alert_row_html))
            .route("/api/cameras/{camera}/alerts/{id}/verdict", post(api::verdict).layer(write()));
    }
    r.fallback(api::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(Extension(Arc::new(limit::LoginLimiter::default())))
        .layer(middleware::from_fn(gate::security_headers))
        .with_state(app)
}

/// Binds `[http] listen` and starts serving; `None` when there is no listener.
pub async fn start(app: Arc<App>) -> anyhow::Result<Option<SocketAddr>> {
    use anyhow::Context;
    let Some(addr) = app.http.listen else { return Ok(None) };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("http.listen {addr}: cannot listen there; pick a free address or port"))?;
    let bound = listener.local_addr()?;
    let max = app.http.max_connections;
    let metrics = app.metrics.clone();
    tokio::spawn(serve(listener, router(app), max, metrics));
    Ok(Some(bound))
}
