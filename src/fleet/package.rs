//! A bundle as one signed byte string for the trip over MQTT: vigil's own small format (a
//! JSON index of plain files, then their bytes) so that unpacking can only ever write plain
//! files inside one new folder; the Ed25519 signature covers a [`Statement`]: the package's
//! SHA-256 and size and everything a box acts on (target, bundle, time, order).

use std::path::{Component, Path};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

const MAGIC: &[u8] = b"vigil-package/1\n";

/// Files in a package, most: a bundle has a graph, a manifest and a few side files.
const MAX_FILES: usize = 64;

/// What a package holds.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Index {
    /// `folder`: a bundle folder; `file`: one `.onnx` with its manifest inside.
    kind: String,
    files: Vec<Entry>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    size: u64,
}

/// Packs the bundle at `bundle` (a folder of plain files, or one `.onnx` file).
pub fn pack(bundle: &Path) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(bundle)
        .map_err(|e| anyhow::anyhow!("{}: {e}; give a bundle folder or .onnx file", bundle.display()))?;
    let mut files = vec![];
    if meta.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(bundle)?.collect::<Result<Vec<_>, _>>()?;
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let name = e.file_name().to_string_lossy().into_owned();
            if !e.file_type()?.is_file() {
                anyhow::bail!("{}: {name} is not a plain file; a bundle folder holds only files", bundle.display());
            }
            files.push((name, std::fs::read(e.path())?));
        }
    } else {
        let name = bundle.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        files.push((name, std::fs::read(bundle)?));
    }
    let index = Index {
        kind: if meta.is_dir() { "folder" } else { "file" }.into(),
        files: files.iter().map(|(name, b)| Entry { name: name.clone(), size: b.len() as u64 }).collect(),
    };
    let mut out = MAGIC.to_vec();
    out.extend(serde_json::to_vec(&index)?);
    out.push(b'\n');
    for (_, b) in files {
        out.extend(b);
    }
    Ok(out)
}

fn plain_name(name: &str) -> bool {
    let mut c = Path::new(name).components();
    matches!((c.next(), c.next()), (Some(Component::Normal(_)), None)) && !name.starts_with('.')
}

/// Unpacks `package` into `dest` (which must not exist): a folder bundle becomes `dest`
/// itself, a one-file bundle `dest/<name>`. Returns the path to load and install.
pub fn unpack(package: &[u8], dest: &Path) -> Result<std::path::PathBuf, String> {
    let rest = package.strip_prefix(MAGIC).ok_or("not a vigil package (bad magic); send it with `vigil publish`")?;
    let end = rest.iter().position(|&b| b == b'\n').ok_or("the package has no index")?;
    let index: Index = serde_json::from_slice(&rest[..end]).map_err(|e| format!("the package's index: {e}"))?;
    let mut data = &rest[end + 1..];
    if index.files.is_empty() || index.files.len() > MAX_FILES {
        return Err(format!("the package holds {} files; a bundle has 1 to {MAX_FILES}", index.files.len()));
    }
    if !matches!(index.kind.as_str(), "folder" | "file") || (index.kind == "file" && index.files.len() != 1) {
        return Err(format!("the package's kind `{}` is not a bundle folder or one file", index.kind.escape_default()));
    }
    let total: u64 = index.files.iter().map(|f| f.size).sum();
    if total != data.len() as u64 {
        return Err(format!("the index names {total} bytes but {} follow", data.len()));
    }
    std::fs::create_dir(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    for f in &index.files {
        if !plain_name(&f.name) {
            return Err(format!("`{}` is not a plain file name", f.name.escape_default()));
        }
        let (bytes, tail) = data.split_at(f.size as usize);
        data = tail;
        let path = dest.join(&f.name);
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(match index.kind.as_str() {
        "file" => dest.join(&index.files[0].name),
        _ => dest.to_path_buf(),
    })
}

/// The format of the signed statement that `vigil publish` of this version writes and boxes
/// of this version accept. Format 1 (signing only the package's SHA-256 and size) is refused:
/// whoever saw one rollout could replay it anywhere, at any time.
pub const FORMAT: u32 = 2;

/// Everything a signature covers: what a box acts on when it takes a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The transfer's id (hex): a replay under another id does not verify.
    pub transfer: String,
    /// When the publisher began the transfer (Unix milliseconds).
    pub created: u64,
    /// The device ids it is for (a glob, as given to `vigil publish --devices`).
    pub devices: String,
    /// The camera it is for.
    pub camera: String,
    /// The bundle's manifest `name`.
    pub name: String,
    /// The bundle's manifest `version`.
    pub version: u32,
    /// The publisher's sequence number for this key: each rollout's is higher than any before.
    pub sequence: u64,
    /// The publisher means to go back to an older bundle version (`vigil publish --rollback`).
    pub rollback: bool,
    /// The package's SHA-256 (hex).
    pub sha256: String,
    /// The package's size in bytes.
    pub size: u64,
    /// Bytes per chunk.
    pub chunk: u64,
}

impl Statement {
    /// The bytes signed: a JSON array in a fixed order, so that no field's text (a glob, a
    /// name) can pass for another field.
    fn bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!([
            format!("vigil-rollout/{FORMAT}"),
            self.transfer,
            self.created,
            self.devices,
            self.camera,
            self.name,
            self.version,
            self.sequence,
            self.rollback,
            self.sha256,
            self.size,
            self.chunk,
        ]))
        .expect("a statement serialises")
    }
}

/// A signing key read from a `vigil keygen` file (its 32-byte seed in base64).
pub fn read_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}; make a key with `vigil keygen --out FILE`", path.display()))?;
    let seed: [u8; 32] = B64
        .decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| anyhow::anyhow!("{}: not a vigil signing key (32 bytes in base64)", path.display()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// A public key as written in `[fleet] trusted_keys` (32 bytes in base64).
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = B64
        .decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("not an Ed25519 public key (32 bytes in base64, as `vigil keygen` prints it)")?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not a valid Ed25519 public key: {e}"))
}

/// A public key in the form `trusted_keys` takes.
pub fn public_key_text(key: &VerifyingKey) -> String {
    B64.encode(key.to_bytes())
}

/// The signature (base64) of a statement.
pub fn sign(key: &SigningKey, statement: &Statement) -> String {
    B64.encode(key.sign(&statement.bytes()).to_bytes())
}

/// Whether `signature` (base64) by `key` covers exactly this statement.
pub fn verify(key: &VerifyingKey, statement: &Statement, signature: &str) -> Result<(), String> {
    let bytes: [u8; 64] =
        B64.decode(signature).ok().and_then(|b| b.try_into().ok()).ok_or("the signature is not 64 bytes in base64")?;
    key.verify(&statement.bytes(), &ed25519_dalek::Signature::from_bytes(&bytes)).map_err(|_| {
        "the signature does not match the rollout (its bundle, target, time or sequence was changed, or another key signed it)"
            .to_owned()
    })
}

/// The SHA-256 (hex) of a bundle as installed: for a folder, each file's name, size and bytes
/// in name order; for a one-file bundle, its bytes. It tells, after a crash, whether the
/// served path holds the bundle an install was putting in.
pub fn fingerprint(bundle: &Path) -> std::io::Result<String> {
    fn feed(path: &Path, hash: &mut Sha256) -> std::io::Result<()> {
        let mut f = std::fs::File::open(path)?;
        std::io::copy(&mut f, hash)?;
        Ok(())
    }
    let mut hash = Sha256::new();
    if std::fs::symlink_metadata(bundle)?.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(bundle)?.collect::<Result<Vec<_>, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            hash.update(name.as_encoded_bytes());
            hash.update(e.metadata()?.len().to_le_bytes());
            if e.file_type()?.is_file() {
                feed(&e.path(), &mut hash)?;
            }
        }
    } else {
        feed(bundle, &mut hash)?;
    }
    Ok(vigil_model::digest::hex(&hash.finalize()))
}

/// A new signing key from the system's random source.
pub fn generate() -> anyhow::Result<SigningKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("the system's random source: {e}"))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The seed of `key` as a key file holds it.
pub fn signing_key_text(key: &SigningKey) -> String {
    B64.encode(key.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_package_unpacks_to_the_same_files_and_refuses_what_is_not_plain() {
        let dir = tempfile::tempdir().unwrap();
        let b = dir.path().join("b");
        std::fs::create_dir(&b).unwrap();
        std::fs::write(b.join("model.onnx"), b"graph").unwrap();
        std::fs::write(b.join("manifest.json"), b"{}").unwrap();
        let p = pack(&b).unwrap();
        let out = unpack(&p, &dir.path().join("u")).unwrap();
        assert_eq!(std::fs::read(out.join("model.onnx")).unwrap(), b"graph");
        assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), b"{}");

        let evil = [MAGIC, br#"{"kind":"folder","files":[{"name":"../x","size":1}]}"#, b"\nx"].concat();
        assert!(unpack(&evil, &dir.path().join("e")).unwrap_err().contains("plain file name"));
        assert!(!dir.path().join("x").exists());
        let short = [MAGIC, br#"{"kind":"folder","files":[{"name":"a","size":9}]}"#, b"\nx"].concat();
        assert!(unpack(&short, &dir.path().join("s")).unwrap_err().contains("9 bytes but 1"));
        assert!(unpack(b"PK\x03\x04", &dir.path().join("z")).unwrap_err().contains("bad magic"));
    }

    fn statement() -> Statement {
        Statement {
            transfer: "0123456789abcdef".into(),
            created: 1_750_000_000_000,
            devices: "line1-*".into(),
            camera: "cam1".into(),
            name: "surface".into(),
            version: 3,
            sequence: 7,
            rollback: false,
            sha256: vigil_model::digest::sha256_hex(b"bundle"),
            size: 6,
            chunk: 262_144,
        }
    }

    #[test]
    fn a_signature_holds_only_for_the_whole_statement_and_its_key() {
        let key = generate().unwrap();
        let other = generate().unwrap();
        let s = statement();
        let sig = sign(&key, &s);
        let public = parse_public_key(&public_key_text(&key.verifying_key())).unwrap();
        assert_eq!(verify(&public, &s, &sig), Ok(()));
        // Each field a box acts on is covered: changing any one breaks the signature.
        let changed: [fn(&mut Statement); 11] = [
            |s| s.transfer = "0123456789abcdee".into(),
            |s| s.created = u64::MAX,
            |s| s.devices = "*".into(),
            |s| s.camera = "cam2".into(),
            |s| s.name = "other".into(),
            |s| s.version = 2,
            |s| s.sequence = 8,
            |s| s.rollback = true,
            |s| s.sha256 = vigil_model::digest::sha256_hex(b"bundlf"),
            |s| s.size = 7,
            |s| s.chunk = 65_536,
        ];
        for change in changed {
            let mut t = s.clone();
            change(&mut t);
            assert!(verify(&public, &t, &sig).unwrap_err().contains("does not match"), "{t:?}");
        }
        // A text field cannot pass for its neighbour.
        let mut shifted = s.clone();
        (shifted.devices, shifted.camera) = ("line1-*\",cam1".into(), String::new());
        assert!(verify(&public, &shifted, &sig).is_err());
        assert!(verify(&other.verifying_key(), &s, &sig).is_err());
        assert!(parse_public_key("abc").is_err());
    }

    #[test]
    fn a_fingerprint_tells_bundles_apart_by_names_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        for d in [&a, &b] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("model.onnx"), b"graph").unwrap();
            std::fs::write(d.join("manifest.json"), b"{}").unwrap();
        }
        assert_eq!(fingerprint(&a).unwrap(), fingerprint(&b).unwrap());
        std::fs::write(b.join("manifest.json"), b"{ }").unwrap();
        assert_ne!(fingerprint(&a).unwrap(), fingerprint(&b).unwrap());
        std::fs::rename(b.join("manifest.json"), b.join("notes.json")).unwrap();
        std::fs::write(b.join("notes.json"), b"{}").unwrap();
        assert_ne!(fingerprint(&a).unwrap(), fingerprint(&b).unwrap());
    }
}
