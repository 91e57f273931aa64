//! Camera buffers to encoded frames: the pixel formats USB (V4L2) cameras deliver (YUYV,
//! NV12, GREY, MJPEG), as pure functions over a buffer, so they are tested on real buffers
//! without a device.

use super::camera::{check_size, encode_png};

/// A pixel format vigil reads from a V4L2 device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PixelFormat {
    /// 8-bit luma only (monochrome industrial cameras).
    Grey,
    /// Packed 4:2:2 YUV, the uncompressed format of nearly every UVC webcam.
    Yuyv,
    /// 4:2:0 YUV: a luma plane, then interleaved U/V.
    Nv12,
    /// Motion JPEG: each buffer a JPEG, often without its Huffman tables.
    Mjpeg,
}

impl PixelFormat {
    /// In the order vigil prefers them: uncompressed first (the picture scored is the sensor's,
    /// not a JPEG's), monochrome before colour (a mono sensor's native format).
    pub const PREFERRED: [PixelFormat; 4] =
        [PixelFormat::Grey, PixelFormat::Yuyv, PixelFormat::Nv12, PixelFormat::Mjpeg];

    /// The V4L2 four-character code.
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            PixelFormat::Grey => *b"GREY",
            PixelFormat::Yuyv => *b"YUYV",
            PixelFormat::Nv12 => *b"NV12",
            PixelFormat::Mjpeg => *b"MJPG",
        }
    }

    /// The format of a four-character code, if vigil reads it (`JPEG` is read as MJPEG).
    pub fn from_fourcc(code: [u8; 4]) -> Option<PixelFormat> {
        match &code {
            b"GREY" => Some(PixelFormat::Grey),
            b"YUYV" => Some(PixelFormat::Yuyv),
            b"NV12" => Some(PixelFormat::Nv12),
            b"MJPG" | b"JPEG" => Some(PixelFormat::Mjpeg),
            _ => None,
        }
    }
}

/// A buffer's layout: its size and the bytes per line of its first plane (drivers pad lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Pixels per line.
    pub width: u32,
    /// Lines.
    pub height: u32,
    /// Bytes per line of the first plane (0: unpadded).
    pub stride: u32,
}

/// The encoded frame (PNG, or the camera's own JPEG) of one buffer.
pub fn encode(format: PixelFormat, buf: &[u8], layout: Layout) -> Result<Vec<u8>, String> {
    let Layout { width: w, height: h, .. } = layout;
    check_size(u64::from(w), u64::from(h))?;
    match format {
        PixelFormat::Grey => Ok(encode_png(&grey(buf, layout)?, w, h, image::ExtendedColorType::L8)),
        PixelFormat::Yuyv => Ok(encode_png(&yuyv_to_rgb(buf, layout)?, w, h, image::ExtendedColorType::Rgb8)),
        PixelFormat::Nv12 => Ok(encode_png(&nv12_to_rgb(buf, layout)?, w, h, image::ExtendedColorType::Rgb8)),
        // Kept as the camera sent it: re-encoding would only lose more.
        PixelFormat::Mjpeg => mjpeg_to_jpeg(buf),
    }
}

fn stride(layout: Layout, bytes_per_pixel: u32) -> usize {
    (if layout.stride == 0 { layout.width * bytes_per_pixel } else { layout.stride }) as usize
}

fn check(buf: &[u8], need: usize, what: &str, layout: Layout) -> Result<(), String> {
    if buf.len() < need {
        return Err(format!(
            "a {what} buffer of {} bytes is short of the {need} a {}x{} frame needs (the device may have changed format)",
            buf.len(),
            layout.width,
            layout.height
        ));
    }
    Ok(())
}

/// Luma lines without their padding.
pub fn grey(buf: &[u8], layout: Layout) -> Result<Vec<u8>, String> {
    let (w, h, s) = (layout.width as usize, layout.height as usize, stride(layout, 1));
    check(buf, s * (h.max(1) - 1) + w, "GREY", layout)?;
    Ok((0..h).flat_map(|y| &buf[y * s..y * s + w]).copied().collect())
}

/// BT.601 limited range, the encoding of webcams' YUV: 8.8 fixed point.
fn rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = 298 * (i32::from(y) - 16);
    let (d, e) = (i32::from(u) - 128, i32::from(v) - 128);
    let clamp = |x: i32| ((x + 128) >> 8).clamp(0, 255) as u8;
    [clamp(c + 409 * e), clamp(c - 100 * d - 208 * e), clamp(c + 516 * d)]
}

/// Packed Y0 U Y1 V, two pixels per four bytes.
pub fn yuyv_to_rgb(buf: &[u8], layout: Layout) -> Result<Vec<u8>, String> {
    let (w, h, s) = (layout.width as usize, layout.height as usize, stride(layout, 2));
    if w % 2 != 0 {
        return Err(format!("YUYV needs an even width, not {w}"));
    }
    check(buf, s * (h.max(1) - 1) + w * 2, "YUYV", layout)?;
    let mut out = Vec::with_capacity(w * h * 3);
    for line in (0..h).map(|y| &buf[y * s..y * s + w * 2]) {
        for q in line.chunks_exact(4) {
            out.extend_from_slice(&rgb(q[0], q[1], q[3]));
            out.extend_from_slice(&rgb(q[2], q[1], q[3]));
        }
    }
    Ok(out)
}

/// A luma plane, then a half-height plane of interleaved U V for each 2x2 block.
pub fn nv12_to_rgb(buf: &[u8], layout: Layout) -> Result<Vec<u8>, String> {
    let (w, h, s) = (layout.width as usize, layout.height as usize, stride(layout, 1));
    if w % 2 != 0 || h % 2 != 0 {
        return Err(format!("NV12 needs an even width and height, not {w}x{h}"));
    }
    let chroma = s * h;
    check(buf, chroma + s * (h / 2).max(1).saturating_sub(1) + w, "NV12", layout)?;
    let mut out = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        let (luma, uv) = (&buf[y * s..y * s + w], &buf[chroma + (y / 2) * s..chroma + (y / 2) * s + w]);
        for x in 0..w {
            out.extend_from_slice(&rgb(luma[x], uv[x & !1], uv[x | 1]));
        }
    }
    Ok(out)
}

/// A Motion-JPEG buffer as a standalone JPEG: UVC cameras leave out the Huffman tables
/// (MJPEG streams use the standard ones of ITU T.81 Annex K.3), which some decoders need, so
/// they are put back in when missing. Bytes after the end-of-image marker are dropped.
pub fn mjpeg_to_jpeg(buf: &[u8]) -> Result<Vec<u8>, String> {
    if buf.len() < 4 || buf[..2] != [0xFF, 0xD8] {
        return Err("an MJPEG buffer that does not start as a JPEG".into());
    }
    // Walk the header segments up to the start of scan.
    let mut at = 2;
    let mut has_tables = false;
    let sos = loop {
        if at >= buf.len() || buf[at] != 0xFF {
            return Err("an MJPEG buffer whose JPEG header is cut short or damaged".into());
        }
        // Any number of 0xFF fill bytes may come before a marker.
        while buf.get(at + 1) == Some(&0xFF) {
            at += 1;
        }
        let Some(&marker) = buf.get(at + 1) else {
            return Err("an MJPEG buffer whose JPEG header is cut short".into());
        };
        match marker {
            0xDA => break at,
            0xD9 => return Err("an MJPEG buffer with no image data".into()),
            // Markers without a length: TEM, the restart markers, a stray start of image.
            0x01 | 0xD0..=0xD8 => {
                at += 2;
                continue;
            }
            0xC4 => has_tables = true,
            _ => {}
        }
        let Some(len) = buf.get(at + 2..at + 4) else {
            return Err("an MJPEG buffer whose JPEG header is cut short".into());
        };
        at += 2 + usize::from(u16::from_be_bytes([len[0], len[1]]));
    };
    let end = buf.windows(2).rposition(|w| w == [0xFF, 0xD9]).map_or(buf.len(), |i| i + 2);
    if end <= sos {
        return Err("an MJPEG buffer with no image data".into());
    }
    let mut out = Vec::with_capacity(end + STANDARD_TABLES_LEN);
    out.extend_from_slice(&buf[..sos]);
    if !has_tables {
        push_standard_tables(&mut out);
    }
    out.extend_from_slice(&buf[sos..end]);
    Ok(out)
}

/// The four tables of ITU T.81 Annex K.3 (K.3 to K.6): code counts per length 1..16, then
/// the values, for DC luminance (class 0, id 0), AC luminance (1, 0), DC chrominance (0, 1)
/// and AC chrominance (1, 1).
const DC_COUNTS_LUMA: [u8; 16] = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0];
const DC_COUNTS_CHROMA: [u8; 16] = [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
const DC_VALUES: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];
const AC_COUNTS_LUMA: [u8; 16] = [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d];
const AC_VALUES_LUMA: [u8; 162] = [
    0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07, 0x22, 0x71, 0x14,
    0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09,
    0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a,
    0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65,
    0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88,
    0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9,
    0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca,
    0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea,
    0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
];
const AC_COUNTS_CHROMA: [u8; 16] = [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77];
const AC_VALUES_CHROMA: [u8; 162] = [
    0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71, 0x13, 0x22, 0x32,
    0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33, 0x52, 0xf0, 0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16,
    0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38, 0x39,
    0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64,
    0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x82, 0x83, 0x84, 0x85, 0x86,
    0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
    0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8,
    0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9,
    0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
];

/// One DHT segment with all four tables: marker, length, then class/id, counts and values each.
const STANDARD_TABLES_LEN: usize = 4 + 4 * 17 + 12 + 162 + 12 + 162;

fn push_standard_tables(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0xFF, 0xC4]);
    out.extend_from_slice(&((STANDARD_TABLES_LEN - 2) as u16).to_be_bytes());
    for (class_id, counts, values) in [
        (0x00, &DC_COUNTS_LUMA, &DC_VALUES[..]),
        (0x10, &AC_COUNTS_LUMA, &AC_VALUES_LUMA[..]),
        (0x01, &DC_COUNTS_CHROMA, &DC_VALUES[..]),
        (0x11, &AC_COUNTS_CHROMA, &AC_VALUES_CHROMA[..]),
    ] {
        out.push(class_id);
        out.extend_from_slice(counts);
        out.extend_from_slice(values);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_tables_hold_as_many_values_as_their_counts_say() {
        for (counts, values) in [
            (&DC_COUNTS_LUMA, DC_VALUES.len()),
            (&DC_COUNTS_CHROMA, DC_VALUES.len()),
            (&AC_COUNTS_LUMA, AC_VALUES_LUMA.len()),
            (&AC_COUNTS_CHROMA, AC_VALUES_CHROMA.len()),
        ] {
            assert_eq!(counts.iter().map(|&c| usize::from(c)).sum::<usize>(), values);
        }
        let mut dht = vec![];
        push_standard_tables(&mut dht);
        assert_eq!(dht.len(), STANDARD_TABLES_LEN);
    }

    #[test]
    fn yuv_greys_and_primaries_come_out_as_bt601_says() {
        assert_eq!(rgb(16, 128, 128), [0, 0, 0]);
        assert_eq!(rgb(235, 128, 128), [255, 255, 255]);
        assert_eq!(rgb(126, 128, 128), [128, 128, 128]);
        // Pure red in BT.601 limited range: Y 81, U 90, V 240.
        let [r, g, b] = rgb(81, 90, 240);
        assert!(r >= 254 && g <= 1 && b <= 1, "{r} {g} {b}");
    }

    #[test]
    fn padded_lines_are_read_without_their_padding() {
        // 2x2 grey with 2 bytes of padding per line.
        let layout = Layout { width: 2, height: 2, stride: 4 };
        assert_eq!(grey(&[1, 2, 0, 0, 3, 4], layout).unwrap(), [1, 2, 3, 4]);
        // YUYV: one line of two pixels, padded.
        let layout = Layout { width: 2, height: 2, stride: 6 };
        let px = yuyv_to_rgb(&[235, 128, 16, 128, 9, 9, 16, 128, 235, 128], layout).unwrap();
        assert_eq!(px, [255, 255, 255, 0, 0, 0, 0, 0, 0, 255, 255, 255]);
    }

    #[test]
    fn short_or_odd_buffers_are_refused_with_the_reason() {
        let layout = Layout { width: 4, height: 4, stride: 0 };
        let e = yuyv_to_rgb(&[0; 10], layout).unwrap_err();
        assert!(e.contains("short") && e.contains("4x4"), "{e}");
        assert!(nv12_to_rgb(&[0; 23], layout).is_err());
        assert!(nv12_to_rgb(&[0; 24], layout).is_ok());
        assert!(yuyv_to_rgb(&[0; 12], Layout { width: 3, height: 1, stride: 0 }).unwrap_err().contains("even"));
        assert!(mjpeg_to_jpeg(b"not a jpeg").is_err());
        assert!(mjpeg_to_jpeg(&[0xFF, 0xD8, 0xFF, 0xDB, 0x00]).is_err());
        assert!(mjpeg_to_jpeg(&[0xFF, 0xD8, 0xFF, 0xD9]).unwrap_err().contains("no image data"));
        assert!(encode(PixelFormat::Grey, &[], Layout { width: 0, height: 4, stride: 0 }).is_err());
        assert!(encode(PixelFormat::Grey, &[0; 16], Layout { width: 100_000, height: 100_000, stride: 0 }).is_err());
    }

    #[test]
    fn fill_bytes_and_markers_without_a_length_are_walked_over() {
        // SOI, fill bytes before a COM segment, a stray RST0, then SOS with one byte of data
        // and EOI: the tables go in just before SOS.
        let jpeg =
            [0xFF, 0xD8, 0xFF, 0xFF, 0xFE, 0x00, 0x03, b'x', 0xFF, 0xD0, 0xFF, 0xDA, 0x00, 0x02, 0x55, 0xFF, 0xD9];
        let out = mjpeg_to_jpeg(&jpeg).unwrap();
        assert_eq!(out[..10], jpeg[..10]);
        assert_eq!(out[10..12], [0xFF, 0xC4]);
        assert_eq!(out[10 + STANDARD_TABLES_LEN..], jpeg[10..]);
    }
}
