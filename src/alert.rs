//! The alert: the versioned JSON document every sink sends for an anomalous frame, and its
//! id (a ULID that is the same every time the same frame is alerted).
//!
//! `schema/alert.schema.json` is the JSON Schema of this document; docs/mqtt.md shows an example.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The value of `schema` in every alert of this shape.
pub const ALERT_SCHEMA: &str = "vigil.alert/1";

/// An anomaly alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    /// `vigil.alert/1`.
    pub schema: String,
    /// ULID: sortable by frame time, the same for the same frame (camera, source, content).
    pub id: String,
    /// `device_id` of the daemon.
    pub device: String,
    /// Camera id.
    pub camera: String,
    /// The file path or MQTT topic the frame came from.
    pub source: String,
    /// When the frame was taken, RFC 3339 (UTC, milliseconds).
    pub frame_time: String,
    /// When vigil decided, RFC 3339.
    pub detected_at: String,
    /// The raw score.
    pub score: f32,
    /// 0..1, 0.5 at the threshold.
    pub normalized_score: f32,
    /// The threshold in force.
    pub threshold: f32,
    /// The model that scored it.
    pub model: ModelRef,
    /// The anomalous region, when the model has an anomaly map.
    pub region: Option<Region>,
    /// Where the snapshot (frame with heatmap) is.
    pub snapshot: Option<SnapshotRef>,
    /// Anomalous frames of this camera not alerted since the previous alert (cooldown).
    pub suppressed_before: u64,
    /// The id of the trigger message the frame answered (cameras with `trigger`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
}

/// The model in an alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    /// Bundle name.
    pub name: String,
    /// Bundle version.
    pub version: u32,
    /// SHA-256 of `model.onnx`.
    pub sha256: String,
    /// The class the frame was scored as, for a conditional model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
}

/// Where the anomaly map is above the threshold, in frame pixels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// `[x, y, width, height]` of the bounding box in frame pixels.
    pub bbox: [u32; 4],
    /// Share of the scored area above the threshold, 0..1.
    pub area_fraction: f32,
}

/// Where to find the snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRef {
    /// The retained MQTT topic holding the latest snapshot of the camera, when MQTT is on.
    pub topic: Option<String>,
    /// The JPEG file, when snapshots are kept on disk.
    pub file: Option<String>,
}

/// The ULID of a frame's alert: 48 bits of frame time in milliseconds, then 80 bits of
/// SHA-256 over device, camera, source and content, in Crockford base32. The device is in the
/// hash so that boxes sharing camera ids and a frame source (one MQTT frame topic) still
/// raise distinct ids on a shared broker.
pub fn alert_id(frame_time: SystemTime, device: &str, camera: &str, source: &str, content_sha256: &[u8; 32]) -> String {
    let ms = frame_time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64) & ((1 << 48) - 1);
    let mut h = Sha256::new();
    for part in [device.as_bytes(), camera.as_bytes(), source.as_bytes(), content_sha256] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    let digest = h.finalize();
    let mut value: u128 = (ms as u128) << 80;
    for (i, b) in digest[..10].iter().enumerate() {
        value |= (*b as u128) << (72 - 8 * i);
    }
    crockford(value)
}

fn crockford(mut value: u128) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut out = [0u8; 26];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value & 31) as usize];
        value >>= 5;
    }
    String::from_utf8(out.to_vec()).expect("ASCII")
}

/// RFC 3339 in UTC with milliseconds. Never panics: a time the format cannot show (before
/// 1970, where humantime panics, or after 9999, where it errs) is written as the nearest it
/// can; frame times are checked on the way in (`frame::checked_time`), so this is the last
/// line of defence, not the rule.
pub fn rfc3339(t: SystemTime) -> String {
    let last = UNIX_EPOCH + std::time::Duration::from_millis(253_402_300_799_999);
    humantime::format_rfc3339_millis(t.clamp(UNIX_EPOCH, last)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ids_are_stable_sortable_and_distinct() {
        let t = UNIX_EPOCH + Duration::from_millis(1_780_000_000_123);
        let a = alert_id(t, "box1", "cam1", "/x/a.png", &[1; 32]);
        assert_eq!(a.len(), 26);
        assert_eq!(a, alert_id(t, "box1", "cam1", "/x/a.png", &[1; 32]));
        assert_ne!(a, alert_id(t, "box1", "cam2", "/x/a.png", &[1; 32]));
        assert_ne!(a, alert_id(t, "box1", "cam1", "/x/a.png", &[2; 32]));
        assert_ne!(a, alert_id(t, "box2", "cam1", "/x/a.png", &[1; 32]), "another device");
        let later = alert_id(t + Duration::from_millis(1), "box1", "cam1", "/x/a.png", &[1; 32]);
        assert!(later > a);
        // The first 10 characters are the time, as in every ULID.
        assert_eq!(&crockford((1_780_000_000_123u128) << 80)[..10], &a[..10]);
    }

    #[test]
    fn times_out_of_range_are_written_not_panicked_on() {
        assert_eq!(rfc3339(UNIX_EPOCH - Duration::from_secs(1)), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_millis(253_402_300_800_000)), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_millis(1_780_000_000_123)), "2026-05-28T20:26:40.123Z");
    }
}
