//! Frame sources: watched folders ([`folder`]) and MQTT topics ([`mqtt`]). Each hands
//! [`crate::frame::Frame`]s to the scoring queue (waiting when it is full) and learns through
//! the frame's `done` channel when to mark a file done or acknowledge a message.

pub mod folder;
pub mod mqtt;
