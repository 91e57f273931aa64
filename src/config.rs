//! The daemon's configuration, assembled from the components' own configs (each beside its
//! component, with its own checks): loading (TOML plus `VIGIL__SECTION__KEY` environment
//! overrides), and validation in two parts that `vigil validate` and `vigil run` perform
//! before anything starts: a pure check of the values, then a pre-flight that looks at files
//! and folders (`reload::check` adds the bundles, loaded and test-run).
//!
//! The reference in `docs/configuration.md` is generated from these types' doc comments
//! (`vigil config-reference`); `examples/vigil.toml` is checked against them by the tests.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::cameras::CameraConfig;
use crate::dataset::DatasetConfig;
use crate::mqtt::MqttConfig;
use crate::problem::{ConfigError, Problem, Problems, valid_id};
use crate::scoring::ScoringConfig;
use crate::sink::AlertsConfig;
use crate::source::SourceConfig;
use crate::web::HttpConfig;
use vigil_model::engine::EngineConfig;

/// The whole daemon configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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
    /// The operator's page, Prometheus `/metrics` and `/healthz`.
    #[serde(default)]
    pub http: HttpConfig,
    /// What the daemon keeps for retraining: alert frames, verdicts, sampled normals.
    #[serde(default)]
    pub dataset: DatasetConfig,
    /// Whether each camera's scores still look like its bundle's calibration.
    #[serde(default)]
    pub drift: crate::decide::drift::DriftConfig,
    /// Bundles rolled out over MQTT by `vigil publish`: the keys this box trusts. Absent:
    /// bundles are not taken over MQTT.
    #[serde(default)]
    pub fleet: Option<crate::fleet::FleetConfig>,
    /// The cameras.
    #[serde(default)]
    pub cameras: Vec<CameraConfig>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/vigil")
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// JSON objects.
    Json,
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

impl Config {
    /// Every problem found without starting: [`Config::check_values`], then
    /// [`Config::preflight`]. Bundles are checked by `reload::check`, which also test-runs them.
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = self.check_values();
        p.extend(self.preflight());
        p
    }

    /// The values alone, as pure checks: ids, ranges, topic filters, combinations of keys.
    pub fn check_values(&self) -> Vec<Problem> {
        let mut p = Problems::default();
        if !valid_id(&self.device_id) {
            p.add("device_id", format!("`{}`: use 1–64 letters, digits, `-` or `_`", self.device_id));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            p.add("log.level", format!("`{}`: {e}; use a level such as \"info\"", self.log.level));
        }
        self.scoring.validate(&mut p);
        if let Some(m) = &self.mqtt {
            m.validate(&mut p);
        }
        self.alerts.validate(self.mqtt.is_some(), &mut p);
        self.http.validate(&mut p);
        self.dataset.validate(&mut p);
        self.drift.validate(&mut p);
        if let Some(f) = &self.fleet {
            f.validate(self.mqtt.is_some(), &mut p);
        }
        if self.cameras.is_empty() {
            p.add("cameras", "no cameras: add a [[cameras]] entry (see examples/vigil.toml)");
        }
        // A trigger topic that a frame or control topic also matches would take those messages.
        let mut taken: Vec<String> = self
            .cameras
            .iter()
            .filter_map(|c| match &c.source {
                SourceConfig::Mqtt(m) => Some(m.topic.clone()),
                _ => None,
            })
            .collect();
        if let Some(m) = &self.mqtt {
            taken.push(format!("{}/{}/#", m.topic_prefix.trim_end_matches('/'), self.device_id));
        }
        for (i, c) in self.cameras.iter().enumerate() {
            if let Some(t) = &c.trigger
                && let Some(f) = taken.iter().find(|f| crate::topics::filters_overlap(&t.mqtt, f))
            {
                p.at(
                    &format!("cameras[{i}].trigger"),
                    "mqtt",
                    format!("`{}` overlaps `{f}`, whose messages it would take; use a topic of its own", t.mqtt),
                );
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, c) in self.cameras.iter().enumerate() {
            let key = format!("cameras[{i}]");
            c.validate(&key, self.mqtt.is_some(), &mut p);
            if valid_id(&c.id) && !seen.insert(c.id.as_str()) {
                p.at(&key, "id", format!("`{}` is used by another camera", c.id));
            }
        }
        p.into_vec()
    }

    /// What the values point at: password and TLS files, sink and source folders, bundle paths.
    pub fn preflight(&self) -> Vec<Problem> {
        let mut p = Problems::default();
        if let Some(m) = &self.mqtt {
            m.preflight(&mut p);
        }
        self.alerts.preflight(&mut p);
        for (i, c) in self.cameras.iter().enumerate() {
            c.preflight(&format!("cameras[{i}]"), &mut p);
        }
        p.into_vec()
    }
}
