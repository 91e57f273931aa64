//! `[mqtt]`: the broker, credentials, TLS and Home Assistant keys, their checks, and the
//! connection options the daemon's connections are built from.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use rumqttc::{EventLoop, MqttOptions, TlsConfiguration, Transport};
use serde::{Deserialize, Serialize};

use crate::problem::{Problems, is_loopback, valid_topic_filter};

/// `[mqtt]`: the broker connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker host name or address; without `[mqtt]`, alerts go to `jsonl`/`stdout` only.
    pub host: String,
    /// Broker port; default 1883, or 8883 with TLS.
    #[serde(default)]
    pub port: Option<u16>,
    /// MQTT client id; default `vigil-<device_id>`. A persistent session: QoS 1 frames wait
    /// at the broker while vigil is away.
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
    /// TLS (rustls), with the server's certificate verified against `ca_file`. Required for a
    /// broker on another machine unless `plaintext = true`; absent: plain TCP.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// QoS of alerts: 2 (with the outbox, each alert reaches the broker once even across a
    /// crash) or 1 for brokers without QoS 2 (some cloud brokers), where an alert cut off by a
    /// crash may arrive twice, under the same id.
    #[serde(default = "default_alert_qos")]
    pub alert_qos: u8,
    /// Accept plain TCP to a broker on another machine (frames, alerts and the password then
    /// cross the network in clear). Off: such a config is refused, never silently insecure;
    /// plain TCP to `localhost`/loopback is always allowed.
    #[serde(default)]
    pub plaintext: bool,
    /// Topic prefix: topics are `<prefix>/<device_id>/...`.
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// MQTT keep-alive.
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub keep_alive: Duration,
    /// Publish every frame's score on `<prefix>/<device>/<camera>/score` (QoS 0).
    #[serde(default)]
    pub publish_scores: bool,
    /// How often counters go to `<prefix>/<device>/stats` (`0s`: never).
    #[serde(default = "default_stats_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub stats_interval: Duration,
    /// Longest wait between reconnection attempts (the wait doubles from 1 s up to this).
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_backoff: Duration,
    /// Announce this box to Home Assistant (MQTT discovery): a device with, per camera, an
    /// anomaly sensor, the last score, the threshold and the latest snapshot
    /// (docs/homeassistant.md). Needs `publish_scores`.
    #[serde(default)]
    pub homeassistant: bool,
    /// Home Assistant's discovery prefix (a setting of its MQTT integration); its birth
    /// message is read on `<prefix>/status`.
    #[serde(default = "default_homeassistant_prefix")]
    pub homeassistant_prefix: String,
    /// How long Home Assistant shows a camera's anomaly sensor on after its last alert.
    #[serde(default = "default_homeassistant_off_delay", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub homeassistant_off_delay: Duration,
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
fn default_homeassistant_prefix() -> String {
    "homeassistant".into()
}
fn default_homeassistant_off_delay() -> Duration {
    Duration::from_secs(30)
}

/// `[mqtt.tls]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA(s) that signed the broker's certificate; turns TLS on.
    pub ca_file: PathBuf,
    /// PEM client certificate, for brokers that want one (with `client_key`).
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
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

    /// Checks the values (no files are read).
    pub fn validate(&self, p: &mut Problems) {
        if self.host.trim().is_empty() {
            p.add("mqtt.host", "is empty; give the broker's host name");
        }
        let prefix = &self.topic_prefix;
        if prefix.is_empty() || !valid_topic_filter(prefix) || prefix.contains(['+', '#']) {
            p.add("mqtt.topic_prefix", format!("`{prefix}`: a topic without wildcards"));
        }
        if let Some(id) = &self.client_id
            && (id.is_empty() || id.len() > 128)
        {
            p.add("mqtt.client_id", "must be 1 to 128 characters");
        }
        if self.password.is_some() && self.password_file.is_some() {
            p.add("mqtt.password_file", "give `password` or `password_file`, not both");
        }
        if (self.password.is_some() || self.password_file.is_some()) && self.username.is_none() {
            p.add("mqtt.username", "a password needs a username");
        }
        if self.tls.is_none() && !self.plaintext && !is_loopback(&self.host) {
            p.add(
                "mqtt.tls",
                format!(
                    "`{}` is another machine and there is no [mqtt.tls]: frames, alerts and the password would cross the network in clear; add [mqtt.tls] with the broker's ca_file, or set mqtt.plaintext = true to accept that",
                    self.host
                ),
            );
        }
        if let Some(t) = &self.tls
            && t.client_cert.is_some() != t.client_key.is_some()
        {
            p.add("mqtt.tls.client_key", "a client certificate needs both client_cert and client_key");
        }
        if !matches!(self.alert_qos, 1 | 2) {
            p.add("mqtt.alert_qos", format!("{}: use 2, or 1 for a broker without QoS 2", self.alert_qos));
        }
        if self.keep_alive < Duration::from_secs(1) {
            p.add("mqtt.keep_alive", "must be at least 1s");
        }
        validate_homeassistant(self, p);
    }

    /// Checks that the password and TLS files can be read.
    pub fn preflight(&self, p: &mut Problems) {
        if let Some(f) = &self.password_file
            && let Err(e) = std::fs::read(f)
        {
            p.add("mqtt.password_file", format!("{}: {e}", f.display()));
        }
        if let Some(t) = &self.tls {
            for (key, file) in [
                ("ca_file", Some(&t.ca_file)),
                ("client_cert", t.client_cert.as_ref()),
                ("client_key", t.client_key.as_ref()),
            ] {
                if let Some(f) = file
                    && let Err(e) = std::fs::read(f)
                {
                    p.add(format!("mqtt.tls.{key}"), format!("{}: {e}", f.display()));
                }
            }
        }
    }
}

/// Checks the Home Assistant keys of `[mqtt]`.
fn validate_homeassistant(cfg: &MqttConfig, p: &mut Problems) {
    let prefix = &cfg.homeassistant_prefix;
    if prefix.is_empty() || !valid_topic_filter(prefix) || prefix.contains(['+', '#']) {
        p.add("mqtt.homeassistant_prefix", format!("`{prefix}`: a topic without wildcards, as set in Home Assistant"));
    }
    if cfg.homeassistant_off_delay < Duration::from_secs(1) {
        p.add("mqtt.homeassistant_off_delay", "must be at least 1s (Home Assistant counts it in whole seconds)");
    }
    if cfg.homeassistant && !cfg.publish_scores {
        p.add(
            "mqtt.publish_scores",
            "mqtt.homeassistant announces a last-score sensor per camera, which reads <camera>/score: set publish_scores = true",
        );
    }
}

/// Largest MQTT packet read: bigger ones would break the connection (and, with a persistent
/// session, come back after every reconnect), so the hard limit is far above the configured
/// payload limits, which reject and acknowledge oversize frames.
const MAX_INCOMING_PACKET: usize = 256 * 1024 * 1024;

fn tls(cfg: &MqttConfig) -> anyhow::Result<Option<Transport>> {
    let Some(t) = &cfg.tls else { return Ok(None) };
    // One process-wide rustls provider (ring); a second install attempt is harmless.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = std::fs::read(&t.ca_file).with_context(|| format!("mqtt.tls.ca_file {}", t.ca_file.display()))?;
    let client_auth = match (&t.client_cert, &t.client_key) {
        (Some(c), Some(k)) => Some((
            std::fs::read(c).with_context(|| format!("mqtt.tls.client_cert {}", c.display()))?,
            std::fs::read(k).with_context(|| format!("mqtt.tls.client_key {}", k.display()))?,
        )),
        _ => None,
    };
    Ok(Some(Transport::tls_with_config(TlsConfiguration::Simple { ca, alpn: None, client_auth })))
}

/// The client id of the main connection (the alert connection appends `-alerts`).
pub fn client_id(cfg: &MqttConfig, device: &str) -> String {
    cfg.client_id.clone().unwrap_or_else(|| format!("vigil-{device}"))
}

/// Options shared by the daemon's connections: endpoint, keep-alive, packet limits,
/// credentials and TLS.
pub fn options(cfg: &MqttConfig, client_id: &str) -> anyhow::Result<MqttOptions> {
    let mut opts = MqttOptions::new(client_id, cfg.host.clone(), cfg.effective_port());
    opts.set_keep_alive(cfg.keep_alive);
    opts.set_max_packet_size(MAX_INCOMING_PACKET, 64 * 1024 * 1024);
    if let Some(user) = &cfg.username {
        let password = cfg.effective_password().context("reading mqtt.password_file")?.unwrap_or_default();
        opts.set_credentials(user.clone(), password);
    }
    if let Some(t) = tls(cfg)? {
        opts.set_transport(t);
    }
    Ok(opts)
}

/// Small packets (acknowledgements, QoS 2 handshakes, alerts) go out at once: with Nagle's
/// algorithm they would wait for the peer's delayed ACK, tens of milliseconds per alert.
pub fn no_delay(eventloop: &mut EventLoop) {
    let mut n = eventloop.network_options();
    n.set_tcp_nodelay(true);
    eventloop.set_network_options(n);
}
