//! vigil: edge anomaly detection for factory cameras; the daemon and its CLI. What it shares
//! with the trainer (bundles, the ONNX writer, engines, preprocessing) is the `vigil_model`
//! crate.
//!
//! The data path, and where each part lives:
//!
//! ```text
//! source  -> decode/preprocess -> engine        -> score/decide -> sink
//! source/    scoring/             vigil_model      decide/         sink/
//! ```
//!
//! - [`daemon`]: `run(config, shutdown)`, the wiring and the stop sequence; [`shutdown`]: the
//!   named stop signal and its protocol.
//! - [`config`]: assembles the components' configs (each beside its component) and validates
//!   them; [`problem`]: what validation reports.
//! - [`cameras`]: one `[[cameras]]` entry: its source, bundle and overrides.
//! - [`source`]: watched folders, MQTT topics, RTSP and V4L2 cameras; [`frame`]: what they
//!   produce; [`trigger`]: part-present signals.
//! - [`scoring`]: the queue every source hands its frames to, decode workers and the batching
//!   inference thread.
//! - [`decide`]: threshold precedence, cooldown and hysteresis, the region, the alert, and the
//!   typed score message and decisions-log line.
//! - [`sink`]: every outbound message: alerts (outbox, delivery, JSON lines, stdout),
//!   snapshots, scores, stats, threshold states, availability; [`alert`]: the alert JSON.
//! - [`mqtt`]: the daemon's MQTT session: `[mqtt]`, the connection task, the client handle;
//!   [`topics`]: the topic names.
//! - [`control`]: the operator's controls from MQTT and the page (`threshold/set`,
//!   `feedback`); [`dataset`]: alert frames, verdicts and sampled normals kept for retraining.
//! - [`web`]: the HTTP listener: the operator's page and its API, `/metrics`, `/healthz`;
//!   [`live`]: what the page shows, kept as frames are decided.
//! - [`homeassistant`]: Home Assistant's MQTT discovery.
//! - [`reload`]: bundle loading, watching and reloading; [`fleet`]: signed bundle rollouts
//!   received over MQTT.
//! - [`backoff`]: the jittered waits between reconnections.
//! - [`state`]: what survives a restart; [`metrics`]: the counters behind `/metrics`;
//!   [`health`]: what `/healthz` and the watchdog report (stages alive, disk, clock);
//!   [`space`]: free space in the state folder, the outbox's reserve.
//! - [`commands`]: the one-shot commands (`score`, `inspect`, `wrap`, `bench`, `demo`,
//!   `config-reference`, `rollback`, `publish`).
//! - [`guard`]: panics in a frame's work turned into a refused frame; [`memory`]: giving
//!   freed memory back to the system.
//! - [`fuzz_targets`] (feature `fuzzing`): the entry points `cargo fuzz` drives.

pub mod alert;
pub mod backoff;
pub mod cameras;
pub mod commands;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataset;
pub mod decide;
pub mod fleet;
pub mod frame;
#[cfg(feature = "fuzzing")]
pub mod fuzz_targets;
pub mod guard;
pub mod health;
pub mod homeassistant;
pub mod live;
pub mod memory;
pub mod metrics;
pub mod mqtt;
pub mod problem;
pub mod reload;
pub mod scoring;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod space;
pub mod state;
pub mod topics;
pub mod trigger;
pub mod web;

/// This build's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
