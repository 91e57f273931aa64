//! What the camera sources (RTSP, V4L2) share: the rate a continuous stream is sampled at, the
//! clock its frames are timed by, and the hand-over of a picture to scoring, which never waits
//! (a live camera's next frame is worth more than a stale one).

use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use image::ImageEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};

use crate::frame::{Frame, Origin};
use crate::metrics::Metrics;
use crate::scoring::{Closed, Queue};

/// The default sampling rate: two frames a second is enough to see a part on a moving line,
/// and light enough for a small box running several cameras.
pub fn default_fps() -> f64 {
    2.0
}

/// Checks a configured rate under `key`.
pub fn validate_fps(fps: f64, key: &str, p: &mut crate::problem::Problems) {
    if !(fps.is_finite() && (0.01..=120.0).contains(&fps)) {
        p.at(key, "fps", format!("{fps}: give frames per second between 0.01 and 120"));
    }
}

/// Picks the frames to score from a stream, by the stream's own clock (seconds): one every
/// `1/fps`, keeping the cadence when frames come a little early or late.
#[derive(Debug, Clone)]
pub struct Sampler {
    interval: f64,
    next: Option<f64>,
}

impl Sampler {
    /// One frame every `1/fps` seconds.
    pub fn new(fps: f64) -> Self {
        Sampler { interval: 1.0 / fps, next: None }
    }

    /// The seconds between scored frames.
    pub fn interval(&self) -> f64 {
        self.interval
    }

    /// Whether the frame at `t` is due; a frame up to `slack` seconds before its time counts.
    /// A clock that went back (a new stream) starts the cadence again.
    pub fn due(&mut self, t: f64, slack: f64) -> bool {
        match self.next {
            Some(next) if t + self.interval * 2.0 < next - self.interval => {
                self.next = Some(t + self.interval);
                true
            }
            Some(next) if t + slack < next => false,
            Some(next) => {
                let mut n = next + self.interval;
                // Fell behind (a gap in the stream): the next one counts from this frame.
                if n <= t {
                    n = t + self.interval;
                }
                self.next = Some(n);
                true
            }
            None => {
                self.next = Some(t + self.interval);
                true
            }
        }
    }

    /// Forgets the cadence (a new session).
    pub fn reset(&mut self) {
        self.next = None;
    }
}

/// Turns a stream's clock (seconds since its start) into wall-clock frame times: the spacing
/// of frames is the stream's own, and the origin is vigil's clock, taken from the frame that
/// arrived soonest after it was due (a frame is never seen before it is taken, so the least
/// delay is the truest; a burst of buffered frames at the start does not push times late).
/// Cameras' own clocks (RTCP sender reports) are often unset or far off, so they are not
/// trusted. The two clocks drift apart slowly (a camera's crystal): the least delay is taken
/// afresh every [`WINDOW`].
#[derive(Debug, Default)]
pub struct StreamClock {
    /// The origin in use: wall-clock time of stream time 0.
    origin: Option<SystemTime>,
    /// The earliest origin seen in the current window, and when the window began.
    window: Option<(SystemTime, Instant)>,
}

/// How often the origin may move later (to follow a camera clock that runs slow).
pub const WINDOW: Duration = Duration::from_secs(60);

impl StreamClock {
    /// The time of the frame at stream time `t`, received at `now` (never later than `now`).
    pub fn time(&mut self, t: f64, now: SystemTime) -> SystemTime {
        self.time_at(t, now, Instant::now())
    }

    fn time_at(&mut self, t: f64, now: SystemTime, mono: Instant) -> SystemTime {
        let Some(seen) = now.checked_sub(Duration::from_secs_f64(t.max(0.0))) else { return now };
        let (earliest, began) = match self.window {
            Some((w, began)) if mono.duration_since(began) < WINDOW => (w.min(seen), began),
            // A new window: what the last one found becomes the origin.
            Some((w, _)) => {
                self.origin = Some(w);
                (seen, mono)
            }
            None => (seen, mono),
        };
        self.window = Some((earliest, began));
        let origin = self.origin.map_or(earliest, |o| o.min(earliest));
        self.origin = Some(origin);
        origin.checked_add(Duration::from_secs_f64(t.max(0.0))).map_or(now, |time| time.min(now))
    }

    /// Forgets the origin (a new session).
    pub fn reset(&mut self) {
        *self = StreamClock::default();
    }
}

/// Frames larger than this are refused (8K UHD), whether a driver or a stream reports them.
const MAX_PIXELS: u64 = 7680 * 4320;

/// Refuses a frame size no camera sends, before anything is allocated for it.
pub fn check_size(width: u64, height: u64) -> Result<(), String> {
    if width == 0 || height == 0 || width * height > MAX_PIXELS {
        return Err(format!("a {width}x{height} frame is out of bounds"));
    }
    Ok(())
}

/// PNG at the fastest compression: lossless (the picture scored is the picture decoded), and
/// cheap next to decoding the stream.
pub fn encode_png(pixels: &[u8], width: u32, height: u32, color: image::ExtendedColorType) -> Vec<u8> {
    let mut out = Cursor::new(Vec::with_capacity(pixels.len() / 2));
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Sub)
        .write_image(pixels, width, height, color)
        .expect("a PNG of a well-formed buffer is written to memory");
    out.into_inner()
}

/// Where one live camera's frames go.
#[derive(Clone)]
pub struct Output {
    /// Its `[[cameras]]` index.
    pub slot: usize,
    /// Its id.
    pub camera: String,
    /// Its product class (conditional bundles).
    pub class: Option<String>,
    /// The URL (without credentials) or device the frames come from, as alerts name it.
    pub origin: String,
    /// The scoring queue.
    pub queue: Queue,
    /// The daemon's metrics.
    pub metrics: Arc<Metrics>,
}

impl Output {
    /// Whether the frame taken at `time` is to be scored: `due` by the camera's rate, or, for
    /// a triggered camera, while a trigger waits for it.
    pub fn wanted(&self, time: SystemTime, due: bool) -> bool {
        self.queue.wanted(self.slot, time).unwrap_or(due)
    }

    /// Hands an encoded frame taken at `time` to scoring (dropped, and counted there, if scoring
    /// is behind).
    pub fn offer(&self, bytes: Vec<u8>, time: SystemTime) -> Result<(), Closed> {
        self.count("sampled");
        self.queue.offer(Frame {
            slot: self.slot,
            camera: self.camera.clone(),
            origin: Origin::Stream(self.origin.clone()),
            class: self.class.clone(),
            bytes,
            trigger: None,
            time,
            received: Instant::now(),
            done: None,
        })
    }

    /// Counts a stream frame by what was done with it (`sampled`, `decoded`, `skipped`,
    /// `damaged`).
    pub fn count(&self, handling: &str) {
        self.metrics.inc("vigil_stream_frames_total", &[("camera", &self.camera), ("handling", handling)]);
    }

    /// Shows whether the stream is up.
    pub fn connected(&self, up: bool) {
        self.metrics.set("vigil_stream_connected", &[("camera", &self.camera)], if up { 1.0 } else { 0.0 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sampler_keeps_its_cadence_and_starts_again_when_the_clock_goes_back() {
        let mut s = Sampler::new(2.0);
        // A 10 fps stream: every fifth frame.
        let due: Vec<bool> = (0..12).map(|i| s.due(i as f64 * 0.1, 0.005)).collect();
        assert_eq!(due, [true, false, false, false, false, true, false, false, false, false, true, false]);
        // Jitter: a frame 3 ms early still counts, and the cadence stays on the half second.
        assert!(!s.due(1.4, 0.005));
        assert!(s.due(1.497, 0.005));
        assert!(!s.due(1.9, 0.005));
        assert!(s.due(2.0, 0.005));
        // A gap: the next frame is due at once, the one after one interval later.
        assert!(s.due(7.3, 0.005));
        assert!(!s.due(7.6, 0.005));
        assert!(s.due(7.8, 0.005));
        // A new stream (clock back at 0): due at once.
        assert!(s.due(0.0, 0.005));
        assert!(!s.due(0.1, 0.005));
    }

    #[test]
    fn stream_times_keep_the_stream_spacing_from_the_least_delayed_frame() {
        let mut c = StreamClock::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ms = Duration::from_millis;
        let mono = Instant::now();
        // The first frame came 300 ms late (a burst at the start): its time is its arrival.
        assert_eq!(c.time_at(10.0, t0 + ms(300), mono), t0 + ms(300));
        // The next arrived on time: the origin moves earlier, and times keep the stream's spacing.
        assert_eq!(c.time_at(10.5, t0 + ms(500), mono), t0 + ms(500));
        assert_eq!(c.time_at(11.0, t0 + ms(1700), mono), t0 + ms(1000), "a late frame keeps its time");
        // Never later than its arrival.
        assert!(c.time_at(11.5, t0 + ms(1200), mono) <= t0 + ms(1200));
        // A camera clock that runs slow: after a window the origin follows it.
        let later = mono + WINDOW + ms(1);
        let slow = t0 + ms(70_000);
        c.time_at(70.0, slow, later);
        let next = mono + 2 * WINDOW + ms(2);
        assert_eq!(c.time_at(70.5, slow + ms(500), next), slow + ms(500));
    }

    #[test]
    fn frames_are_encoded_losslessly() {
        let pixels: Vec<u8> = (0..6 * 4 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let png = encode_png(&pixels, 6, 4, image::ExtendedColorType::Rgb8);
        let back = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(back.into_raw(), pixels);
    }
}
