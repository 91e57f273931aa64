//! The V4L2 source: a USB (UVC) or other Video4Linux capture device, read with `linuxvideo`
//! (pure Rust over the kernel's ioctls) on its own thread (dequeuing blocks), sampled at the
//! configured rate. A device that fails or is unplugged is opened again with backoff.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, anyhow};
use linuxvideo::format::PixFormat;
use linuxvideo::{BufType, Device};
use serde::{Deserialize, Serialize};

use super::camera::{self, Output, Sampler};
use super::pixels::{self, Layout, PixelFormat};
use crate::backoff::{Backoff, jitter};
use crate::problem::Problems;
use crate::shutdown::Shutdown;

/// `source = { type = "v4l2", device = "/dev/video0", ... }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct V4l2Source {
    /// The capture device: `/dev/video0`, or better a stable link under `/dev/v4l/by-id/`
    /// (numbers change with the order devices are found).
    pub device: PathBuf,
    /// Frames scored per second; the frames between are read and dropped. A camera with a
    /// `trigger` scores the frame after each trigger instead.
    #[serde(default = "camera::default_fps")]
    pub fps: f64,
    /// The pixel format to ask for (`grey`, `yuyv`, `nv12`, `mjpeg`). Absent: the first of
    /// those the device offers, uncompressed first.
    #[serde(default)]
    pub format: Option<PixelFormat>,
    /// `[width, height]` to ask for; the driver picks the nearest it has. Absent: the largest.
    #[serde(default)]
    pub size: Option<[u32; 2]>,
    /// A device that gives no frame for this long is taken as stalled and opened again.
    #[serde(default = "default_stall_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub stall_timeout: Duration,
}

fn default_stall_timeout() -> Duration {
    Duration::from_secs(10)
}

impl V4l2Source {
    /// Checks the values under `key` (`cameras[0].source`).
    pub fn validate(&self, key: &str, p: &mut Problems) {
        if !self.device.is_absolute() {
            p.at(key, "device", format!("`{}`: give the device's absolute path", self.device.display()));
        }
        camera::validate_fps(self.fps, key, p);
        if let Some([w, h]) = self.size
            && (w == 0 || h == 0)
        {
            p.at(key, "size", "width and height must be positive: [width, height]");
        }
        if self.stall_timeout < Duration::from_secs(1) {
            p.at(key, "stall_timeout", "must be at least 1s");
        }
    }
}

/// Reads the device until `shutdown`, opening it again when it fails.
pub async fn run(config: V4l2Source, triggered: bool, out: Output, mut shutdown: Shutdown) {
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (stop, out) = (stop.clone(), out.clone());
        std::thread::Builder::new()
            .name(format!("v4l2-{}", out.camera))
            .spawn(move || capture(&config, triggered, &out, &stop))
            .expect("spawning a capture thread")
    };
    shutdown.recv().await;
    // The thread looks at the flag at least every STEP, even while the device is silent.
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    out.connected(false);
}

/// How often a waiting capture thread looks whether it is to stop.
const STEP: Duration = Duration::from_millis(200);

/// Waits up to `limit` for a filled buffer on `fd`; `Ok(false)` if none came or `stop` was
/// set meanwhile.
fn wait_frame(fd: RawFd, limit: Duration, stop: &AtomicBool) -> io::Result<bool> {
    let until = Instant::now() + limit;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if stop.load(Ordering::Relaxed) || left.is_zero() {
            return Ok(false);
        }
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        let ms = left.min(STEP).as_millis() as libc::c_int;
        // SAFETY: one valid pollfd for the duration of the call.
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            0 => {}
            _ if pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 => {
                return Err(io::Error::other("the device reported an error (unplugged?)"));
            }
            _ => return Ok(true),
        }
    }
}

/// Opens the device and reads frames until `stop`, reopening it with backoff when it fails.
fn capture(config: &V4l2Source, triggered: bool, out: &Output, stop: &AtomicBool) {
    let mut backoff = Backoff::default();
    while !stop.load(Ordering::Relaxed) {
        let mut delivered = false;
        let result = stream(config, triggered, out, stop, &mut delivered);
        out.connected(false);
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let wait = jitter(backoff.next(delivered));
        if let Err(e) = result {
            tracing::warn!(camera = out.camera, "device {}: {e:#}; opening it again in {wait:?}", out.origin);
            out.metrics.inc("vigil_errors_total", &[("kind", "stream")]);
        }
        out.metrics.inc("vigil_stream_reconnects_total", &[("camera", &out.camera)]);
        // Slept in short steps so a stop is seen.
        let until = Instant::now() + wait;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// The format to ask for: the configured one, or the device's first in vigil's order.
fn choose(config: &V4l2Source, device: &Device) -> anyhow::Result<PixelFormat> {
    let offered: Vec<[u8; 4]> =
        device.formats(BufType::VIDEO_CAPTURE).filter_map(Result::ok).map(|f| f.pixel_format().as_fourcc()).collect();
    let names = || offered.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join(", ");
    let usable: Vec<PixelFormat> = offered.iter().filter_map(|c| PixelFormat::from_fourcc(*c)).collect();
    match config.format {
        Some(f) if usable.contains(&f) => Ok(f),
        Some(f) => Err(anyhow!(
            "it does not offer {} (it offers {}); change format or leave it out",
            String::from_utf8_lossy(&f.fourcc()),
            names()
        )),
        None => PixelFormat::PREFERRED.into_iter().find(|f| usable.contains(f)).ok_or_else(|| {
            anyhow!("it offers none of GREY, YUYV, NV12, MJPEG (it offers {}); vigil cannot read it", names())
        }),
    }
}

/// One opening of the device: negotiate the format, then frames until an error or `stop`.
fn stream(
    config: &V4l2Source,
    triggered: bool,
    out: &Output,
    stop: &AtomicBool,
    delivered: &mut bool,
) -> anyhow::Result<()> {
    let device = Device::open(&config.device)
        .with_context(|| "cannot open it; check that the camera is plugged in and vigil may use it (group video)")?;
    let format = choose(config, &device)?;
    let [w, h] = config.size.unwrap_or([u32::MAX, u32::MAX]);
    let fourcc = linuxvideo::format::PixelFormat::from_fourcc(format.fourcc());
    let capture = device.video_capture(PixFormat::new(w, h, fourcc)).context("it refused the capture format")?;
    let got = capture.format();
    let layout = Layout { width: got.width(), height: got.height(), stride: got.bytes_per_line() };
    if got.pixel_format() != fourcc {
        return Err(anyhow!("it switched to {} when asked for {}", got.pixel_format(), fourcc));
    }
    let mut frames = capture.into_stream().context("it cannot stream")?;
    out.connected(true);
    tracing::info!(camera = out.camera, "device {}: {}x{} {format:?}", out.origin, layout.width, layout.height);
    let started = Instant::now();
    let mut sampler = Sampler::new(config.fps);
    let mut last_warning = None;
    while !stop.load(Ordering::Relaxed) {
        if !wait_frame(frames.as_raw_fd(), config.stall_timeout, stop).context("waiting for a frame failed")? {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            anyhow::bail!("no frame for {:?}", config.stall_timeout);
        }
        // The buffer goes back to the driver when the closure returns, so it only copies.
        let frame = frames
            .dequeue(|buf| {
                let time = SystemTime::now();
                let due = !triggered && sampler.due(started.elapsed().as_secs_f64(), 0.005);
                if buf.is_error() || !out.wanted(time, due) {
                    return Ok((buf.is_error(), None));
                }
                Ok((false, Some((buf.to_vec(), time))))
            })
            .context("reading a frame failed")?;
        *delivered = true;
        match frame {
            (true, _) => out.count("damaged"),
            (false, None) => out.count("skipped"),
            (false, Some((raw, time))) => match pixels::encode(format, &raw, layout) {
                Ok(bytes) => {
                    if out.offer(bytes, time).is_err() {
                        return Ok(());
                    }
                }
                Err(e) => {
                    out.count("damaged");
                    out.metrics.inc("vigil_errors_total", &[("kind", "stream_decode")]);
                    if last_warning.is_none_or(|t: Instant| t.elapsed().as_secs() >= 60) {
                        tracing::warn!(camera = out.camera, "device {}: a frame was not read: {e}", out.origin);
                        last_warning = Some(Instant::now());
                    }
                }
            },
        }
    }
    Ok(())
}
