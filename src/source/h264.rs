//! The H.264 decoder of a stream camera, on its own thread: Annex B access units in, sampled
//! pictures out as PNG frames for scoring. Decoding is CPU work that must not hold up the
//! async runtime, and the decoder's state (reference frames) lives across frames.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use openh264::decoder::Decoder;
use openh264::formats::YUVSource as _;
use tokio::sync::mpsc;

use super::camera::{Output, encode_png};

/// Access units that may wait for the decoder: a second at 4 fps of keyframes, or a short
/// burst of a full-rate stream; more means the decoder cannot keep up.
pub const QUEUE: usize = 8;

/// Pictures larger than this are refused (8K UHD), as they are from files.
const MAX_PIXELS: usize = 7680 * 4320;

/// What the stream reader hands the decoder.
#[derive(Debug)]
pub enum Work {
    /// A new session: start from a fresh decoder (the stream's parameters may differ).
    Reset,
    /// One access unit (Annex B, parameter sets before keyframes), and the frame time if its
    /// picture is to be scored.
    Packet {
        /// The NAL units.
        data: Vec<u8>,
        /// `Some(time)`: score the picture, taken at `time`.
        sample: Option<SystemTime>,
    },
}

/// Decodes `work` until its sender is gone; sets `damaged` when a unit fails to decode, so the
/// reader waits for the next keyframe.
pub fn decode(mut work: mpsc::Receiver<Work>, out: Output, damaged: std::sync::Arc<AtomicBool>) {
    let mut decoder: Option<Decoder> = None;
    let mut last_warning: Option<Instant> = None;
    while let Some(w) = work.blocking_recv() {
        let (data, sample) = match w {
            Work::Reset => {
                decoder = None;
                continue;
            }
            Work::Packet { data, sample } => (data, sample),
        };
        let d = match &mut decoder {
            Some(d) => d,
            None => match Decoder::new() {
                Ok(d) => decoder.insert(d),
                Err(e) => {
                    tracing::error!(camera = out.camera, "the H.264 decoder cannot start: {e}");
                    out.metrics.inc("vigil_errors_total", &[("kind", "stream")]);
                    return;
                }
            },
        };
        let result = match d.decode(&data) {
            Ok(Some(yuv)) => picture(&yuv, sample.is_some()),
            // A unit that completes no picture (parameter sets alone, a field): nothing to show.
            Ok(None) => Ok(None),
            Err(e) => Err(format!("{e}")),
        };
        match (result, sample) {
            (Ok(Some(png)), Some(time)) => {
                if out.offer(png, time).is_err() {
                    return;
                }
            }
            (Ok(_), _) => out.count("decoded"),
            (Err(e), _) => {
                damaged.store(true, Ordering::Relaxed);
                out.count("damaged");
                out.metrics.inc("vigil_errors_total", &[("kind", "stream_decode")]);
                // A damaged stream fails every frame until the next keyframe: one line a minute.
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(
                        camera = out.camera,
                        "stream {}: a frame did not decode ({e}); waiting for the next keyframe",
                        out.origin
                    );
                    last_warning = Some(Instant::now());
                }
            }
        }
    }
}

/// The picture as a PNG, if it is to be scored.
fn picture(yuv: &openh264::decoder::DecodedYUV<'_>, keep: bool) -> Result<Option<Vec<u8>>, String> {
    if !keep {
        return Ok(None);
    }
    let (w, h) = yuv.dimensions();
    if w == 0 || h == 0 || w * h > MAX_PIXELS {
        return Err(format!("a {w}x{h} picture is out of bounds"));
    }
    let mut rgb = vec![0; w * h * 3];
    yuv.write_rgb8(&mut rgb);
    Ok(Some(encode_png(&rgb, w as u32, h as u32, image::ExtendedColorType::Rgb8)))
}
