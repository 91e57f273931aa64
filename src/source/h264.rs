//! The H.264 decoder of a stream camera, on its own thread: Annex B access units in, sampled
//! pictures out as PNG frames for scoring. Decoding is CPU work that must not hold up the
//! async runtime, and the decoder's state (reference frames) lives across frames.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use openh264::decoder::Decoder;
use openh264::formats::YUVSource as _;
use tokio::sync::mpsc;

use super::camera::{Output, check_size, encode_png};

/// Access units that may wait for the decoder: a second at 4 fps of keyframes, or a short
/// burst of a full-rate stream; more means the decoder cannot keep up.
pub const QUEUE: usize = 8;

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
            Ok(Some(yuv)) if sample.is_some() => picture(&yuv).map(Some),
            // Decoded only for the frames after it, or a unit that completes no picture
            // (parameter sets alone, a field): nothing to show.
            Ok(_) => Ok(None),
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

/// Whether the access unit (Annex B) is a B-frame: its first coded slice is of type B. OpenH264
/// does not decode B-slices, so the RTSP source names the problem instead of failing frame by
/// frame.
pub fn is_b_frame(au: &[u8]) -> bool {
    slice_type(au) == Some(1)
}

/// The slice type (0 P, 1 B, 2 I, 3 SP, 4 SI) of the first coded slice in `au`.
fn slice_type(au: &[u8]) -> Option<u32> {
    for nal in openh264::nal_units(au) {
        // Past the start code (zeros, then 1) to the NAL header.
        let start = nal.iter().position(|&b| b != 0)? + 1;
        let header = *nal.get(start)?;
        if matches!(header & 0x1f, 1 | 5) {
            // The slice header opens with first_mb_in_slice and slice_type, both ue(v); an
            // emulation-prevention byte cannot occur this early.
            let mut bits = Bits { data: &nal[start + 1..], at: 0 };
            bits.ue()?;
            return bits.ue().map(|t| t % 5);
        }
    }
    None
}

/// A big-endian bit reader over a NAL unit's payload.
struct Bits<'a> {
    data: &'a [u8],
    at: usize,
}

impl Bits<'_> {
    fn bit(&mut self) -> Option<u32> {
        let byte = self.data.get(self.at / 8)?;
        let bit = (byte >> (7 - self.at % 8)) & 1;
        self.at += 1;
        Some(u32::from(bit))
    }

    /// An unsigned Exp-Golomb code.
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let mut value = 0u32;
        for _ in 0..zeros {
            value = (value << 1) | self.bit()?;
        }
        Some((1u32 << zeros) - 1 + value)
    }
}

/// The picture as a PNG.
fn picture(yuv: &openh264::decoder::DecodedYUV<'_>) -> Result<Vec<u8>, String> {
    let (w, h) = yuv.dimensions();
    check_size(w as u64, h as u64)?;
    let mut rgb = vec![0; w * h * 3];
    yuv.write_rgb8(&mut rgb);
    Ok(encode_png(&rgb, w as u32, h as u32, image::ExtendedColorType::Rgb8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b_frames_are_told_from_p_and_i_frames_by_their_first_slice() {
        // Start code, NAL header (type 1, or 5 for IDR), then first_mb_in_slice = 0 ("1") and
        // slice_type: 0 P ("1"), 1 B ("010"), 6 B for every slice ("00111"), 7 I ("0001000").
        let au = |header: u8, bits: &[u8]| [&[0, 0, 0, 1, header][..], bits].concat();
        assert!(!is_b_frame(&au(0x41, &[0b1100_0000])));
        assert!(is_b_frame(&au(0x01, &[0b1010_0000])));
        assert!(is_b_frame(&au(0x01, &[0b1001_1100])));
        assert!(!is_b_frame(&au(0x65, &[0b1000_1000, 0])));
        // Parameter sets first (as before keyframes), then the slice.
        let with_sps = [&[0, 0, 0, 1, 0x67, 0x42, 0x00][..], &au(0x01, &[0b1010_0000])].concat();
        assert!(is_b_frame(&with_sps));
        assert!(!is_b_frame(&[0, 0, 1]), "nothing to read");
        assert_eq!(slice_type(&au(0x01, &[0, 0, 0, 0, 0])), None, "a code too long");
    }
}
