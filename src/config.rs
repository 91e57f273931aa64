//! The daemon's configuration: the documented structs behind `vigil.toml`, loading (TOML plus
//! `VIGIL__SECTION__KEY` environment overrides) and the pure validation that `vigil validate`
//! and `vigil run` perform before anything starts.
//!
//! `examples/vigil.toml` is the commented example; the README's configuration reference lists
//! every key with its default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::EngineConfig;

/// The whole daemon configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This box's id in MQTT topics and alerts (letters, digits, `-`, `_`).
    pub device_id: String,
    /// Where vigil keeps what must survive a restart: which files were done, thresholds set
    /// at run time, the alert outbox, snapshots.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Inference engine.
    #[serde(default)]
    pub engine: EngineConfig,
    /// The scoring pipeline between sources and decisions.
    #[serde(default)]
    pub scoring: ScoringConfig,
    /// The MQTT broker: alerts go there, and MQTT sources read from it.
    #[serde(default)]
    pub mqtt: Option<MqttConfig>,
    /// Where alerts go besides MQTT, and how they are decided.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// Prometheus `/metrics` and `/healthz`.
    #[serde(default)]
    pub http: HttpConfig,
    /// The cameras.
    #[serde(default)]
    pub cameras: Vec<CameraConfig>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/vigil")
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` or `json` (one JSON object per line, for log shippers).
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `vigil=debug`; `VIGIL_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Human, level: "info".into() }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// JSON objects.
    Json,
}

/// `[scoring]`: queues, batching and workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoringConfig {
    /// Frames waiting to be decoded; a full queue slows the sources down (backpressure).
    /// Each waiting frame holds its encoded bytes (150 KB for a 640x480 JPEG): 16 keep the
    /// decoder and the engine busy (64 scored no faster here) at a quarter of the memory.
    pub queue: usize,
    /// Most frames scored in one engine call when frames queue up.
    pub max_batch: usize,
    /// How long the engine waits for a batch to fill once a frame is ready (`0ms`: never).
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Threads that decode and preprocess frames (overlapping the engine).
    pub decode_workers: usize,
}

impl Default for ScoringConfig {
    fn default() -> Self {
        ScoringConfig { queue: 16, max_batch: 8, max_wait: Duration::from_millis(2), decode_workers: 1 }
    }
}

/// `[mqtt]`: the broker connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker port; default 1883, or 8883 with TLS.
    #[serde(default)]
    pub port: Option<u16>,
    /// MQTT client id; default `vigil-<device_id>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// User name.
    #[serde(default)]
    pub username: Option<String>,
    /// Password (prefer `password_file` or `VIGIL__MQTT__PASSWORD`).
    #[serde(default)]
    pub password: Option<String>,
    /// A file holding the password (trailing newline ignored), e.g. a systemd credential.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// TLS, with the server's certificate verified against `ca_file`. Required for a broker
    /// on another machine unless `plaintext = true`; absent: plain TCP.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// QoS of alerts: 2 (default; with the outbox, each alert reaches the broker once even
    /// across a crash) or 1 for brokers without QoS 2 (some cloud brokers), where an alert
    /// cut off by a crash may arrive twice, under the same id.
    #[serde(default = "default_alert_qos")]
    pub alert_qos: u8,
    /// Accept plain TCP to a broker on another machine (frames, alerts and the password then
    /// cross the network in clear). Off: such a config is refused, never silently insecure.
    #[serde(default)]
    pub plaintext: bool,
    /// Topic prefix: topics are `<prefix>/<device_id>/...`.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// MQTT keep-alive.
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Publish every frame's score on `<prefix>/<device>/<camera>/score`.
    #[serde(default)]
    pub publish_scores: bool,
    /// How often counters go to `<prefix>/<device>/stats` (`0s`: never).
    #[serde(default = "default_stats_interval", with = "humantime_serde")]
    pub stats_interval: Duration,
    /// Longest wait between reconnection attempts (the wait doubles from 1 s up to this).
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
}

fn default_prefix() -> String {
    "vigil".into()
}
fn default_alert_qos() -> u8 {
    2
}
fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}
fn default_stats_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}

impl MqttConfig {
    /// The port actually used.
    pub fn effective_port(&self) -> u16 {
        self.port.unwrap_or(if self.tls.is_some() { 8883 } else { 1883 })
    }

    /// The password from `password` or `password_file`.
    pub fn effective_password(&self) -> std::io::Result<Option<String>> {
        if let Some(p) = &self.password {
            return Ok(Some(p.clone()));
        }
        match &self.password_file {
            Some(f) => Ok(Some(std::fs::read_to_string(f)?.trim_end_matches(['\n', '\r']).to_owned())),
            None => Ok(None),
        }
    }
}

/// `[mqtt.tls]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA(s) that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// PEM client certificate, for brokers that want one (with `client_key`).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

/// `[alerts]`: sinks besides MQTT, snapshots, and the decision rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Print each alert as a JSON line on standard output.
    pub stdout: bool,
    /// Append each alert as a JSON line to this file.
    pub jsonl: Option<PathBuf>,
    /// Append every frame's decision (score, threshold, result, alert id or rejection) as a
    /// JSON line to this file: an audit trail, and what `vigil demo` reads.
    pub decisions_jsonl: Option<PathBuf>,
    /// Folder for JPEG snapshots (the frame with the heatmap); default `<state_dir>/snapshots`.
    pub snapshot_dir: Option<PathBuf>,
    /// Snapshots kept per camera (oldest removed first); 0 keeps none on disk.
    pub snapshot_keep: usize,
    /// After an alert, further anomalous frames of that camera within this time are counted
    /// but not alerted (`0s`: every anomalous frame alerts, right for one-part-per-frame lines).
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// After an alert, the camera re-arms only once a score falls below
    /// `threshold × (1 − hysteresis)` (0: no hysteresis).
    pub hysteresis: f32,
    /// MQTT alerts kept in the durable outbox (`<state_dir>/outbox.jsonl`) while the broker is
    /// away; each leaves it once the broker acknowledged it.
    pub outbox_max: usize,
    /// When the outbox is full: `drop_oldest` (default) or `drop_newest`; either is logged and
    /// counted in `vigil_alerts_dropped_total{reason="outbox_full"}`.
    pub outbox_full: crate::sink::outbox::FullPolicy,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            stdout: false,
            jsonl: None,
            decisions_jsonl: None,
            snapshot_dir: None,
            snapshot_keep: 200,
            cooldown: Duration::ZERO,
            hysteresis: 0.0,
            outbox_max: 100_000,
            outbox_full: crate::sink::outbox::FullPolicy::DropOldest,
        }
    }
}

/// `[http]`: metrics and health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of `/metrics` and `/healthz`; absent: no HTTP server.
    pub listen: Option<SocketAddr>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: Some(SocketAddr::from(([127, 0, 0, 1], 9187))) }
    }
}

/// One `[[cameras]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Camera id in topics and alerts (letters, digits, `-`, `_`). For an MQTT source that
    /// takes the id from the topic or payload, this names the group.
    pub id: String,
    /// Model bundle folder (or `.onnx` with an embedded manifest).
    pub bundle: PathBuf,
    /// Where frames come from.
    pub source: SourceConfig,
    /// Threshold override (raw score units of the bundle).
    #[serde(default)]
    pub threshold: Option<f32>,
    /// Cooldown override.
    #[serde(default, with = "humantime_serde")]
    pub cooldown: Option<Duration>,
    /// Region of interest `[x, y, width, height]` in frame pixels, cropped before scoring.
    #[serde(default)]
    pub roi: Option<[u32; 4]>,
}

/// A camera's frame source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// Image files written into a folder.
    Folder(FolderSource),
    /// Image payloads published on MQTT topics (of the `[mqtt]` broker).
    Mqtt(MqttSource),
}

/// `source = { type = "folder", ... }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FolderSource {
    /// The watched folder.
    pub path: PathBuf,
    /// Watch sub-folders too.
    #[serde(default)]
    pub recursive: bool,
    /// File-name globs to take; others are ignored.
    #[serde(default = "default_include")]
    pub include: Vec<String>,
    /// A file without a close-after-write event is taken once its size has not changed for
    /// this long.
    #[serde(default = "default_settle", with = "humantime_serde")]
    pub settle: Duration,
    /// What happens to a file once scored: `keep`, `delete` or `move` (to `move_to`).
    #[serde(default)]
    pub after: AfterScoring,
    /// Folder for `after = "move"`.
    #[serde(default)]
    pub move_to: Option<PathBuf>,
    /// Files larger than this are refused.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Folder where refused files (corrupt, too large, not an image) are moved; absent: they
    /// stay where they are, remembered as done.
    #[serde(default)]
    pub quarantine: Option<PathBuf>,
}

fn default_include() -> Vec<String> {
    ["*.png", "*.jpg", "*.jpeg", "*.bmp", "*.tif", "*.tiff"].map(|s| s.to_owned()).into()
}
fn default_settle() -> Duration {
    Duration::from_millis(500)
}
fn default_max_bytes() -> u64 {
    64 * 1024 * 1024
}

/// What to do with a scored file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AfterScoring {
    /// Leave it (vigil remembers it was done).
    #[default]
    Keep,
    /// Delete it.
    Delete,
    /// Move it into `move_to`.
    Move,
}

/// `source = { type = "mqtt", ... }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSource {
    /// Topic filter, e.g. `factory/+/camera/+/frame`.
    pub topic: String,
    /// `raw` (the payload is JPEG/PNG bytes) or `json` (`{"image": base64, ...}`).
    #[serde(default)]
    pub payload: PayloadFormat,
    /// Take the camera id from this topic level (0-based); e.g. 3 for `factory/+/camera/+/frame`.
    #[serde(default)]
    pub camera_from_topic: Option<usize>,
    /// JSON payloads: the field holding the base64 image.
    #[serde(default = "default_image_field")]
    pub image_field: String,
    /// JSON payloads: the field holding the camera id, if any.
    #[serde(default)]
    pub camera_field: Option<String>,
    /// JSON payloads: the field holding the frame time (RFC 3339 or Unix milliseconds), if any.
    #[serde(default)]
    pub time_field: Option<String>,
    /// Payloads larger than this are refused.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
}

fn default_image_field() -> String {
    "image".into()
}

/// MQTT frame payload format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// The image file's bytes.
    #[default]
    Raw,
    /// A JSON object with a base64 image.
    Json,
}

/// One problem found in a config, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, e.g. `cameras[0].bundle`.
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// A config that could not be loaded or is invalid: every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config{}: {} problem(s):\n{}", if path.as_os_str().is_empty() { String::new() } else { format!(" {}", path.display()) }, problems.len(), problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    /// The config file.
    pub path: PathBuf,
    /// Every problem, in key order.
    pub problems: Vec<Problem>,
}

const ENV_PREFIX: &str = "VIGIL";

/// Reads `path` with environment overrides (`VIGIL__MQTT__HOST=...` sets `mqtt.host`) and
/// checks its shape. Every unknown key and wrongly typed value is reported, not only the first.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    match load_lenient(path) {
        (Some(config), problems) if problems.is_empty() => Ok(config),
        (_, problems) => Err(ConfigError { path: path.to_path_buf(), problems }),
    }
}

/// Like [`load`], but also returns the config that remains once the keys with problems are
/// left out, so that `vigil validate` can go on to check the rest of it.
pub fn load_lenient(path: &Path) -> (Option<Config>, Vec<Problem>) {
    let file_problem = |message: String| (None, vec![Problem { key: "(file)".into(), message }]);
    if !path.is_file() {
        return file_problem("not found; pass --config with the path of a vigil.toml (see examples/vigil.toml)".into());
    }
    let built = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX).prefix_separator("__").separator("__").try_parsing(true),
        )
        .build();
    let value: serde_json::Value = match built.and_then(|b| b.try_deserialize()) {
        Ok(v) => v,
        Err(e) => return file_problem(e.to_string()),
    };
    from_value(value)
}

/// Whether `host` is this machine (plain TCP to it never leaves the machine).
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Parses TOML text (no environment overrides), collecting every shape problem as
/// [`load_lenient`] does.
pub fn parse_str(text: &str) -> (Option<Config>, Vec<Problem>) {
    let built = config::Config::builder().add_source(config::File::from_str(text, config::FileFormat::Toml)).build();
    match built.and_then(|b| b.try_deserialize::<serde_json::Value>()) {
        Ok(v) => from_value(v),
        Err(e) => (None, vec![Problem { key: "(file)".into(), message: e.to_string() }]),
    }
}

/// Parses `value` into a [`Config`], collecting every shape problem: an unknown key or a
/// wrongly typed value is reported and removed, and parsing is tried again. Returns the
/// config that parses once they are removed, if any, and the problems.
pub fn from_value(mut value: serde_json::Value) -> (Option<Config>, Vec<Problem>) {
    let mut problems = vec![];
    for _ in 0..64 {
        match serde_path_to_error::deserialize::<_, Config>(value.clone()) {
            Ok(config) => return (Some(config), problems),
            Err(e) => {
                let key = e.path().to_string();
                let message = e.inner().to_string();
                let removed = remove(&mut value, &key);
                problems.push(Problem { key: key.clone(), message: hint(&key, &message) });
                if !removed || message.starts_with("missing field") {
                    return (None, problems);
                }
            }
        }
    }
    (None, problems)
}

fn hint(key: &str, message: &str) -> String {
    if message.starts_with("unknown field") {
        format!("{message}; remove it or fix its spelling (examples/vigil.toml lists every key)")
    } else if key.ends_with("cooldown") || key.ends_with("settle") || key.ends_with("max_wait") {
        format!("{message}; write a duration such as \"500ms\" or \"10s\"")
    } else {
        message.to_owned()
    }
}

/// Removes the value at a serde_path_to_error path (`cameras[0].source.path`).
fn remove(value: &mut serde_json::Value, path: &str) -> bool {
    let mut parts: Vec<(String, Option<usize>)> = vec![];
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        match seg.split_once('[') {
            Some((name, rest)) => {
                let index = rest.trim_end_matches(']').parse().ok();
                parts.push((name.to_owned(), index));
            }
            None => parts.push((seg.to_owned(), None)),
        }
    }
    let Some(((last, last_index), init)) = parts.split_last() else { return false };
    let mut cur = value;
    for (name, index) in init {
        let Some(next) = cur.get_mut(name.as_str()) else { return false };
        cur = match index {
            Some(i) => match next.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            None => next,
        };
    }
    match last_index {
        Some(i) => match cur.get_mut(last.as_str()).and_then(|v| v.as_array_mut()) {
            Some(a) if *i < a.len() => {
                a.remove(*i);
                true
            }
            _ => false,
        },
        None => cur.as_object_mut().and_then(|o| o.remove(last.as_str())).is_some(),
    }
}

/// An id used in topics, alerts and file names: letters, digits, `-`, `_`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A valid MQTT topic filter (levels, `+` alone in a level, `#` alone and last).
pub fn valid_topic_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| match *l {
        "+" => true,
        "#" => i == levels.len() - 1,
        other => !other.contains('+') && !other.contains('#'),
    })
}

impl Config {
    /// Checks everything that can be checked without starting: ids, folders, TLS files,
    /// topic filters, limits. Bundles are checked by the daemon's loader (see
    /// `daemon::check`), which also test-runs them.
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = vec![];
        let mut add = |key: String, message: String| p.push(Problem { key, message });
        if !valid_id(&self.device_id) {
            add("device_id".into(), format!("`{}`: use 1–64 letters, digits, `-` or `_`", self.device_id));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            add("log.level".into(), format!("`{}`: {e}; use a level such as \"info\"", self.log.level));
        }
        let s = &self.scoring;
        if s.queue == 0 {
            add("scoring.queue".into(), "must be at least 1".into());
        }
        if s.max_batch == 0 || s.max_batch > crate::engine::io::MAX_BATCH {
            add("scoring.max_batch".into(), format!("must be 1 to {}", crate::engine::io::MAX_BATCH));
        }
        if s.decode_workers == 0 || s.decode_workers > 64 {
            add("scoring.decode_workers".into(), "must be 1 to 64".into());
        }
        if let Some(m) = &self.mqtt {
            if m.host.trim().is_empty() {
                add("mqtt.host".into(), "is empty; give the broker's host name".into());
            }
            if m.topic_prefix.is_empty() || !valid_topic_filter(&m.topic_prefix) || m.topic_prefix.contains(['+', '#'])
            {
                add("mqtt.topic_prefix".into(), format!("`{}`: a topic without wildcards", m.topic_prefix));
            }
            if let Some(id) = &m.client_id
                && (id.is_empty() || id.len() > 128)
            {
                add("mqtt.client_id".into(), "must be 1 to 128 characters".into());
            }
            if m.password.is_some() && m.password_file.is_some() {
                add("mqtt.password_file".into(), "give `password` or `password_file`, not both".into());
            }
            if let Some(f) = &m.password_file
                && let Err(e) = std::fs::read(f)
            {
                add("mqtt.password_file".into(), format!("{}: {e}", f.display()));
            }
            if (m.password.is_some() || m.password_file.is_some()) && m.username.is_none() {
                add("mqtt.username".into(), "a password needs a username".into());
            }
            if m.tls.is_none() && !m.plaintext && !is_loopback(&m.host) {
                add(
                    "mqtt.tls".into(),
                    format!(
                        "`{}` is another machine and there is no [mqtt.tls]: frames, alerts and the password would cross the network in clear; add [mqtt.tls] with the broker's ca_file, or set mqtt.plaintext = true to accept that",
                        m.host
                    ),
                );
            }
            if let Some(t) = &m.tls {
                for (key, file) in [
                    ("ca_file", Some(&t.ca_file)),
                    ("client_cert", t.client_cert.as_ref()),
                    ("client_key", t.client_key.as_ref()),
                ] {
                    if let Some(f) = file
                        && let Err(e) = std::fs::read(f)
                    {
                        add(format!("mqtt.tls.{key}"), format!("{}: {e}", f.display()));
                    }
                }
                if t.client_cert.is_some() != t.client_key.is_some() {
                    add(
                        "mqtt.tls.client_key".into(),
                        "a client certificate needs both client_cert and client_key".into(),
                    );
                }
            }
            if !matches!(m.alert_qos, 1 | 2) {
                add("mqtt.alert_qos".into(), format!("{}: use 2, or 1 for a broker without QoS 2", m.alert_qos));
            }
            if m.keep_alive < Duration::from_secs(1) {
                add("mqtt.keep_alive".into(), "must be at least 1s".into());
            }
        }
        let a = &self.alerts;
        if !(0.0..1.0).contains(&a.hysteresis) {
            add("alerts.hysteresis".into(), format!("{}: must be in [0, 1)", a.hysteresis));
        }
        for (key, file) in [("alerts.jsonl", &a.jsonl), ("alerts.decisions_jsonl", &a.decisions_jsonl)] {
            if let Some(j) = file
                && j.parent().is_some_and(|d| !d.as_os_str().is_empty() && !d.is_dir())
            {
                add(key.into(), format!("{}: its folder does not exist", j.display()));
            }
        }
        if self.mqtt.is_none() && a.jsonl.is_none() && !a.stdout {
            add(
                "alerts".into(),
                "alerts would go nowhere: configure [mqtt], alerts.jsonl or alerts.stdout = true".into(),
            );
        }
        if self.cameras.is_empty() {
            add("cameras".into(), "no cameras: add a [[cameras]] entry (see examples/vigil.toml)".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, c) in self.cameras.iter().enumerate() {
            let k = |s: &str| format!("cameras[{i}].{s}");
            if !valid_id(&c.id) {
                add(k("id"), format!("`{}`: use 1–64 letters, digits, `-` or `_`", c.id));
            } else if !seen.insert(c.id.as_str()) {
                add(k("id"), format!("`{}` is used by another camera", c.id));
            }
            if !c.bundle.exists() {
                add(k("bundle"), format!("{}: not found; give a bundle folder or .onnx file", c.bundle.display()));
            }
            if let Some(t) = c.threshold
                && !t.is_finite()
            {
                add(k("threshold"), "must be a finite number".into());
            }
            if let Some([_, _, w, h]) = c.roi
                && (w == 0 || h == 0)
            {
                add(k("roi"), "width and height must be positive: [x, y, width, height]".into());
            }
            match &c.source {
                SourceConfig::Folder(f) => {
                    if !f.path.is_dir() {
                        add(k("source.path"), format!("{}: not a folder; create it or fix the path", f.path.display()));
                    }
                    for g in &f.include {
                        if let Err(e) = globset::Glob::new(g) {
                            add(k("source.include"), format!("`{g}`: {e}"));
                        }
                    }
                    match (f.after, &f.move_to) {
                        (AfterScoring::Move, None) => add(k("source.move_to"), "after = \"move\" needs move_to".into()),
                        (AfterScoring::Move, Some(m)) if !m.is_dir() => {
                            add(k("source.move_to"), format!("{}: not a folder", m.display()))
                        }
                        (AfterScoring::Move, Some(m)) if m.starts_with(&f.path) && f.recursive => add(
                            k("source.move_to"),
                            "is inside the recursively watched folder: moved files would be scored again".into(),
                        ),
                        _ => {}
                    }
                    if let Some(q) = &f.quarantine {
                        if !q.is_dir() {
                            add(k("source.quarantine"), format!("{}: not a folder; create it", q.display()));
                        } else if q.starts_with(&f.path) && (f.recursive || q == &f.path) {
                            add(
                                k("source.quarantine"),
                                "is inside the watched folder: pick a folder outside it".into(),
                            );
                        }
                    }
                    if f.max_bytes == 0 {
                        add(k("source.max_bytes"), "must be positive".into());
                    }
                }
                SourceConfig::Mqtt(m) => {
                    if self.mqtt.is_none() {
                        add(k("source"), "an mqtt source needs the [mqtt] broker section".into());
                    }
                    if !valid_topic_filter(&m.topic) {
                        add(k("source.topic"), format!("`{}`: not a valid MQTT topic filter", m.topic));
                    }
                    if let Some(n) = m.camera_from_topic
                        && m.topic.split('/').nth(n).is_none_or(|l| l == "#")
                    {
                        add(k("source.camera_from_topic"), format!("topic `{}` has no level {n}", m.topic));
                    }
                    if m.payload == PayloadFormat::Raw && (m.camera_field.is_some() || m.time_field.is_some()) {
                        add(k("source.payload"), "camera_field and time_field need payload = \"json\"".into());
                    }
                    if m.max_bytes == 0 {
                        add(k("source.max_bytes"), "must be positive".into());
                    }
                }
            }
        }
        p
    }
}
