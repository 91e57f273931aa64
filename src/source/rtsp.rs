//! The RTSP source: an IP camera's H.264 stream, read with `retina` (pure Rust) and decoded
//! with Cisco's OpenH264 built from source, sampled at the configured rate. A lost stream is
//! reconnected with backoff (counted); credentials come from a file and are never logged.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, anyhow, bail};
use futures_util::StreamExt as _;
use retina::client::{Credentials, PlayOptions, Session, SessionOptions, SetupOptions, Transport};
use retina::codec::{CodecItem, FrameFormat, VideoFrame};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::camera::{self, Output, Sampler, StreamClock};
use super::h264::{self, Work};
use crate::backoff::{Backoff, jitter};
use crate::problem::Problems;
use crate::shutdown::Shutdown;

/// `source = { type = "rtsp", url = "rtsp://...", ... }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RtspSource {
    /// The stream, `rtsp://host[:port]/path`, without credentials (those go in
    /// `credentials_file`, so they never show in logs or alerts). The stream must be H.264.
    pub url: String,
    /// Frames scored per second; the frames between are not scored (and, where the stream
    /// allows, not decoded). A camera with a `trigger` scores the frame after each trigger
    /// instead.
    #[serde(default = "camera::default_fps")]
    pub fps: f64,
    /// `tcp` (RTP inside the RTSP connection: no loss, passes firewalls and NAT) or `udp`
    /// (lower latency on a clean LAN; lost packets damage frames until the next keyframe).
    #[serde(default)]
    pub transport: RtspTransport,
    /// A file whose first line is `username:password`, for cameras that ask for them (basic
    /// or digest authentication). Keep it readable by vigil only.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// A stream with no frame for this long is taken as lost and reconnected.
    #[serde(default = "default_stall_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub stall_timeout: Duration,
}

fn default_stall_timeout() -> Duration {
    Duration::from_secs(10)
}

/// How RTP packets travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RtspTransport {
    /// Interleaved in the RTSP TCP connection.
    #[default]
    Tcp,
    /// Separate UDP ports.
    Udp,
}

/// How long connecting (DESCRIBE, SETUP, PLAY) may take before the attempt counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest H.264 access unit (one frame's NAL units) taken from a stream. The RTSP library
/// assembles a frame before vigil sees it, so its buffer is bounded by `stall_timeout` (no
/// whole frame for that long restarts the stream), not in bytes: docs/security.md.
const MAX_ACCESS_UNIT: usize = 16 << 20;

impl RtspSource {
    /// Checks the values under `key` (`cameras[0].source`).
    pub fn validate(&self, key: &str, p: &mut Problems) {
        match url::Url::parse(&self.url) {
            // The text is not echoed: it may hold a password.
            Err(e) => p.at(key, "url", format!("not a URL ({e}); give rtsp://host[:port]/path")),
            Ok(u) if u.scheme() != "rtsp" => {
                p.at(key, "url", format!("scheme `{}`: give an rtsp:// URL", u.scheme()));
            }
            Ok(u) if !u.username().is_empty() || u.password().is_some() => p.at(
                key,
                "url",
                "holds credentials: move `user:password` into a file named by credentials_file, so they are never logged",
            ),
            Ok(u) if u.host_str().is_none_or(str::is_empty) => p.at(key, "url", "names no host"),
            Ok(u) if u.query_pairs().any(|(k, _)| secret_key(&k)) => p.at(
                key,
                "url",
                "holds credentials in its query: use the camera's RTSP authentication with credentials_file instead, so they are never logged",
            ),
            Ok(_) => {}
        }
        camera::validate_fps(self.fps, key, p);
        if self.stall_timeout < Duration::from_secs(1) {
            p.at(key, "stall_timeout", "must be at least 1s");
        }
    }

    /// Checks that the credentials file can be read.
    pub fn preflight(&self, key: &str, p: &mut Problems) {
        if let Err(e) = self.credentials() {
            p.at(key, "credentials_file", format!("{e:#}"));
        }
    }

    /// The credentials, read from `credentials_file` (again at each connection, so a changed
    /// password is picked up without a restart).
    pub fn credentials(&self) -> anyhow::Result<Option<Credentials>> {
        let Some(path) = &self.credentials_file else { return Ok(None) };
        let text = std::fs::read_to_string(path).with_context(|| {
            format!("{}: cannot read it; check the path and that vigil may read it", path.display())
        })?;
        parse_credentials(&text).map(Some).map_err(|e| anyhow!("{}: {e}", path.display()))
    }
}

/// Whether a URL query key carries a credential (`?user=...&pwd=...`, as some cameras take).
fn secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["user", "pass", "pwd", "token", "auth", "key", "secret"].iter().any(|s| k.contains(s))
}

/// `username:password` on the first line (the password may hold `:`).
pub fn parse_credentials(text: &str) -> Result<Credentials, String> {
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    match line.split_once(':') {
        Some((user, password)) if !user.is_empty() => {
            Ok(Credentials { username: user.to_owned(), password: password.to_owned() })
        }
        // The line itself is not shown: it may be a password.
        _ => Err("the first line must be `username:password`".into()),
    }
}

/// One `[[cameras]]` entry with an RTSP source.
#[derive(Debug, Clone)]
pub struct RtspCamera {
    /// Its config.
    pub config: RtspSource,
    /// Whether it scores only on triggers (then every reference frame is decoded, so the frame
    /// after a trigger can be had at once).
    pub triggered: bool,
}

/// The decoder thread of a camera, and the channel to it.
struct DecoderThread {
    work: mpsc::Sender<Work>,
    thread: std::thread::JoinHandle<()>,
}

impl DecoderThread {
    fn start(out: &Output, damaged: &Arc<AtomicBool>) -> DecoderThread {
        let (work, rx) = mpsc::channel(h264::QUEUE);
        let (out, damaged) = (out.clone(), damaged.clone());
        let thread = std::thread::Builder::new()
            .name(format!("h264-{}", out.camera))
            .spawn(move || h264::decode(rx, out, damaged))
            .expect("spawning a decoder thread");
        DecoderThread { work, thread }
    }

    async fn stop(self) {
        drop(self.work);
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
    }
}

/// Reads the camera's stream until `shutdown`, reconnecting when it is lost.
pub async fn run(camera: RtspCamera, out: Output, mut shutdown: Shutdown) {
    let damaged = Arc::new(AtomicBool::new(false));
    let mut decoder = DecoderThread::start(&out, &damaged);
    let mut backoff = Backoff::default();
    let mut plan = Plan::new(camera.config.fps, camera.triggered);
    loop {
        if decoder.work.is_closed() {
            // The decoder ended (it could not start, or panicked on a frame): a fresh one.
            tracing::warn!(camera = out.camera, "the H.264 decoder stopped; starting a new one");
            decoder.stop().await;
            decoder = DecoderThread::start(&out, &damaged);
        }
        let _ = decoder.work.send(Work::Reset).await;
        let mut delivered = false;
        let result = tokio::select! {
            r = session(&camera.config, &out, &decoder.work, &damaged, &mut plan, &mut delivered) => r,
            _ = shutdown.recv() => break,
        };
        out.connected(false);
        let wait = jitter(backoff.next(delivered));
        match result {
            Ok(()) => tracing::warn!(camera = out.camera, "stream {} ended; reconnecting in {wait:?}", out.origin),
            Err(e) => {
                tracing::warn!(camera = out.camera, "stream {}: {e:#}; reconnecting in {wait:?}", out.origin);
                out.metrics.inc("vigil_errors_total", &[("kind", "stream")]);
            }
        }
        out.metrics.inc("vigil_stream_reconnects_total", &[("camera", &out.camera)]);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.recv() => break,
        }
    }
    out.connected(false);
    decoder.stop().await;
}

/// One connection: DESCRIBE, SETUP of the H.264 stream, PLAY, then frames until the stream
/// fails or stalls.
async fn session(
    config: &RtspSource,
    out: &Output,
    work: &mpsc::Sender<Work>,
    damaged: &AtomicBool,
    plan: &mut Plan,
    delivered: &mut bool,
) -> anyhow::Result<()> {
    let url = url::Url::parse(&config.url).context("url")?;
    let options =
        SessionOptions::default().creds(config.credentials()?).user_agent(format!("vigil/{}", crate::VERSION));
    let transport = match config.transport {
        RtspTransport::Tcp => Transport::Tcp(Default::default()),
        RtspTransport::Udp => Transport::Udp(Default::default()),
    };
    let connect = async {
        let mut described = Session::describe(url, options).await.map_err(explain)?;
        let streams: Vec<String> =
            described.streams().iter().map(|s| format!("{}/{}", s.media(), s.encoding_name())).collect();
        let Some(i) = described.streams().iter().position(|s| s.media() == "video" && s.encoding_name() == "h264")
        else {
            bail!(
                "the camera offers no H.264 video (it offers {}); set its encoder to H.264",
                if streams.is_empty() { "nothing".to_owned() } else { streams.join(", ") }
            );
        };
        described
            .setup(i, SetupOptions::default().transport(transport).frame_format(FrameFormat::SIMPLE))
            .await
            .map_err(explain)?;
        let playing = described.play(PlayOptions::default()).await.map_err(explain)?;
        playing.demuxed().map_err(explain)
    };
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| anyhow!("no answer within {CONNECT_TIMEOUT:?}; check the address and that the camera is on"))??;
    out.connected(true);
    tracing::info!(camera = out.camera, "stream {} playing over {:?}", out.origin, config.transport);
    plan.reset();
    let mut clock = StreamClock::default();
    // Other items (RTCP reports) do not keep a stream alive: only video does.
    let mut last_video = tokio::time::Instant::now();
    let mut b_frames_seen = false;
    loop {
        let item = tokio::time::timeout_at(last_video + config.stall_timeout, stream.next())
            .await
            .map_err(|_| anyhow!("no frame for {:?}", config.stall_timeout))?;
        let frame = match item {
            None => return Ok(()),
            Some(Err(e)) => return Err(explain(e)),
            Some(Ok(CodecItem::VideoFrame(f))) => f,
            Some(Ok(_)) => continue,
        };
        last_video = tokio::time::Instant::now();
        if frame.data().len() > MAX_ACCESS_UNIT {
            // No camera's H.264 frame comes near this (a 4K keyframe is a few MB): a stream
            // that sends one is broken or hostile, and its frames must not reach the decoder.
            out.metrics.inc("vigil_errors_total", &[("kind", "stream_frame_too_large")]);
            bail!(
                "a frame of {} bytes, over the limit of {} MiB for one H.264 access unit; starting again",
                frame.data().len(),
                MAX_ACCESS_UNIT >> 20
            );
        }
        if h264::is_b_frame(frame.data()) {
            // OpenH264 does not decode B-frames, and gives no pictures for the frames around
            // them either (measured: `cargo bench --bench stream`): the camera must send none.
            if !b_frames_seen {
                b_frames_seen = true;
                tracing::error!(
                    camera = out.camera,
                    "stream {} has B-frames, which vigil's H.264 decoder cannot decode: turn B-frames off in the camera's encoder settings (most cameras send none)",
                    out.origin
                );
                out.metrics.inc("vigil_errors_total", &[("kind", "stream_b_frames")]);
            }
            out.count("skipped");
            continue;
        }
        let t = frame.timestamp().elapsed_secs();
        let time = clock.time(t, SystemTime::now());
        if damaged.swap(false, Ordering::Relaxed) {
            plan.lost();
        }
        let handling = plan.handle(&frame, t, |due| out.wanted(time, due));
        if let Some(waited) = plan.waiting_too_long(Instant::now(), config.stall_timeout) {
            bail!("no keyframe for {waited:?} (at the start, or since lost data); starting again");
        }
        match handling {
            Handling::Sample | Handling::Decode => {
                let sample = (handling == Handling::Sample).then_some(time);
                let data = frame.into_data();
                match work.try_send(Work::Packet { data, sample }) {
                    Ok(()) => *delivered = true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        // The decoder is behind: what follows cannot be decoded until the next
                        // keyframe.
                        out.metrics.inc(
                            "vigil_frames_dropped_total",
                            &[("camera", &out.camera), ("reason", "decoder_behind")],
                        );
                        plan.lost();
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => bail!("the decoder stopped"),
                }
            }
            Handling::Skip => out.count("skipped"),
            Handling::Damaged => out.count("damaged"),
        }
    }
}

/// Names what to do about a stream error; the credentials are never part of it.
fn explain(e: retina::Error) -> anyhow::Error {
    match e.status_code() {
        Some(401) => anyhow!("the camera refused the credentials (401 Unauthorized): check credentials_file"),
        Some(403) => anyhow!("the camera refused access (403 Forbidden): check the user's rights on the camera"),
        Some(404) => anyhow!("no such stream (404 Not Found): check the URL's path"),
        _ => anyhow!("{e}"),
    }
}

/// What becomes of a stream frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// Decoded and scored.
    Sample,
    /// Decoded only because later frames refer to it.
    Decode,
    /// Not decoded: not due, and nothing refers to it (or only keyframes are decoded).
    Skip,
    /// Not decoded: the stream lost data, and frames until the next keyframe would be damaged.
    Damaged,
}

/// Decides frame by frame what to decode: H.264 frames refer to earlier ones, so a frame can
/// be had only by decoding everything since the last keyframe. When keyframes come at least
/// as often as frames are to be scored, only keyframes are decoded; otherwise every frame that
/// others refer to is, and frames nothing refers to (`nal_ref_idc` 0) are skipped unless due.
#[derive(Debug)]
pub struct Plan {
    sampler: Sampler,
    triggered: bool,
    /// Seconds between the last keyframes (the latest [`GAPS`]).
    gaps: std::collections::VecDeque<f64>,
    last_key: Option<f64>,
    /// Frames wait for a keyframe (a new session, loss, a decoding error); since when, once a
    /// frame has come to wait.
    need_key: bool,
    waiting_since: Option<Instant>,
}

/// Keyframe intervals remembered: keyframes alone are decoded only if every one of them was
/// short enough (one extra keyframe, at a scene change, does not decide it).
const GAPS: usize = 4;

impl Plan {
    /// For a camera scored `fps` times a second, or on triggers.
    pub fn new(fps: f64, triggered: bool) -> Self {
        Plan {
            sampler: Sampler::new(fps),
            triggered,
            gaps: Default::default(),
            last_key: None,
            need_key: true,
            waiting_since: None,
        }
    }

    /// A new session: wait for its first keyframe.
    pub fn reset(&mut self) {
        self.sampler.reset();
        self.gaps.clear();
        self.last_key = None;
        self.need_key = true;
        self.waiting_since = None;
    }

    /// Data was lost: frames until the next keyframe would be damaged.
    pub fn lost(&mut self) {
        self.need_key = true;
    }

    /// How long frames have waited for a keyframe, if longer than `limit` or two keyframe
    /// intervals, whichever is longer (a stream that refreshes without keyframes, or has
    /// stopped sending them).
    pub fn waiting_too_long(&self, now: Instant, limit: Duration) -> Option<Duration> {
        let gop = Duration::from_secs_f64(self.interval().unwrap_or(0.0) * 2.0);
        let waited = now.duration_since(self.waiting_since?);
        (waited > limit.max(gop)).then_some(waited)
    }

    /// The keyframe interval: the longest of the last few.
    fn interval(&self) -> Option<f64> {
        self.gaps.iter().copied().reduce(f64::max)
    }

    /// Whether only keyframes are decoded.
    pub fn keyframes_only(&self) -> bool {
        !self.triggered && self.gaps.len() >= 2 && self.interval().is_some_and(|g| g <= self.sampler.interval() * 1.05)
    }

    fn handle(&mut self, f: &VideoFrame, t: f64, wanted: impl FnOnce(bool) -> bool) -> Handling {
        if f.loss() > 0 {
            self.lost();
        }
        self.decide(t, f.is_random_access_point(), f.is_disposable(), wanted)
    }

    /// What to do with the frame at stream time `t`; `wanted(due)` says whether the camera
    /// scores it, given whether its rate makes it due.
    pub fn decide(&mut self, t: f64, key: bool, disposable: bool, wanted: impl FnOnce(bool) -> bool) -> Handling {
        if key {
            if let Some(last) = self.last_key.filter(|&l| t > l) {
                if self.gaps.len() == GAPS {
                    self.gaps.pop_front();
                }
                self.gaps.push_back(t - last);
            }
            self.last_key = Some(t);
            self.need_key = false;
            self.waiting_since = None;
        } else if self.need_key {
            self.waiting_since.get_or_insert_with(Instant::now);
            return Handling::Damaged;
        }
        if self.keyframes_only() {
            // Keyframes come at least once per interval: the one nearest the due time.
            let slack = self.interval().unwrap_or(0.0) / 2.0;
            return match key && wanted(self.sampler.due(t, slack)) {
                true => Handling::Sample,
                false => Handling::Skip,
            };
        }
        let due = !self.triggered && self.sampler.due(t, 0.005);
        if wanted(due) {
            Handling::Sample
        } else if disposable {
            Handling::Skip
        } else {
            Handling::Decode
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 10 fps stream with a keyframe every `gop` frames, through a plan at `fps`.
    fn run(plan: &mut Plan, frames: std::ops::Range<u32>, gop: u32) -> Vec<Handling> {
        frames.map(|i| plan.decide(i as f64 * 0.1, i % gop == 0, false, |due| due)).collect()
    }

    #[test]
    fn keyframes_alone_are_decoded_when_they_come_often_enough() {
        use Handling::*;
        // Keyframes every second, one frame scored every two: from the third keyframe on (when
        // two intervals are known) only keyframes are decoded, every other one scored.
        let mut plan = Plan::new(0.5, false);
        let h = run(&mut plan, 0..51, 10);
        assert_eq!(h[0], Sample);
        assert!(h[1..20].iter().all(|&x| x == Decode || x == Sample), "{h:?}");
        assert!(plan.keyframes_only());
        let keys: Vec<Handling> = h[20..].iter().step_by(10).copied().collect();
        assert_eq!(keys, [Sample, Skip, Sample, Skip]);
        assert!(h[21..].iter().enumerate().all(|(i, &x)| (i + 1) % 10 == 0 || x == Skip), "{h:?}");
    }

    #[test]
    fn one_early_keyframe_does_not_switch_to_keyframes_alone() {
        // Keyframes every 2 s at 2 scored frames a second, then one extra keyframe 0.4 s after
        // another (a scene change): the longest recent interval still rules.
        let mut plan = Plan::new(2.0, false);
        for t in [0.0, 2.0, 4.0, 4.4] {
            plan.decide(t, true, false, |d| d);
        }
        assert!(!plan.keyframes_only());
        // Intervals at the boundary (0.5 s for 0.5 s between scored frames) do.
        let mut plan = Plan::new(2.0, false);
        for t in [0.0, 0.5, 1.0] {
            plan.decide(t, true, false, |d| d);
        }
        assert!(plan.keyframes_only());
    }

    #[test]
    fn every_referenced_frame_is_decoded_when_keyframes_are_rare() {
        use Handling::*;
        // Keyframes every 5 s, two frames scored a second: every frame is decoded, every fifth
        // scored, and a frame nothing refers to is skipped unless due.
        let mut plan = Plan::new(2.0, false);
        let h = run(&mut plan, 0..20, 50);
        assert!(!plan.keyframes_only());
        let scored: Vec<usize> = h.iter().enumerate().filter(|(_, x)| **x == Sample).map(|(i, _)| i).collect();
        assert_eq!(scored, [0, 5, 10, 15]);
        assert!(h.iter().all(|&x| x == Sample || x == Decode));
        assert_eq!(plan.decide(2.0, false, false, |due| due), Sample);
        assert_eq!(plan.decide(2.1, false, true, |due| due), Skip);
        assert_eq!(plan.decide(2.5, false, true, |due| due), Sample);
    }

    #[test]
    fn frames_wait_for_a_keyframe_at_the_start_and_after_loss() {
        use Handling::*;
        let mut plan = Plan::new(2.0, false);
        let limit = Duration::from_secs(10);
        // Before any frame (connecting), nothing has waited.
        assert_eq!(plan.waiting_too_long(Instant::now() + limit * 2, limit), None);
        // Joined mid-GOP: nothing until the keyframe.
        assert_eq!(plan.decide(0.0, false, false, |d| d), Damaged);
        assert_eq!(plan.decide(0.1, true, false, |d| d), Sample);
        assert_eq!(plan.decide(0.2, false, false, |d| d), Decode);
        plan.lost();
        assert_eq!(plan.decide(0.3, false, false, |d| d), Damaged);
        assert_eq!(plan.waiting_too_long(Instant::now(), limit), None);
        assert!(plan.waiting_too_long(Instant::now() + Duration::from_secs(11), limit).is_some());
        assert_eq!(plan.decide(2.1, true, false, |d| d), Sample);
        assert_eq!(plan.waiting_too_long(Instant::now() + Duration::from_secs(11), limit), None);
        // Keyframes 8 s apart: waiting up to two intervals is not too long.
        for t in [10.1, 18.1] {
            plan.decide(t, true, false, |d| d);
        }
        plan.lost();
        plan.decide(18.2, false, false, |d| d);
        assert_eq!(plan.waiting_too_long(Instant::now() + Duration::from_secs(15), limit), None);
    }

    #[test]
    fn a_triggered_camera_decodes_every_reference_frame_and_scores_the_wanted_one() {
        use Handling::*;
        let mut plan = Plan::new(2.0, true);
        let h = run(&mut plan, 0..30, 10);
        assert!(!plan.keyframes_only(), "a trigger may come at any frame");
        assert!(h.iter().all(|&x| x == Decode), "{h:?}");
        assert_eq!(plan.decide(3.0, false, true, |_| false), Skip);
        assert_eq!(plan.decide(3.1, false, true, |_| true), Sample);
    }

    #[test]
    fn credentials_are_user_colon_password_and_a_bad_line_is_not_echoed() {
        let c = parse_credentials("op:se:cret\nignored\n").unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("op", "se:cret"));
        assert_eq!(parse_credentials("viewer:\r\n").unwrap().password, "");
        let e = parse_credentials("hunter2").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(parse_credentials(":pw").is_err());
    }

    #[test]
    fn urls_with_credentials_or_another_scheme_are_refused() {
        let check = |url: &str| {
            let s = RtspSource {
                url: url.into(),
                fps: 2.0,
                transport: RtspTransport::Tcp,
                credentials_file: None,
                stall_timeout: default_stall_timeout(),
            };
            let mut p = Problems::default();
            s.validate("cameras[0].source", &mut p);
            p.into_vec().into_iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n")
        };
        assert_eq!(check("rtsp://10.0.0.5:554/stream1"), "");
        let with_creds = check("rtsp://admin:hunter2@10.0.0.5/stream1");
        assert!(with_creds.contains("credentials_file") && !with_creds.contains("hunter2"), "{with_creds}");
        assert!(check("http://10.0.0.5/stream1").contains("rtsp://"));
        assert!(check("not a url").contains("cameras[0].source.url"));
        let query = check("rtsp://10.0.0.5/live?user=admin&pwd=hunter2");
        assert!(query.contains("credentials_file") && !query.contains("hunter2"), "{query}");
        assert_eq!(check("rtsp://10.0.0.5/cam/realmonitor?channel=1&subtype=0"), "");
    }
}
