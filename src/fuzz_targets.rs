//! What the fuzzers in `fuzz/` exercise, one function per target, shared with the test that
//! replays their corpora and crashers in CI: each must return (any `Result`), never panic,
//! for every input.

use crate::source::mqtt::{MqttCamera, parse};
use crate::source::mqtt::{MqttSource, PayloadFormat};
use vigil_model::bundle::manifest::{ColorMode, InputSpec, ResizeMode, Tiling};
use vigil_model::preprocess::Preprocessor;

/// Frame decoding and preprocessing: the bytes as a camera file, into each kind of model
/// input (gray, RGB centre-cropped, tiled).
pub fn decode(data: &[u8]) {
    let Ok(img) = vigil_model::preprocess::decode(data) else { return };
    let gray = InputSpec::unit_range("x", ColorMode::Gray, 32, 32);
    let _ = Preprocessor::new(&gray).tensor(&img);
    let mut rgb = InputSpec::unit_range("x", ColorMode::Rgb, 16, 24);
    rgb.resize_mode = ResizeMode::CenterCrop;
    let _ = Preprocessor::new(&rgb).tensor(&img);
    let mut tiled = InputSpec::unit_range("x", ColorMode::Gray, 16, 16);
    tiled.tiling = Some(Tiling { overlap: 4, max_side: Some(64) });
    let _ = Preprocessor::new(&tiled).inputs(&img);
}

/// An MQTT frame message: the first line is the topic, the rest the payload; the first byte
/// picks raw or JSON payloads.
pub fn mqtt_payload(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else { return };
    let split = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
    let topic = String::from_utf8_lossy(&rest[..split]);
    let payload = rest.get(split + 1..).unwrap_or_default();
    let source = MqttSource {
        topic: "factory/+/camera/+/frame".into(),
        payload: if mode & 1 == 0 { PayloadFormat::Raw } else { PayloadFormat::Json },
        camera_from_topic: (mode & 2 != 0).then_some(3),
        image_field: "image".into(),
        camera_field: (mode & 4 != 0).then(|| "camera".into()),
        time_field: (mode & 8 != 0).then(|| "time".into()),
        class_field: (mode & 16 != 0).then(|| "class".into()),
        class_from_topic: (mode & 32 != 0).then_some(1),
        max_bytes: 1 << 16,
        max_cameras: 64,
    };
    let cameras = [MqttCamera { slot: 0, id: "cam".into(), class: None, config: source }];
    let _ = parse(&cameras, &topic, payload);
}

/// A USB camera's buffer: the first byte picks the pixel format (low two bits) and the line
/// padding (the rest), the next two the frame's width and height (1 to 64); the rest is the
/// buffer. What comes out is decoded as a frame would be.
pub fn camera_buffer(data: &[u8]) {
    use crate::source::pixels::{Layout, PixelFormat, encode};
    let [mode, w, h, buf @ ..] = data else { return };
    let format = PixelFormat::PREFERRED[usize::from(mode & 3)];
    let (width, height) = (u32::from(w % 64) + 1, u32::from(h % 64) + 1);
    let pad = u32::from(mode >> 2);
    let line = if format == PixelFormat::Yuyv { width * 2 } else { width };
    let layout = Layout { width, height, stride: if pad == 0 { 0 } else { line + pad } };
    if let Ok(frame) = encode(format, buf, layout) {
        let _ = vigil_model::preprocess::decode(&frame);
    }
}

/// A `vigil.toml`: parsed, then validated.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let (Some(c), _) = crate::config::parse_str(text) {
        let _ = c.validate();
    }
}

/// A bundle's `manifest.json`: parsed and validated.
pub fn manifest(data: &[u8]) {
    let _ = vigil_model::bundle::parse_manifest(data, "fuzz");
}
