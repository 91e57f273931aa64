//! A frame on its way through the daemon, and where it came from.

use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use tokio::sync::oneshot;

/// Where a frame came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A file in a watched folder.
    File(PathBuf),
    /// An MQTT message.
    Topic(String),
    /// A live stream: an RTSP URL (never with credentials) or a V4L2 device.
    Stream(String),
}

impl Origin {
    /// The file path or topic, as shown in alerts and logs.
    pub fn describe(&self) -> String {
        match self {
            Origin::File(p) => p.display().to_string(),
            Origin::Topic(t) | Origin::Stream(t) => t.clone(),
        }
    }
}

/// What became of a frame, reported back to its source (which then marks a file done, moves
/// it, or acknowledges the message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Scored; its alert, if any, was handed to the sinks.
    Scored,
    /// Not scored: its camera waits for a trigger and none was waiting. Done all the same.
    Skipped,
    /// Refused (bad input) with this reason.
    Rejected(String),
    /// Scored, but its alert could not be stored durably: not done, score it again later.
    Retry(String),
}

/// One frame from a source.
#[derive(Debug)]
pub struct Frame {
    /// Index of the `[[cameras]]` entry that produced it.
    pub slot: usize,
    /// The camera id (for MQTT groups, the id taken from the topic or payload).
    pub camera: String,
    /// Where it came from.
    pub origin: Origin,
    /// The product class, for a conditional model: the message's class field, else the
    /// camera's `class`.
    pub class: Option<String>,
    /// The encoded image.
    pub bytes: Vec<u8>,
    /// The id of the trigger message this frame answers (cameras with `trigger`).
    pub trigger: Option<String>,
    /// When the frame was taken (file modification time, payload time, the stream's timestamp,
    /// or arrival).
    pub time: SystemTime,
    /// When vigil received it, for latency.
    pub received: Instant,
    /// Told what became of the frame, once it is done.
    pub done: Option<oneshot::Sender<Outcome>>,
}

/// The scored area of a frame, in frame pixels: where the model's input (and so its map)
/// was cut from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Area {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width.
    pub w: u32,
    /// Height.
    pub h: u32,
}
