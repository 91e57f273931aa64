//! Live cameras: an RTSP stream from a real server (GStreamer's RTSP server serving an H.264
//! clip with a defect in it) through the real daemon to an alert, surviving the server going
//! away; V4L2 pixel formats converted from buffers made by ffmpeg's own converters; a V4L2
//! device that is not there.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use vigil::source::pixels::{self, Layout, PixelFormat};

use crate::common::mosquitto::{Mosquitto, Subscriber, free_port, http_get, metric};
use crate::daemon::{Plant, WAIT, check_schema, mqtt_section, run_binary};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// Debian's own Python: the GStreamer bindings (`gi`) live there, not in other Pythons.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// GStreamer's RTSP server on `port`, serving `clip` (looped) on `/live`; killed on drop.
struct RtspServer {
    child: Child,
    url: String,
}

impl RtspServer {
    fn start(port: u16, clip: &Path, user: &str) -> RtspServer {
        let mut child = Command::new(SYSTEM_PYTHON)
            .arg(repo("tests/py/rtsp_server.py"))
            .arg(port.to_string())
            .arg(clip)
            .args(["--user", user])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the RTSP server script runs: scripts/setup installs GStreamer's RTSP server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.trim().strip_prefix("READY ").unwrap_or_else(|| panic!("the RTSP server said {line:?}"));
        RtspServer { url: url.to_owned(), child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The metrics page once `ok` holds for it.
fn wait_for_metrics(what: &str, http: u16, ok: impl Fn(&str) -> bool) -> String {
    let mut m = String::new();
    crate::common::wait_until(what, WAIT, || {
        m = http_get(http, "/metrics").1;
        ok(&m)
    });
    m
}

#[test]
fn an_rtsp_stream_with_a_defect_gives_an_alert_and_resumes_after_the_server_restarts() {
    let plant = Plant::new();
    let (normal, defect) = (plant.path("clip/normal.png"), plant.path("clip/defect.png"));
    std::fs::write(&normal, &plant.normal).unwrap();
    std::fs::write(&defect, &plant.anomalous).unwrap();
    // Six seconds at 10 fps, a keyframe every second, the defect in view from 2 s to 4 s.
    let clip = plant.path("clip/line.mp4");
    let made = Command::new(SYSTEM_PYTHON)
        .arg(repo("tests/py/make_clip.py"))
        .arg(&clip)
        .arg("--normal")
        .arg(&normal)
        .arg("--defect")
        .arg(&defect)
        .args(["--frames", "60", "--defect-at", "20:40", "--fps", "10", "--gop", "10"])
        .status()
        .unwrap();
    assert!(made.success(), "make_clip.py failed");

    let port = free_port();
    let mut server = RtspServer::start(port, &clip, "inspector:pa:ss-w0rd");
    let secret = plant.path("secrets/cam.cred");
    std::fs::write(&secret, "inspector:pa:ss-w0rd\n").unwrap();
    let wrong = plant.path("secrets/wrong.cred");
    std::fs::write(&wrong, "inspector:not-the-password\n").unwrap();

    let broker = Mosquitto::start();
    let sub = Subscriber::new(broker.port, "vigil/#");
    let camera = |id: &str, fps: f64, cred: &Path| {
        format!(
            "[[cameras]]\nid = \"{id}\"\nbundle = \"{}\"\nthreshold = {}\nsource = {{ type = \"rtsp\", url = \"{}\", fps = {fps}, credentials_file = \"{}\", stall_timeout = \"3s\" }}\n",
            plant.bundle.display(),
            plant.threshold,
            server.url,
            cred.display()
        )
    };
    // cam1 scores two frames a second (every frame decoded: keyframes come once a second);
    // cam2 one every two seconds (keyframes alone decoded); cam3 has the wrong password; cam4
    // scores only the frame after each part-present signal.
    let cfg = plant.config(&format!(
        "{}[alerts]\ncooldown = \"0s\"\n{}{}{}{}trigger = {{ mqtt = \"line1/cam4/part_present\", timeout = \"10s\" }}\n",
        mqtt_section(broker.port),
        camera("cam1", 2.0, &secret),
        camera("cam2", 0.5, &secret),
        camera("cam3", 2.0, &wrong),
        camera("cam4", 2.0, &secret)
    ));
    let log = plant.path("vigil.log");
    let mut daemon = KillOnDrop(run_binary(&cfg, Stdio::from(std::fs::File::create(&log).unwrap())));

    // Frames arrive, normal ones are scored normal, the defect gives an alert on both cameras.
    let alert = sub.wait_for("vigil/box1/cam1/anomaly", 1, WAIT)[0].json();
    assert_eq!(alert["source"], server.url.as_str(), "{alert}");
    check_schema(&alert);
    sub.wait_for("vigil/box1/cam2/anomaly", 1, WAIT);
    let m = wait_for_metrics("normal frames on cam1", plant.http, |m| {
        metric(m, "vigil_frames_total{camera=\"cam1\",result=\"normal\"}") >= 2.0
    });
    assert_eq!(metric(&m, "vigil_stream_connected{camera=\"cam1\"}"), 1.0, "{m}");
    // Keyframes only on cam2: once the keyframe interval is known (after the first two, whose
    // frames are decoded), the frames between keyframes are never decoded.
    let m = wait_for_metrics("cam2 to skip three seconds of frames", plant.http, |m| {
        metric(m, "vigil_stream_frames_total{camera=\"cam2\",handling=\"skipped\"}") >= 27.0
    });
    let decoded = metric(&m, "vigil_stream_frames_total{camera=\"cam2\",handling=\"decoded\"}");
    assert!(decoded <= 20.0, "cam2 decoded {decoded} frames beyond its first two keyframe intervals:\n{m}");
    // The wrong password: refused, counted, retried, never connected.
    let m = wait_for_metrics("cam3's failures", plant.http, |m| {
        metric(m, "vigil_stream_reconnects_total{camera=\"cam3\"}") >= 1.0
    });
    assert_eq!(metric(&m, "vigil_stream_connected{camera=\"cam3\"}"), 0.0, "{m}");
    assert_eq!(metric(&m, "vigil_frames_total{camera=\"cam3\",result=\"normal\"}"), 0.0, "{m}");

    // The triggered camera: nothing scored until the signal, then exactly one frame, which
    // carries the trigger's id.
    assert_eq!(metric(&m, "vigil_stream_frames_total{camera=\"cam4\",handling=\"sampled\"}"), 0.0, "{m}");
    assert_eq!(metric(&m, "vigil_stream_connected{camera=\"cam4\"}"), 1.0, "{m}");
    sub.publish("line1/cam4/part_present", false, br#"{"id": "part-9"}"#.to_vec());
    wait_for_metrics("cam4's triggered frame", plant.http, |m| {
        metric(m, "vigil_triggers_total{camera=\"cam4\",result=\"scored\"}") >= 1.0
            && metric(m, "vigil_frames_total{camera=\"cam4\",result=\"normal\"}")
                + metric(m, "vigil_frames_total{camera=\"cam4\",result=\"anomalous\"}")
                >= 1.0
    });
    std::thread::sleep(Duration::from_millis(500));
    let m = http_get(plant.http, "/metrics").1;
    let scored = metric(&m, "vigil_frames_total{camera=\"cam4\",result=\"normal\"}")
        + metric(&m, "vigil_frames_total{camera=\"cam4\",result=\"anomalous\"}");
    assert_eq!(scored, 1.0, "one frame per trigger:\n{m}");
    assert_eq!(metric(&m, "vigil_stream_frames_total{camera=\"cam4\",handling=\"sampled\"}"), 1.0, "{m}");
    assert_eq!(metric(&m, "vigil_frames_untriggered_total{camera=\"cam4\"}"), 0.0, "{m}");

    // The server goes away: the stream is lost, counted, and taken up again once it is back.
    server.kill();
    wait_for_metrics("cam1 to notice the server is gone", plant.http, |m| {
        metric(m, "vigil_stream_connected{camera=\"cam1\"}") == 0.0
            && metric(m, "vigil_stream_reconnects_total{camera=\"cam1\"}") >= 1.0
    });
    let before = metric(&http_get(plant.http, "/metrics").1, "vigil_frames_total{camera=\"cam1\",result=\"normal\"}");
    let _server = RtspServer::start(port, &clip, "inspector:pa:ss-w0rd");
    wait_for_metrics("cam1's stream back and scored", plant.http, |m| {
        metric(m, "vigil_stream_connected{camera=\"cam1\"}") == 1.0
            && metric(m, "vigil_frames_total{camera=\"cam1\",result=\"normal\"}") > before
    });

    // A clean stop drains what is in flight.
    let metrics = http_get(plant.http, "/metrics").1;
    let status = Command::new("kill").args(["-TERM", &daemon.0.id().to_string()]).status().unwrap();
    assert!(status.success());
    assert!(daemon.0.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("abandoned"), "the stop ran out of time:\n{text}");
    assert!(text.contains("401") && text.contains("credentials_file"), "cam3's refusal is explained:\n{text}");
    // The passwords are nowhere: not in the log, the metrics or any message the box sent.
    let sent: Vec<String> = sub.all().iter().map(|m| m.text()).collect();
    assert!(sent.len() > 2, "the box published nothing to check");
    for secret in ["pa:ss-w0rd", "not-the-password"] {
        assert!(!text.contains(secret), "a password was logged:\n{text}");
        assert!(!metrics.contains(secret), "a password is in the metrics");
        assert!(!sent.iter().any(|m| m.contains(secret)), "a password was published");
    }
}

/// A child process killed when the test ends, passing or not.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A smooth colour picture (gradients: chroma subsampling changes little) of `w`x`h`.
fn picture(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(40 + x * 3) as u8, (30 + y * 4) as u8, (200 - x - y) as u8]))
}

/// `png` converted by ffmpeg to raw `pix_fmt` (or, for `mjpeg`, a JPEG with the standard tables).
fn ffmpeg(png: &Path, pix_fmt: &str) -> Vec<u8> {
    let out = png.with_extension(pix_fmt);
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-loglevel", "error", "-y", "-i"]).arg(png);
    if pix_fmt == "mjpeg" {
        cmd.args(["-c:v", "mjpeg", "-huffman", "default", "-q:v", "3", "-f", "mjpeg"]);
    } else {
        cmd.args(["-f", "rawvideo", "-pix_fmt", pix_fmt]);
    }
    let status = cmd.arg(&out).status().expect("ffmpeg runs: scripts/setup installs it");
    assert!(status.success(), "ffmpeg made no {pix_fmt}");
    std::fs::read(out).unwrap()
}

/// Inserts `pad` bytes after every `line` bytes of the first `lines` lines (drivers pad).
fn pad_lines(buf: &[u8], line: usize, lines: usize, pad: usize) -> Vec<u8> {
    let mut out = vec![];
    for y in 0..lines {
        out.extend_from_slice(&buf[y * line..(y + 1) * line]);
        out.extend(std::iter::repeat_n(0xEE, pad));
    }
    out.extend_from_slice(&buf[lines * line..]);
    out
}

fn max_difference(a: &[u8], b: &[u8]) -> u8 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap()
}

#[test]
fn usb_camera_pixel_formats_read_as_the_picture_they_were_made_from() {
    let dir = tempfile::tempdir().unwrap();
    let (w, h) = (32u32, 24u32);
    let original = picture(w, h);
    let png = dir.path().join("p.png");
    original.save(&png).unwrap();
    let decode = |bytes: &[u8]| image::load_from_memory(bytes).unwrap();

    // YUYV and NV12 from ffmpeg's converter, tight and with padded lines, come back within the
    // error of 8-bit YUV with halved chroma.
    let yuyv = ffmpeg(&png, "yuyv422");
    let nv12 = ffmpeg(&png, "nv12");
    for (format, buf, line_bytes, luma_lines) in
        [(PixelFormat::Yuyv, &yuyv, w * 2, h), (PixelFormat::Nv12, &nv12, w, h + h / 2)]
    {
        for pad in [0u32, 16] {
            let padded = pad_lines(buf, line_bytes as usize, luma_lines as usize, pad as usize);
            let layout = Layout { width: w, height: h, stride: if pad == 0 { 0 } else { line_bytes + pad } };
            let frame = pixels::encode(format, &padded, layout).unwrap();
            let got = decode(&frame).to_rgb8();
            let diff = max_difference(got.as_raw(), original.as_raw());
            assert!(diff <= 8, "{format:?} (padding {pad}) is off by {diff}");
        }
    }
    // A swapped U and V would be far off: the check above can fail.
    let mut swapped = nv12.clone();
    for uv in swapped[(w * h) as usize..].chunks_exact_mut(2) {
        uv.swap(0, 1);
    }
    let wrong =
        decode(&pixels::encode(PixelFormat::Nv12, &swapped, Layout { width: w, height: h, stride: 0 }).unwrap());
    assert!(max_difference(wrong.to_rgb8().as_raw(), original.as_raw()) > 40);

    // GREY is the luma plane, unchanged.
    let grey = ffmpeg(&png, "gray");
    let frame = pixels::encode(PixelFormat::Grey, &grey, Layout { width: w, height: h, stride: 0 }).unwrap();
    assert_eq!(decode(&frame).to_luma8().as_raw(), &grey);

    // MJPEG: a camera's JPEG without its Huffman tables decodes as the full JPEG does once
    // vigil puts the standard tables back; one with its tables is kept as it is.
    let jpeg = ffmpeg(&png, "mjpeg");
    assert_eq!(pixels::encode(PixelFormat::Mjpeg, &jpeg, Layout { width: w, height: h, stride: 0 }).unwrap(), jpeg);
    let stripped = strip_huffman_tables(&jpeg);
    assert!(stripped.len() < jpeg.len(), "the test JPEG had no tables to strip");
    let mut with_trailing = stripped.clone();
    with_trailing.extend_from_slice(&[0; 64]);
    let restored = pixels::mjpeg_to_jpeg(&with_trailing).unwrap();
    assert_eq!(decode(&restored).to_rgb8().as_raw(), decode(&jpeg).to_rgb8().as_raw());
}

/// `jpeg` without its DHT segments, as UVC cameras send it.
fn strip_huffman_tables(jpeg: &[u8]) -> Vec<u8> {
    let mut out = jpeg[..2].to_vec();
    let mut at = 2;
    while jpeg[at + 1] != 0xDA {
        let len = 2 + usize::from(u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]));
        if jpeg[at + 1] != 0xC4 {
            out.extend_from_slice(&jpeg[at..at + len]);
        }
        at += len;
    }
    out.extend_from_slice(&jpeg[at..]);
    out
}

#[test]
fn a_usb_camera_that_is_not_there_is_retried_and_counted_and_the_daemon_serves_on() {
    let plant = Plant::new();
    let cfg = plant.config(&format!(
        "[alerts]\njsonl = \"{}\"\n[[cameras]]\nid = \"usb1\"\nbundle = \"{}\"\nsource = {{ type = \"v4l2\", device = \"/dev/video-vigil-absent\" }}\n{}",
        plant.path("out/alerts.jsonl").display(),
        plant.bundle.display(),
        plant.folder_camera("")
    ));
    let daemon = crate::daemon::Daemon::start(&plant, &cfg);
    let m = wait_for_metrics("usb1's retries", plant.http, |m| {
        metric(m, "vigil_stream_reconnects_total{camera=\"usb1\"}") >= 1.0
    });
    assert!(metric(&m, "vigil_errors_total{kind=\"stream\"}") >= 1.0, "{m}");
    assert_eq!(metric(&m, "vigil_stream_connected{camera=\"usb1\"}"), 0.0, "{m}");
    // The other camera is unaffected.
    plant.drop_frame("a.png", &plant.anomalous);
    plant.wait_frames("cam1", "anomalous", 1.0);
    daemon.stop();
}

/// A real capture device through the v4l2loopback module, fed by ffmpeg. The build machines
/// run a kernel without loadable modules, so this runs only where the module can be loaded:
///   sudo modprobe v4l2loopback devices=1 video_nr=42 exclusive_caps=1
///   cargo test --test tests -- --ignored v4l2loopback
#[test]
#[ignore = "needs the v4l2loopback kernel module (/dev/video42); see the comment above"]
fn v4l2loopback_frames_are_scored() {
    let device = Path::new("/dev/video42");
    assert!(device.exists(), "load v4l2loopback with video_nr=42 first");
    let plant = Plant::new();
    let frames = plant.path("feed/defect.png");
    std::fs::write(&frames, &plant.anomalous).unwrap();
    // ffmpeg writes the defect picture to the device as YUYV, looping, until killed.
    let mut feed = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-re", "-loop", "1", "-i"])
        .arg(&frames)
        .args(["-vf", "scale=64:48", "-pix_fmt", "yuyv422", "-f", "v4l2"])
        .arg(device)
        .spawn()
        .unwrap();
    let broker = Mosquitto::start();
    let sub = Subscriber::new(broker.port, "vigil/#");
    let cfg = plant.config(&format!(
        "{}[[cameras]]\nid = \"usb1\"\nbundle = \"{}\"\nthreshold = {}\nsource = {{ type = \"v4l2\", device = \"{}\" }}\n",
        mqtt_section(broker.port),
        plant.bundle.display(),
        plant.threshold,
        device.display()
    ));
    let daemon = crate::daemon::Daemon::start(&plant, &cfg);
    let alert = sub.wait_for("vigil/box1/usb1/anomaly", 1, WAIT)[0].json();
    assert_eq!(alert["source"], "/dev/video42");
    daemon.stop();
    let _ = feed.kill();
    let _ = feed.wait();
}
