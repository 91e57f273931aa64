//! The daemon's MQTT session: its `[mqtt]` config ([`config`]), the connection task
//! ([`session`]) and [`MqttClient`], the handle through which the sources acknowledge frames
//! and `sink/` publishes ([`client`]). Alerts have a connection of their own
//! (`sink::delivery`).

pub mod client;
pub mod config;
pub mod session;

pub use client::{CONTROL_QUEUE, Connection, Dropped, Incoming, MqttClient, REDELIVERY_DELAY, control_channel, offer};
pub use config::{MqttConfig, TlsConfig, client_id, no_delay, options};
pub use session::{Subscriptions, start};
