//! The header before each chunk of a rollout: its fields, its bounds, and whether a transfer's
//! time can be believed.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::package;

/// Smallest chunk a header may declare (only a transfer's last chunk is shorter): with 1-byte
/// chunks each byte would be a message, an acknowledgement and a disk write.
pub const MIN_CHUNK: u64 = 64 << 10;
/// Largest chunk: far under brokers' packet limits.
pub const MAX_CHUNK: u64 = 16 << 20;
/// Most chunks in one transfer (4 GiB at `vigil publish`'s 256 KiB).
pub const MAX_PARTS: u64 = 16_384;
/// How far in this box's future a transfer's `created` may be (the two clocks differ).
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// A clock before this (2025-01-01, Unix ms) has not been set: a board without a real-time
/// clock starts in 1970 until NTP answers.
pub const CLOCK_FLOOR_MS: u64 = 1_735_689_600_000;

/// The header line before each chunk's bytes. Everything but `part`, `signature` and `key`
/// is signed (the [`package::Statement`]); `key` is checked against `trusted_keys`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    /// The statement's format: [`package::FORMAT`]. Headers of older publishers have none
    /// (format 1, whose signature covered only the package's SHA-256 and size).
    #[serde(default = "format_1")]
    pub format: u32,
    /// The transfer's id (hex), the same on every chunk of one bundle.
    pub transfer: String,
    /// This chunk's index.
    pub part: u32,
    /// How many chunks.
    pub parts: u32,
    /// Bytes per chunk (the last may be shorter).
    pub chunk: u64,
    /// The package's size.
    pub size: u64,
    /// The package's SHA-256 (hex).
    pub sha256: String,
    /// The Ed25519 signature of the statement (base64).
    pub signature: String,
    /// The signer's public key (base64); it must be one of `trusted_keys`.
    pub key: String,
    /// When the publisher began the transfer (Unix milliseconds).
    #[serde(default)]
    pub created: u64,
    /// The device ids the rollout is for (a glob).
    #[serde(default)]
    pub devices: String,
    /// The camera it is for.
    #[serde(default)]
    pub camera: String,
    /// The bundle's manifest `name`.
    #[serde(default)]
    pub name: String,
    /// The bundle's manifest `version`.
    #[serde(default)]
    pub version: u32,
    /// The publisher's sequence number for its key: rollouts are ordered by it.
    #[serde(default)]
    pub sequence: u64,
    /// Signed as a rollback: an older bundle version than the one rolled out last is meant.
    #[serde(default)]
    pub rollback: bool,
}

fn format_1() -> u32 {
    1
}

fn kib(bytes: u64) -> String {
    format!("{} KiB", bytes >> 10)
}

impl Chunk {
    /// The header and the chunk's bytes of one message, with the sizes checked against the
    /// limits ([`MIN_CHUNK`], [`MAX_CHUNK`], [`MAX_PARTS`]).
    pub fn parse(payload: &[u8]) -> Result<(Chunk, &[u8]), String> {
        let end =
            payload.iter().position(|&b| b == b'\n').ok_or("no header line: send bundles with `vigil publish`")?;
        let c: Chunk = serde_json::from_slice(&payload[..end]).map_err(|e| format!("the chunk header: {e}"))?;
        let ok_id = (8..=64).contains(&c.transfer.len()) && c.transfer.bytes().all(|b| b.is_ascii_hexdigit());
        let ok_sha = c.sha256.len() == 64 && c.sha256.bytes().all(|b| b.is_ascii_hexdigit());
        if !ok_id || !ok_sha {
            return Err("the transfer id or the sha256 is not hex".into());
        }
        if c.chunk < MIN_CHUNK {
            return Err(format!(
                "chunks of {} bytes: under the minimum of {} (only a transfer's last chunk may be shorter); publish with `vigil publish`",
                c.chunk,
                kib(MIN_CHUNK)
            ));
        }
        if c.chunk > MAX_CHUNK {
            return Err(format!("chunks of {} bytes: over the maximum of {}", c.chunk, kib(MAX_CHUNK)));
        }
        if c.size == 0 {
            return Err("an empty package: there is no bundle in it".into());
        }
        let parts = c.size.div_ceil(c.chunk);
        if parts > MAX_PARTS {
            return Err(format!(
                "a package of {} bytes in chunks of {} is {parts} chunks, over the limit of {MAX_PARTS}",
                c.size, c.chunk
            ));
        }
        if c.parts as u64 != parts || c.part >= c.parts {
            return Err(format!(
                "chunk {} of {} does not fit a size of {} in chunks of {}",
                c.part, c.parts, c.size, c.chunk
            ));
        }
        let data = &payload[end + 1..];
        let want = c.chunk.min(c.size - c.part as u64 * c.chunk);
        if data.len() as u64 != want {
            return Err(format!("chunk {} has {} bytes, its header says {want}", c.part, data.len()));
        }
        Ok((c, data))
    }

    /// What the signature must cover.
    pub fn statement(&self) -> package::Statement {
        package::Statement {
            transfer: self.transfer.clone(),
            created: self.created,
            devices: self.devices.clone(),
            camera: self.camera.clone(),
            name: self.name.clone(),
            version: self.version,
            sequence: self.sequence,
            rollback: self.rollback,
            sha256: self.sha256.clone(),
            size: self.size,
            chunk: self.chunk,
        }
    }

    /// The same bundle and transfer as `other` (everything but the part).
    pub(super) fn same_transfer(&self, other: &Chunk) -> bool {
        Chunk { part: other.part, ..self.clone() } == *other
    }
}

/// Unix milliseconds now (0 for a clock before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Whether a transfer begun at `created` can be taken at `now` (both Unix ms): not from the
/// future beyond [`CLOCK_SKEW`], and not before this box's clock is set.
pub fn check_time(created: u64, now: u64) -> Result<(), String> {
    // humantime cannot print a year past 9999 (its `to_string` panics): such times by number.
    const YEAR_10000_MS: u64 = 253_402_300_800_000;
    let show = |ms: u64| match ms {
        ..YEAR_10000_MS => {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        _ => format!("{ms} ms after 1970, past the year 9999"),
    };
    if now < CLOCK_FLOOR_MS {
        return Err(format!(
            "this box's clock is not set (it reads {}): a rollout's time cannot be checked until it is; set the clock (NTP, or a real-time clock) and publish again",
            show(now)
        ));
    }
    let skew = CLOCK_SKEW.as_millis() as u64;
    if created > now.saturating_add(skew) {
        return Err(format!(
            "the transfer says it was begun at {}, later than this box's clock ({}) plus {}s: a forged time, or a publisher's clock that is wrong; check both clocks",
            show(created),
            show(now),
            CLOCK_SKEW.as_secs()
        ));
    }
    Ok(())
}
