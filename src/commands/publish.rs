//! `vigil publish` and `vigil keygen`: roll a signed bundle out to the boxes whose device id
//! matches a pattern, over the broker they share, and wait for each box's answer on
//! `bundle/state`. Each rollout is signed with the next number of the key's sequence (kept in
//! `<key>.seq` beside the key file), by which the boxes order rollouts and refuse replays.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rumqttc::{AsyncClient, Event, Packet, QoS};

use crate::fleet::{Chunk, package};
use crate::mqtt::MqttConfig;

/// Bytes per message: far under any broker's packet limit, few enough messages for
/// Mosquitto's queue of an offline box (1,000 by default) up to 250 MB.
pub const CHUNK: u64 = 256 * 1024;

/// What to publish where.
#[derive(Debug, Clone)]
pub struct Publish {
    /// The bundle folder or `.onnx` file.
    pub bundle: PathBuf,
    /// The broker (host, port, TLS, credentials).
    pub mqtt: MqttConfig,
    /// `mqtt.topic_prefix` of the boxes.
    pub prefix: String,
    /// Device ids to publish to: a glob (`line1-*`).
    pub devices: String,
    /// The camera on each box.
    pub camera: String,
    /// The signing key file (`vigil keygen`).
    pub key: PathBuf,
    /// How long to listen for the boxes' retained availability.
    pub discover: Duration,
    /// How long to wait for the boxes' answers.
    pub wait: Duration,
    /// Signed as a rollback: the boxes take a bundle version older than the one rolled out
    /// last (without it they refuse it as a downgrade).
    pub rollback: bool,
}

/// One box's answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    /// The box.
    pub device: String,
    /// Its availability when the rollout began (`online`, `offline`, `stopped`).
    pub available: String,
    /// Installed.
    pub ok: bool,
    /// The rollout's sequence number (the same for every box of one publish).
    pub sequence: u64,
    /// The box's `bundle/state`, or why there is none.
    pub state: serde_json::Value,
}

/// The broker of `--mqtt`: `mqtt://host[:port]` or `host[:port]`, in plain MQTT; TLS and
/// credentials come from a config file's `[mqtt]` (`--config`).
pub fn broker(url: &str) -> anyhow::Result<MqttConfig> {
    let rest = match url.split_once("://") {
        Some(("mqtt", r)) => r,
        Some(("mqtts", _)) => {
            anyhow::bail!("--mqtt {url}: for TLS give --config with a vigil.toml whose [mqtt.tls] names the CA")
        }
        Some((s, _)) => anyhow::bail!("--mqtt {url}: scheme `{s}` is not mqtt://"),
        None => url,
    };
    let (host, port) = match rest.trim_end_matches('/').rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse::<u16>().with_context(|| format!("--mqtt {url}: bad port `{p}`"))?)),
        None => (rest.trim_end_matches('/'), None),
    };
    anyhow::ensure!(!host.is_empty(), "--mqtt {url}: no host; give e.g. mqtt://broker.local:1883");
    Ok(serde_json::from_value(serde_json::json!({ "host": host, "port": port, "plaintext": true }))?)
}

/// What one rollout says besides the package itself; all of it is signed.
#[derive(Debug, Clone)]
pub struct Rollout {
    /// The transfer's id (hex).
    pub transfer: String,
    /// When the transfer began (Unix milliseconds).
    pub created: u64,
    /// The device ids it is for (a glob).
    pub devices: String,
    /// The camera on each box.
    pub camera: String,
    /// The bundle's manifest `name`.
    pub name: String,
    /// The bundle's manifest `version`.
    pub version: u32,
    /// The key's sequence number for this rollout ([`next_sequence`]).
    pub sequence: u64,
    /// Signed as a rollback to an older version.
    pub rollback: bool,
}

/// The messages of one rollout: the chunks, each with its header.
pub fn messages(package: &[u8], key: &ed25519_dalek::SigningKey, r: &Rollout) -> Vec<Vec<u8>> {
    let size = package.len() as u64;
    let statement = package::Statement {
        transfer: r.transfer.clone(),
        created: r.created,
        devices: r.devices.clone(),
        camera: r.camera.clone(),
        name: r.name.clone(),
        version: r.version,
        sequence: r.sequence,
        rollback: r.rollback,
        sha256: vigil_model::digest::sha256_hex(package),
        size,
        chunk: CHUNK,
    };
    let signature = package::sign(key, &statement);
    let parts = size.div_ceil(CHUNK).max(1);
    (0..parts)
        .map(|i| {
            let header = Chunk {
                format: package::FORMAT,
                transfer: r.transfer.clone(),
                part: i as u32,
                parts: parts as u32,
                chunk: CHUNK,
                size,
                sha256: statement.sha256.clone(),
                signature: signature.clone(),
                key: package::public_key_text(&key.verifying_key()),
                created: r.created,
                devices: r.devices.clone(),
                camera: r.camera.clone(),
                name: r.name.clone(),
                version: r.version,
                sequence: r.sequence,
                rollback: r.rollback,
            };
            let start = (i * CHUNK) as usize;
            let end = ((i + 1) * CHUNK).min(size) as usize;
            let mut m = serde_json::to_vec(&header).expect("header");
            m.push(b'\n');
            m.extend_from_slice(&package[start..end]);
            m
        })
        .collect()
}

/// `<key>.seq`: the last sequence number signed with the key at `key`.
pub fn sequence_path(key: &Path) -> PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push(".seq");
    PathBuf::from(p)
}

/// Takes the key's next sequence number: above the last one recorded in `<key>.seq` and at
/// least the time now in Unix milliseconds, so that a lost or older `.seq` (the key copied
/// to another machine) still gives a number above every earlier rollout's while the
/// publisher's clock is right. It is recorded (durably, under a lock against a concurrent
/// `vigil publish` with the same key) before anything is sent, so no number is used twice.
pub fn next_sequence(key: &Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let path = sequence_path(key);
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .with_context(|| {
            format!(
                "{}: the key's rollout sequence is kept beside the key; make its folder writable",
                PathBuf::from(&lock_path).display()
            )
        })?;
    // SAFETY: flock on a file descriptor this function owns; released when `lock` closes.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        anyhow::bail!("{}: locking: {}", PathBuf::from(&lock_path).display(), std::io::Error::last_os_error());
    }
    let last = match std::fs::read_to_string(&path) {
        Ok(t) => t.trim().parse::<u64>().with_context(|| {
            format!("{}: not a sequence number; it holds the last one signed with {}", path.display(), key.display())
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e).with_context(|| path.display().to_string()),
    };
    let next = last.checked_add(1).context("the sequence is exhausted")?.max(crate::fleet::now_ms());
    vigil_model::fsio::write_atomic(&path, format!("{next}\n").as_bytes())
        .with_context(|| format!("{}: recording the rollout sequence", path.display()))?;
    drop(lock);
    Ok(next)
}

/// The manifest's name and version of the bundle at `bundle` (the manifest only: whether the
/// model loads and runs is the boxes' test).
pub fn identity(bundle: &Path) -> anyhow::Result<(String, u32)> {
    let manifest = bundle.join(vigil_model::bundle::MANIFEST_FILE);
    let m = if bundle.is_dir() && manifest.is_file() {
        vigil_model::bundle::parse_manifest(&std::fs::read(&manifest)?, &manifest.display().to_string())?
    } else {
        vigil_model::bundle::Bundle::load(bundle)?.manifest
    };
    Ok((m.name, m.version))
}

/// Publishes the bundle to every matching box and waits for their answers.
pub async fn run(p: &Publish) -> anyhow::Result<Vec<Outcome>> {
    let key = package::read_signing_key(&p.key)?;
    let package = package::pack(&p.bundle)?;
    let (name, version) =
        identity(&p.bundle).with_context(|| format!("{}: reading its manifest", p.bundle.display()))?;
    let mut id = [0u8; 8];
    getrandom::fill(&mut id).map_err(|e| anyhow::anyhow!("the system's random source: {e}"))?;
    let transfer: String = vigil_model::digest::hex(&id);
    let matcher = globset::Glob::new(&p.devices)
        .with_context(|| format!("--devices `{}`: not a glob such as line1-*", p.devices))?
        .compile_matcher();

    let prefix = p.prefix.trim_end_matches('/');
    let client_id = format!("vigil-publish-{transfer}");
    let mut opts = crate::mqtt::options(&p.mqtt, &client_id)?;
    opts.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Vec<u8>)>();
    let (err_tx, mut err_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let poller = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(m))) => {
                    let _ = tx.send((m.topic.clone(), m.payload.to_vec()));
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = err_tx.send(e.to_string());
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });
    client.subscribe(format!("{prefix}/+/available"), QoS::AtLeastOnce).await?;
    client.subscribe(format!("{prefix}/+/{}/bundle/state", p.camera), QoS::AtLeastOnce).await?;

    // The boxes announce themselves with a retained `available`.
    let mut available: BTreeMap<String, String> = BTreeMap::new();
    let mut states: Vec<(String, Vec<u8>)> = vec![];
    let until = tokio::time::Instant::now() + p.discover;
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some((topic, payload)) => note(prefix, topic, payload, &mut available, &mut states),
                None => break,
            },
            Some(e) = err_rx.recv() => {
                poller.abort();
                anyhow::bail!("the broker {}:{}: {e}", p.mqtt.host, p.mqtt.effective_port());
            }
            _ = tokio::time::sleep_until(until) => break,
        }
    }
    let targets: Vec<String> = available.keys().filter(|d| matcher.is_match(d.as_str())).cloned().collect();
    if targets.is_empty() {
        poller.abort();
        anyhow::bail!(
            "no box matching `{}` announced itself on {prefix}/+/available within {:?}; boxes seen: {}",
            p.devices,
            p.discover,
            if available.is_empty() {
                "none (check --mqtt and --prefix)".into()
            } else {
                available.keys().cloned().collect::<Vec<_>>().join(", ")
            }
        );
    }
    let rollout = Rollout {
        transfer: transfer.clone(),
        created: crate::fleet::now_ms(),
        devices: p.devices.clone(),
        camera: p.camera.clone(),
        name,
        version,
        sequence: next_sequence(&p.key)?,
        rollback: p.rollback,
    };
    let messages = messages(&package, &key, &rollout);
    for device in &targets {
        let topic = format!("{prefix}/{device}/{}/bundle/set", p.camera);
        for m in &messages {
            client.publish(topic.clone(), QoS::AtLeastOnce, false, m.clone()).await?;
        }
    }

    // Each box answers once the last chunk is in: installed, or refused with the reason.
    let mut answers: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let waiting: BTreeSet<&String> = targets.iter().collect();
    let until = tokio::time::Instant::now() + p.wait;
    let take = |states: &mut Vec<(String, Vec<u8>)>, answers: &mut BTreeMap<String, serde_json::Value>| {
        for (device, payload) in states.drain(..) {
            let Ok(state) = serde_json::from_slice::<serde_json::Value>(&payload) else { continue };
            if state["transfer"] == transfer.as_str() && waiting.contains(&device) {
                answers.insert(device, state);
            }
        }
    };
    take(&mut states, &mut answers);
    while answers.len() < targets.len() {
        tokio::select! {
            m = rx.recv() => match m {
                Some((topic, payload)) => note(prefix, topic, payload, &mut available, &mut states),
                None => break,
            },
            _ = tokio::time::sleep_until(until) => break,
        }
        take(&mut states, &mut answers);
    }
    let _ = client.disconnect().await;
    poller.abort();
    Ok(targets
        .iter()
        .map(|device| {
            let was = available.get(device).cloned().unwrap_or_default();
            match answers.remove(device) {
                Some(state) => Outcome {
                    device: device.clone(),
                    available: was,
                    ok: state["ok"] == true,
                    sequence: rollout.sequence,
                    state,
                },
                None => Outcome {
                    device: device.clone(),
                    ok: false,
                    sequence: rollout.sequence,
                    state: serde_json::json!({ "error": format!(
                        "no answer within {:?}{}",
                        p.wait,
                        if was == "online" { "" } else { "; the box is not online: it installs the bundle when it connects again" }
                    ) }),
                    available: was,
                },
            }
        })
        .collect())
}

fn note(
    prefix: &str,
    topic: String,
    payload: Vec<u8>,
    available: &mut BTreeMap<String, String>,
    states: &mut Vec<(String, Vec<u8>)>,
) {
    let Some(rest) = topic.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) else { return };
    let mut levels = rest.splitn(2, '/');
    let (Some(device), Some(leaf)) = (levels.next(), levels.next()) else { return };
    if leaf == "available" {
        available.insert(device.to_owned(), String::from_utf8_lossy(&payload).into_owned());
    } else if leaf.ends_with("/bundle/state") {
        states.push((device.to_owned(), payload));
    }
}

/// Writes a new signing key to `out` (readable by its owner only) and its public key to
/// `out.pub`; returns the public key, for `[fleet] trusted_keys`.
pub fn keygen(out: &Path) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = package::generate()?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("{}: cannot create it (it must not exist yet)", out.display()))?;
    writeln!(f, "{}", package::signing_key_text(&key))?;
    let public = package::public_key_text(&key.verifying_key());
    let mut pub_path = out.as_os_str().to_owned();
    pub_path.push(".pub");
    std::fs::write(&pub_path, format!("{public}\n"))?;
    Ok(public)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_name_host_port_and_tls() {
        let b = broker("mqtt://broker.local:1884").unwrap();
        assert_eq!((b.host.as_str(), b.effective_port()), ("broker.local", 1884));
        assert_eq!(broker("10.0.0.5").unwrap().effective_port(), 1883);
        assert!(broker("mqtts://b").unwrap_err().to_string().contains("[mqtt.tls]"));
        assert!(broker("http://b").unwrap_err().to_string().contains("scheme"));
        assert!(broker("mqtt://b:x").unwrap_err().to_string().contains("bad port"));
    }

    fn rollout() -> Rollout {
        Rollout {
            transfer: "0123456789abcdef".into(),
            created: crate::fleet::now_ms(),
            devices: "line1-*".into(),
            camera: "cam1".into(),
            name: "surface".into(),
            version: 2,
            sequence: 5,
            rollback: false,
        }
    }

    #[test]
    fn every_chunk_parses_and_they_cover_the_package() {
        let key = package::generate().unwrap();
        let package: Vec<u8> = (0..(CHUNK * 2 + 10)).map(|i| i as u8).collect();
        let m = messages(&package, &key, &rollout());
        assert_eq!(m.len(), 3);
        let mut joined = vec![];
        for (i, msg) in m.iter().enumerate() {
            let (h, data) = Chunk::parse(msg).unwrap();
            assert_eq!(h.part as usize, i);
            let public = key.verifying_key();
            assert_eq!(package::verify(&public, &h.statement(), &h.signature), Ok(()));
            assert_eq!((h.format, h.sequence, h.camera.as_str()), (package::FORMAT, 5, "cam1"));
            joined.extend_from_slice(data);
        }
        assert_eq!(joined, package);
    }

    #[test]
    fn sequences_only_grow_even_when_the_sequence_file_is_lost_or_behind() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("fleet.key");
        let first = next_sequence(&key).unwrap();
        assert!(first >= crate::fleet::now_ms() - 1000, "at least the time: {first}");
        let second = next_sequence(&key).unwrap();
        assert!(second > first);
        assert_eq!(std::fs::read_to_string(sequence_path(&key)).unwrap().trim(), second.to_string());
        // Far ahead (a clock that once ran fast): the next is still one more.
        std::fs::write(sequence_path(&key), format!("{}\n", u64::MAX / 2)).unwrap();
        assert_eq!(next_sequence(&key).unwrap(), u64::MAX / 2 + 1);
        // Lost (the key copied to another machine): the clock keeps it above the last ones,
        // which were taken at most one per millisecond of it (two taken within the same
        // millisecond just above made this test flaky, not the rule wrong: rollouts are
        // published far apart).
        std::thread::sleep(std::time::Duration::from_millis(3));
        std::fs::remove_file(sequence_path(&key)).unwrap();
        assert!(next_sequence(&key).unwrap() > second);
        std::fs::write(sequence_path(&key), "x").unwrap();
        assert!(next_sequence(&key).unwrap_err().to_string().contains("not a sequence number"));
        // Concurrent publishers with one key never share a number.
        std::fs::remove_file(sequence_path(&key)).unwrap();
        let taken: Vec<u64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8).map(|_| s.spawn(|| next_sequence(&key).unwrap())).collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut unique = taken.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), taken.len(), "{taken:?}");
    }
}
