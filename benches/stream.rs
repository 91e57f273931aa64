//! What an RTSP camera costs the box: H.264 clips made by ffmpeg (a moving test pattern,
//! 25 fps, keyframes every 0.5 s or every 2 s), run through the RTSP source's decode plan
//! (`source::rtsp::Plan`) at the default two scored frames a second, decoded by OpenH264,
//! the scored pictures converted to RGB and PNG as the source does (and a clip with B-frames,
//! to show that OpenH264 gives no pictures for it: `scored` below the due frames); beside it,
//! the same clip
//! with every frame decoded (what a source that cannot skip does), and the usual grabber in
//! front of a Python script or an NVR: ffmpeg (libavcodec, one thread) decoding every frame
//! and writing two PNG frames a second. Reports CPU seconds per second of stream (the share of
//! one core a camera takes) and the ratios. One JSON line per clip.
//!
//!   cargo bench --bench stream                 (1280x720; VIGIL_STREAM_SIZE=1920x1080)

use std::path::Path;
use std::process::Command;

use openh264::decoder::Decoder;
use openh264::formats::YUVSource as _;
use vigil::source::camera::encode_png;
use vigil::source::rtsp::{Handling, Plan};

const FPS_STREAM: u32 = 25;
const SECONDS: u32 = 12;

/// The clip's access units: each frame's NAL units (Annex B), with whether it is a keyframe
/// (IDR) and whether nothing refers to it (`nal_ref_idc` 0).
fn access_units(h264: &[u8]) -> Vec<(Vec<u8>, bool, bool)> {
    let mut units = vec![];
    let mut current = vec![];
    for nal in openh264::nal_units(h264) {
        current.extend_from_slice(nal);
        let header = nal.iter().skip_while(|&&b| b == 0).nth(1).copied().unwrap_or(0);
        let kind = header & 0x1f;
        // One slice a frame (x264's default here): a coded slice ends the access unit.
        if kind == 1 || kind == 5 {
            units.push((std::mem::take(&mut current), kind == 5, header & 0x60 == 0));
        }
    }
    units
}

/// `bframes`: B-frames between reference frames, none of them referred to (no pyramid).
fn clip(dir: &Path, size: &str, gop: u32, bframes: u32) -> std::path::PathBuf {
    let out = dir.join(format!("gop{gop}-b{bframes}.h264"));
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={size}:rate={FPS_STREAM}:duration={SECONDS}"))
        .args(["-c:v", "libx264", "-profile:v", "main", "-bf", &bframes.to_string(), "-pix_fmt", "yuv420p"])
        .args(["-x264-params", "b-pyramid=none"])
        .args(["-g", &gop.to_string(), "-keyint_min", &gop.to_string(), "-sc_threshold", "0", "-crf", "23"])
        .args(["-bsf:v", "h264_mp4toannexb", "-f", "h264"])
        .arg(&out)
        .status()
        .expect("ffmpeg runs (scripts/setup installs it)");
    assert!(status.success());
    out
}

/// CPU seconds (this thread's) spent decoding `units` as `plan` says (`None`: every frame,
/// every 1/`fps` s one converted), and the frames scored.
fn run(units: &[(Vec<u8>, bool, bool)], plan: Option<&mut Plan>) -> (f64, usize, usize) {
    let mut decoder = Decoder::new().unwrap();
    let mut sampler = vigil::source::camera::Sampler::new(2.0);
    let mut plan = plan;
    let (mut scored, mut decoded) = (0, 0);
    let start = cpu_time();
    for (i, (data, key, disposable)) in units.iter().enumerate() {
        let t = f64::from(i as u32) / f64::from(FPS_STREAM);
        // The RTSP source skips B-frames (OpenH264 does not decode them, and then gives no
        // pictures for the others either: the clip with B-frames shows it); every-frame
        // decoding tries them all.
        if plan.is_some() && vigil::source::h264::is_b_frame(data) {
            continue;
        }
        let handling = match plan.as_deref_mut() {
            Some(p) => p.decide(t, *key, *disposable, |due| due),
            None => match sampler.due(t, 0.005) {
                true => Handling::Sample,
                false => Handling::Decode,
            },
        };
        if matches!(handling, Handling::Skip | Handling::Damaged) {
            continue;
        }
        decoded += 1;
        let Ok(Some(yuv)) = decoder.decode(data) else { continue };
        if handling == Handling::Sample {
            let (w, h) = yuv.dimensions();
            let mut rgb = vec![0; w * h * 3];
            yuv.write_rgb8(&mut rgb);
            std::hint::black_box(encode_png(&rgb, w as u32, h as u32, image::ExtendedColorType::Rgb8));
            scored += 1;
        }
    }
    (cpu_time() - start, scored, decoded)
}

/// CPU seconds of ffmpeg decoding `clip` whole, one thread, and writing `fps` PNGs a second.
fn ffmpeg_cpu(clip: &Path, fps: u32) -> f64 {
    let before = children_cpu();
    let status = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-threads", "1", "-i"])
        .arg(clip)
        .args(["-vf", &format!("fps={fps}"), "-f", "image2pipe", "-c:v", "png", "-compression_level", "1", "-"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    children_cpu() - before
}

fn children_cpu() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

fn cpu_time() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid pointer to a timespec, for the calling thread's CPU clock.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

fn main() {
    // `cargo bench` passes `--bench`; a filter that does not name this benchmark skips it.
    if std::env::args().skip(1).any(|a| !a.starts_with('-') && !"stream".contains(a.as_str())) {
        return;
    }
    let size = std::env::var("VIGIL_STREAM_SIZE").unwrap_or_else(|_| "1280x720".into());
    let dir = tempfile::tempdir().unwrap();
    for (gop, bframes) in [(FPS_STREAM / 2, 0), (FPS_STREAM * 2, 0), (FPS_STREAM * 2, 2)] {
        let path = clip(dir.path(), &size, gop, bframes);
        let units = access_units(&std::fs::read(&path).unwrap());
        let ffmpeg = ffmpeg_cpu(&path, 2);
        let (every, every_scored, every_decoded) = run(&units, None);
        let mut plan = Plan::new(2.0, false);
        let (planned, scored, decoded) = run(&units, Some(&mut plan));
        let stream_s = f64::from(SECONDS);
        println!(
            "{}",
            serde_json::json!({
                "bench": "stream", "size": size, "stream_fps": FPS_STREAM, "keyframe_every_s": f64::from(gop) / f64::from(FPS_STREAM),
                "b_frames": bframes, "disposable": units.iter().filter(|u| u.2).count(),
                "scored_fps": 2, "frames": units.len(), "keyframes_only": plan.keyframes_only(),
                "vigil": {"decoded": decoded, "scored": scored, "cpu_share": (planned / stream_s * 1e4).round() / 1e4},
                "decode_every_frame": {"decoded": every_decoded, "scored": every_scored, "cpu_share": (every / stream_s * 1e4).round() / 1e4},
                "ffmpeg_decode_every_frame": {"cpu_share": (ffmpeg / stream_s * 1e4).round() / 1e4},
                "cpu_ratio_vs_every_frame": (planned / every * 1e3).round() / 1e3,
                "cpu_ratio_vs_ffmpeg": (planned / ffmpeg * 1e3).round() / 1e3,
            })
        );
    }
}
