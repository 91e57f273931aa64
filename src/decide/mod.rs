//! The decide stage, score → decision → alert: the threshold in force ([`Policy`]: set at
//! run time over MQTT, else the camera's config, else the bundle's), cooldown and hysteresis
//! per camera ([`Decider`]), the anomalous region read from the anomaly map, and the alert
//! handed to the sinks; then each frame's source is told it is done. What it writes about
//! each frame is typed in [`record`]; whether a camera's scores still match its calibration
//! is [`drift`].

pub mod decider;
pub mod drift;
pub mod policy;
pub mod record;
pub mod stage;

pub use decider::{Decider, Decision, Saved, region};
pub use policy::{Policy, class_key};
pub use record::{DecisionRecord, ScoreMessage, Scored};
pub use stage::Stage;
