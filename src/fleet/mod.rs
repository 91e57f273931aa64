//! Bundles rolled out over MQTT (`[fleet]`): `vigil publish` sends a signed bundle in chunks
//! on `<prefix>/<device>/<camera>/bundle/set`; each box stores the chunks in `state_dir`,
//! checks the key, the signature and the SHA-256, unpacks next to the camera's bundle,
//! test-runs it, swaps it in atomically (the previous one kept for `vigil rollback`), and
//! answers on `bundle/state`. Nothing half-received or failing ever replaces a served bundle.

pub mod package;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{CameraConfig, Config};
use crate::problem::Problems;

/// `[fleet]`: who may roll bundles out to this box.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// Ed25519 public keys (base64, as `vigil keygen` prints them) whose signed bundles this
    /// box installs; a bundle signed by any other key is refused.
    pub trusted_keys: Vec<String>,
    /// Bundles larger than this are refused before anything is stored.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// A transfer with no new chunk for this long is discarded (a publisher that died).
    #[serde(default = "default_transfer_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub transfer_timeout: Duration,
}

fn default_max_bytes() -> u64 {
    512 << 20
}
fn default_transfer_timeout() -> Duration {
    Duration::from_secs(3600)
}

impl FleetConfig {
    /// Checks the values under `fleet`.
    pub fn validate(&self, has_broker: bool, p: &mut Problems) {
        if !has_broker {
            p.add("fleet", "rollout over MQTT needs the [mqtt] broker section");
        }
        if self.trusted_keys.is_empty() {
            p.at("fleet", "trusted_keys", "empty: add the public key `vigil keygen` printed, or remove [fleet]");
        }
        for (i, k) in self.trusted_keys.iter().enumerate() {
            if let Err(e) = package::parse_public_key(k) {
                p.at("fleet", &format!("trusted_keys[{i}]"), e);
            }
        }
        if self.max_bytes == 0 {
            p.at("fleet", "max_bytes", "must be positive");
        }
    }
}

/// The header line before each chunk's bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
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
    /// The Ed25519 signature of the digest and size (base64).
    pub signature: String,
    /// The signer's public key (base64); it must be one of `trusted_keys`.
    pub key: String,
    /// When the publisher began the transfer (Unix milliseconds; 0 from older publishers): a
    /// chunk of a transfer begun before the one in progress, or before the bundle installed
    /// last (redelivered by a broker after a failover, say), is refused rather than let undo
    /// it.
    #[serde(default)]
    pub created: u64,
}

impl Chunk {
    /// The header and the chunk's bytes of one message.
    pub fn parse(payload: &[u8]) -> Result<(Chunk, &[u8]), String> {
        let end =
            payload.iter().position(|&b| b == b'\n').ok_or("no header line: send bundles with `vigil publish`")?;
        let c: Chunk = serde_json::from_slice(&payload[..end]).map_err(|e| format!("the chunk header: {e}"))?;
        let ok_id = (8..=64).contains(&c.transfer.len()) && c.transfer.bytes().all(|b| b.is_ascii_hexdigit());
        let ok_sha = c.sha256.len() == 64 && c.sha256.bytes().all(|b| b.is_ascii_hexdigit());
        if !ok_id || !ok_sha {
            return Err("the transfer id or the sha256 is not hex".into());
        }
        if c.chunk == 0 || c.parts as u64 != c.size.div_ceil(c.chunk).max(1) || c.part >= c.parts {
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

    /// The same bundle and transfer as `other` (everything but the part).
    fn same_transfer(&self, other: &Chunk) -> bool {
        Chunk { part: other.part, ..self.clone() } == *other
    }
}

/// A transfer in progress in `dir` that was begun after `created`, if any.
fn newer_in_progress(dir: &Path, created: u64) -> Option<String> {
    std::fs::read_dir(dir).ok()?.flatten().find_map(|f| {
        let p = f.path();
        if p.extension().is_none_or(|e| e != "json") {
            return None;
        }
        let t: Transfer = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
        (t.header.created > created).then_some(t.header.transfer)
    })
}

/// A transfer being received, as kept beside its bytes.
#[derive(Debug, Serialize, Deserialize)]
struct Transfer {
    header: Chunk,
    received: Vec<bool>,
}

/// What became of a chunk.
#[derive(Debug, PartialEq)]
pub enum Received {
    /// Stored; more to come.
    Stored,
    /// The last chunk: the bundle is in service; the state to publish.
    Installed(serde_json::Value),
    /// A chunk of a transfer already installed (a publisher's retry): nothing to do.
    Done,
}

/// Receives the bundles published to this box's cameras.
pub struct Receiver {
    config: FleetConfig,
    engine: vigil_model::engine::EngineConfig,
    dir: PathBuf,
    cameras: HashMap<String, CameraConfig>,
    /// Per camera, the last transfer refused: its other chunks are dropped without a word.
    refused: Mutex<HashMap<String, String>>,
}

impl Receiver {
    /// The receiver of `config`'s cameras, if `[fleet]` is set; stale transfers are removed.
    pub fn new(config: &Config) -> Option<Receiver> {
        let fleet = config.fleet.clone()?;
        let dir = config.state_dir.join("fleet");
        let r = Receiver {
            config: fleet,
            engine: config.engine.clone(),
            dir,
            cameras: config.cameras.iter().map(|c| (c.id.clone(), c.clone())).collect(),
            refused: Mutex::new(HashMap::new()),
        };
        r.discard_stale();
        Some(r)
    }

    fn discard_stale(&self) {
        let Ok(cameras) = std::fs::read_dir(&self.dir) else { return };
        for entry in cameras.flatten() {
            let Ok(files) = std::fs::read_dir(entry.path()) else { continue };
            for f in files.flatten() {
                let p = f.path();
                let stale = f
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > self.config.transfer_timeout);
                if stale && p.extension().is_some_and(|e| e == "json") {
                    tracing::warn!(
                        "{}: a bundle transfer with no news for {:?} is discarded",
                        p.display(),
                        self.config.transfer_timeout
                    );
                    let _ = std::fs::remove_file(p.with_extension("part"));
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
    }

    /// What the camera serves now, for `bundle/state`.
    pub fn serving(&self, camera: &str) -> Option<serde_json::Value> {
        let c = self.cameras.get(camera)?;
        let b = vigil_model::bundle::Bundle::load(&c.bundle).ok()?;
        Some(serde_json::json!({
            "camera": camera, "name": b.manifest.name, "version": b.manifest.version, "sha256": b.model_sha256,
        }))
    }

    /// Handles one message on `<camera>/bundle/set`: stores the chunk and, with the last one,
    /// checks and installs the bundle. An error names what was wrong; nothing was installed.
    pub fn receive(&self, camera: &str, payload: &[u8]) -> Result<Received, String> {
        let c = self.cameras.get(camera).ok_or_else(|| {
            format!("unknown camera `{}`: this box has {}", camera.escape_default(), self.camera_list())
        })?;
        let (header, data) = Chunk::parse(payload)?;
        let mut refused = self.refused.lock().expect("fleet lock");
        if refused.get(camera) == Some(&header.transfer) {
            return Ok(Received::Done);
        }
        let result = self.store(c, &header, data);
        if result.is_err() {
            refused.insert(camera.to_owned(), header.transfer.clone());
        }
        result
    }

    fn store(&self, c: &CameraConfig, header: &Chunk, data: &[u8]) -> Result<Received, String> {
        let dir = self.dir.join(&c.id);
        // `installed` holds the transfer installed last and when it was begun.
        let installed = std::fs::read_to_string(dir.join("installed")).unwrap_or_default();
        let mut last = installed.split_whitespace();
        let (last_id, last_created) = (last.next(), last.next().and_then(|t| t.parse::<u64>().ok()));
        if last_id == Some(header.transfer.as_str()) {
            return Ok(Received::Done);
        }
        if let Some(last_created) = last_created.filter(|&t| header.created < t) {
            return Err(format!(
                "transfer {} was begun before the bundle installed last (transfer {}, {} ms later): ignored, nothing changed",
                header.transfer,
                last_id.unwrap_or("?"),
                last_created - header.created
            ));
        }
        if header.size > self.config.max_bytes {
            return Err(format!(
                "the bundle has {} bytes, over fleet.max_bytes ({})",
                header.size, self.config.max_bytes
            ));
        }
        let key = package::parse_public_key(&header.key)?;
        if !self.config.trusted_keys.iter().any(|k| package::parse_public_key(k).is_ok_and(|t| t == key)) {
            return Err("signed by a key that is not in fleet.trusted_keys; add its public key there, or sign with a trusted one".into());
        }
        package::verify(&key, &header.sha256, header.size, &header.signature)?;
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let (state_file, part_file) =
            (dir.join(format!("{}.json", header.transfer)), dir.join(format!("{}.part", header.transfer)));
        let mut transfer = match std::fs::read(&state_file) {
            Ok(bytes) => {
                serde_json::from_slice::<Transfer>(&bytes).map_err(|e| format!("{}: {e}", state_file.display()))?
            }
            Err(_) => {
                if let Some(newer) = newer_in_progress(&dir, header.created) {
                    return Err(format!(
                        "transfer {} was begun before transfer {newer}, which is in progress: ignored",
                        header.transfer
                    ));
                }
                // A new transfer: any other one for this camera was given up by its publisher.
                self.discard_all(&dir);
                Transfer { header: header.clone(), received: vec![false; header.parts as usize] }
            }
        };
        if !transfer.header.same_transfer(header) {
            return Err(format!(
                "chunk {} does not belong to transfer {} as begun (other bundle or key)",
                header.part, header.transfer
            ));
        }
        write_at(&part_file, header.part as u64 * header.chunk, data)
            .map_err(|e| format!("{}: {e}", part_file.display()))?;
        transfer.received[header.part as usize] = true;
        let json = serde_json::to_vec(&transfer).expect("transfer state");
        std::fs::write(&state_file, json).map_err(|e| format!("{}: {e}", state_file.display()))?;
        if transfer.received.iter().any(|r| !r) {
            return Ok(Received::Stored);
        }
        let result = self.install(c, header, &part_file);
        let _ = std::fs::remove_file(&part_file);
        let _ = std::fs::remove_file(&state_file);
        let state = result?;
        let _ = std::fs::write(dir.join("installed"), format!("{} {}", header.transfer, header.created));
        Ok(Received::Installed(state))
    }

    fn camera_list(&self) -> String {
        let mut ids: Vec<&str> = self.cameras.keys().map(String::as_str).collect();
        ids.sort();
        ids.join(", ")
    }

    fn discard_all(&self, dir: &Path) {
        for f in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = f.path();
            if p.extension().is_some_and(|e| e == "part" || e == "json") {
                tracing::info!("{}: an unfinished bundle transfer is replaced by a newer one", p.display());
                let _ = std::fs::remove_file(p);
            }
        }
    }

    /// Checks the whole package, unpacks it beside the camera's bundle, test-runs it on the
    /// daemon's engine and swaps it in.
    fn install(&self, camera: &CameraConfig, header: &Chunk, part: &Path) -> Result<serde_json::Value, String> {
        let bytes = std::fs::read(part).map_err(|e| format!("{}: {e}", part.display()))?;
        let sha = package::sha256_hex(&bytes);
        if sha != header.sha256 || bytes.len() as u64 != header.size {
            return Err(format!(
                "the received bundle's SHA-256 is {sha}, not the signed {}: corrupted on the way; publish it again",
                header.sha256
            ));
        }
        let incoming = vigil_model::bundle::install::sibling(&camera.bundle, &format!("incoming-{}", header.transfer));
        let _ = remove_path(&incoming);
        let result = (|| {
            let new = package::unpack(&bytes, &incoming)?;
            if new.is_dir() != camera.bundle.is_dir() {
                return Err(format!(
                    "camera {} serves a bundle {}, the published one is {}: publish the same kind",
                    camera.id,
                    if camera.bundle.is_dir() { "folder" } else { "file" },
                    if new.is_dir() { "a folder" } else { "one file" }
                ));
            }
            let model = crate::scoring::Model::load(&new, &self.engine)
                .map_err(|e| format!("the bundle does not load or run: {e:#}"))?;
            crate::reload::class_fits(camera, &model)?;
            let m = &model.bundle.manifest;
            let state = serde_json::json!({
                "camera": camera.id, "name": m.name, "version": m.version, "sha256": model.bundle.model_sha256,
            });
            drop(model);
            vigil_model::bundle::install::install(&new, &camera.bundle).map_err(|e| e.to_string())?;
            Ok(state)
        })();
        let _ = remove_path(&incoming);
        result
    }
}

fn remove_path(p: &Path) -> std::io::Result<()> {
    if p.is_dir() { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) }
}

fn write_at(path: &Path, offset: u64, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    f.write_all_at(data, offset)?;
    f.sync_data()
}
