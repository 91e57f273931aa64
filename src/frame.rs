//! A frame on its way through the daemon, and where it came from.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// The earliest frame time taken as given: 2000-01-01T00:00:00Z. Older files do exist, but a
/// time before this is a camera or file system without a set clock (or a forged one).
pub const EARLIEST_FRAME_TIME: Duration = Duration::from_secs(946_684_800);

/// How far ahead of the box's clock a frame time may be (camera clocks drift; files on a
/// network share carry the server's clock).
pub const FUTURE_SKEW: Duration = Duration::from_secs(60);

/// Why a frame's time was not taken as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeFix {
    /// Before [`EARLIEST_FRAME_TIME`] (a file dated 1969, a camera without a set clock).
    Past,
    /// More than [`FUTURE_SKEW`] after the box's clock (a message in year 10000).
    Future,
}

impl TimeFix {
    /// The reason, as counted (`vigil_frame_times_fixed_total{reason}`) and logged.
    pub fn name(self) -> &'static str {
        match self {
            TimeFix::Past => "before_2000",
            TimeFix::Future => "in_the_future",
        }
    }
}

/// `time` if it lies in the window from [`EARLIEST_FRAME_TIME`] to `now` plus [`FUTURE_SKEW`],
/// else `now` with the reason. Alert ids, RFC 3339 times and the pruning of kept frames all
/// rely on frame times in this window.
///
/// A box whose own clock is not set yet (a board without a real-time clock before NTP, see
/// [`crate::health::clock_is_set`]) takes every frame at its arrival: nothing it reads can be
/// compared with a clock that is itself wrong.
pub fn checked_time(time: SystemTime, now: SystemTime) -> (SystemTime, Option<TimeFix>) {
    if !crate::health::clock_is_set(now) {
        return (now, None);
    }
    let earliest = UNIX_EPOCH + EARLIEST_FRAME_TIME;
    if time < earliest {
        (now, Some(TimeFix::Past))
    } else if time > now + FUTURE_SKEW {
        (now, Some(TimeFix::Future))
    } else {
        (time, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_times_outside_the_window_become_now_with_a_reason() {
        let now = SystemTime::now();
        assert_eq!(checked_time(now, now), (now, None));
        let hour_ago = now - Duration::from_secs(3600);
        assert_eq!(checked_time(hour_ago, now), (hour_ago, None));
        let before_1970 = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(checked_time(before_1970, now), (now, Some(TimeFix::Past)));
        let year_10000 = UNIX_EPOCH + Duration::from_millis(253_402_300_800_000);
        assert_eq!(checked_time(year_10000, now), (now, Some(TimeFix::Future)));
        let skewed = now + Duration::from_secs(30);
        assert_eq!(checked_time(skewed, now), (skewed, None), "a small skew is kept");
        // A box whose clock is not set yet scores at arrival, whatever the frame says.
        let unset = UNIX_EPOCH + Duration::from_secs(120);
        assert_eq!(checked_time(year_10000, unset), (unset, None));
    }
}
