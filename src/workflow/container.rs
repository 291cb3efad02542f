//! Finding the `prompt` (API JSON) and `workflow` (UI JSON) ComfyUI embeds in its outputs.
//!
//! - **PNG** (SaveImage, PreviewImage, VHS's first-frame PNG): one text chunk per key, `prompt`
//!   and `workflow`. Pillow writes `tEXt` (Latin-1; read as UTF-8 when valid, as some writers put
//!   UTF-8 there) and falls back to `iTXt` (UTF-8) when the text is not Latin-1. ComfyUI never compresses them; compressed `zTXt`/`iTXt` are reported as such.
//! - **WebP** (SaveAnimatedWEBP, SaveWEBP): an `EXIF` chunk holding a TIFF directory whose ASCII
//!   entries are `"prompt:<json>"` (tag 0x0110, Model) and `"workflow:<json>"` (tag 0x010F, Make;
//!   further extra-info keys count down from there). Any entry with those prefixes is used.
//! - **MP4/MOV** (SaveVideo, CreateVideo+SaveVideo): ComfyUI writes the container metadata with
//!   PyAV and `movflags=use_metadata_tags`, so FFmpeg stores every key verbatim as QuickTime
//!   "mdta" metadata: `moov/udta/meta` with a `hdlr` of type `mdta`, a `keys` box listing the key
//!   names and an `ilst` box whose items are numbered by key index, each holding a `data` box with
//!   the UTF-8 value. Without that flag FFmpeg keeps only iTunes keys; VHS_VideoCombine stores
//!   everything as JSON in `comment` (`©cmt`), which is read too.

use serde_json::Value;

use super::error::WorkflowError;

/// What a file carries. `prompt` and `workflow` are the raw JSON texts.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Embedded {
    pub prompt: Option<String>,
    pub workflow: Option<String>,
}

impl Embedded {
    fn set(&mut self, key: &str, text: String) {
        match key {
            "prompt" if self.prompt.is_none() => self.prompt = Some(text),
            "workflow" if self.workflow.is_none() => self.workflow = Some(text),
            // VHS: one JSON object with both keys; `prompt` is itself a JSON string.
            "comment" | "\u{a9}cmt" => {
                if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&text) {
                    for k in ["prompt", "workflow"] {
                        match m.get(k) {
                            Some(Value::String(s)) => self.set(k, s.clone()),
                            Some(v @ Value::Object(_)) => self.set(k, v.to_string()),
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn is_empty(&self) -> bool {
        self.prompt.is_none() && self.workflow.is_none()
    }
}

/// The kinds of file [`sniff`] recognizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Json,
    Png,
    Webp,
    Mp4,
}

pub(crate) const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Recognizes a file by its first bytes.
pub(crate) fn sniff(bytes: &[u8]) -> Option<Kind> {
    if bytes.starts_with(PNG_SIGNATURE) {
        return Some(Kind::Png);
    }
    if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        return Some(Kind::Webp);
    }
    if bytes.len() >= 8 {
        let t = &bytes[4..8];
        if matches!(t, b"ftyp" | b"moov" | b"mdat" | b"free" | b"wide" | b"skip") {
            return Some(Kind::Mp4);
        }
    }
    let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match text.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') | Some(b'[') => Some(Kind::Json),
        _ => None,
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8).map(|s| {
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        u64::from_be_bytes(a)
    })
}

fn latin1(b: &[u8]) -> String {
    b.iter().map(|&c| c as char).collect()
}

fn missing(kind: &str) -> WorkflowError {
    WorkflowError::Metadata(format!(
        "this {kind} has no ComfyUI workflow in it (no `prompt` or `workflow` metadata); \
         it was not saved by ComfyUI, or saved with --disable-metadata, or stripped since"
    ))
}

// ---------------------------------------------------------------------------------------------
// PNG.

/// Reads the `prompt`/`workflow` text chunks of a PNG.
pub(crate) fn png(bytes: &[u8]) -> Result<Embedded, WorkflowError> {
    if !bytes.starts_with(PNG_SIGNATURE) {
        return Err(WorkflowError::Metadata("not a PNG file".into()));
    }
    let mut out = Embedded::default();
    let mut compressed = Vec::new();
    let mut pos = PNG_SIGNATURE.len();
    while pos + 8 <= bytes.len() {
        let len = be32(bytes, pos).unwrap_or(0) as usize;
        let ty = &bytes[pos + 4..pos + 8];
        let start = pos + 8;
        let Some(end) = start.checked_add(len).filter(|e| *e <= bytes.len()) else {
            return Err(WorkflowError::Metadata(format!(
                "PNG chunk {} at byte {pos} runs past the end of the file",
                latin1(ty)
            )));
        };
        let data = &bytes[start..end];
        match ty {
            b"tEXt" => {
                if let Some(nul) = data.iter().position(|&c| c == 0) {
                    // Latin-1 by the PNG spec; some writers put UTF-8 there (and ComfyUI's own
                    // JSON is ASCII either way), so take it as UTF-8 when it is valid UTF-8.
                    let text = &data[nul + 1..];
                    let text = match std::str::from_utf8(text) {
                        Ok(s) => s.to_string(),
                        Err(_) => latin1(text),
                    };
                    out.set(&latin1(&data[..nul]), text);
                }
            }
            b"iTXt" => {
                if let Some((key, text, is_compressed)) = itxt(data) {
                    if is_compressed {
                        compressed.push(key);
                    } else {
                        out.set(&key, text);
                    }
                }
            }
            b"zTXt" => {
                if let Some(nul) = data.iter().position(|&c| c == 0) {
                    compressed.push(latin1(&data[..nul]));
                }
            }
            b"IEND" => break,
            _ => {}
        }
        pos = end + 4; // CRC
    }
    if out.is_empty() {
        if let Some(k) = compressed
            .iter()
            .find(|k| *k == "prompt" || *k == "workflow")
        {
            return Err(WorkflowError::Metadata(format!(
                "this PNG stores `{k}` compressed (zTXt/iTXt), which nijigen does not read; \
                 ComfyUI itself writes it uncompressed"
            )));
        }
        return Err(missing("PNG"));
    }
    Ok(out)
}

/// keyword \0 compression_flag compression_method language \0 translated_keyword \0 text
fn itxt(data: &[u8]) -> Option<(String, String, bool)> {
    let nul = data.iter().position(|&c| c == 0)?;
    let key = latin1(&data[..nul]);
    let flag = *data.get(nul + 1)?;
    let rest = data.get(nul + 3..)?;
    let lang_end = rest.iter().position(|&c| c == 0)?;
    let rest = &rest[lang_end + 1..];
    let tr_end = rest.iter().position(|&c| c == 0)?;
    let text = &rest[tr_end + 1..];
    Some((key, String::from_utf8_lossy(text).into_owned(), flag != 0))
}

// ---------------------------------------------------------------------------------------------
// WebP.

/// Reads the `prompt:`/`workflow:` EXIF strings of a WebP.
pub(crate) fn webp(bytes: &[u8]) -> Result<Embedded, WorkflowError> {
    if sniff(bytes) != Some(Kind::Webp) {
        return Err(WorkflowError::Metadata("not a WebP file".into()));
    }
    let mut out = Embedded::default();
    let mut pos = 12;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]) as usize;
        let start = pos + 8;
        let end = start.saturating_add(len).min(bytes.len());
        if id == b"EXIF" {
            exif_strings(&bytes[start..end], &mut out);
        }
        pos = start.saturating_add(len).saturating_add(len & 1);
    }
    if out.is_empty() {
        return Err(missing("WebP"));
    }
    Ok(out)
}

fn exif_strings(data: &[u8], out: &mut Embedded) {
    let tiff = data.strip_prefix(b"Exif\0\0").unwrap_or(data);
    if tiff.len() < 8 {
        return;
    }
    let le = match &tiff[0..2] {
        b"II" => true,
        b"MM" => false,
        _ => return,
    };
    let u16_at = |at: usize| {
        tiff.get(at..at + 2).map(|s| {
            if le {
                u16::from_le_bytes([s[0], s[1]])
            } else {
                u16::from_be_bytes([s[0], s[1]])
            }
        })
    };
    let u32_at = |at: usize| {
        tiff.get(at..at + 4).map(|s| {
            let a = [s[0], s[1], s[2], s[3]];
            if le {
                u32::from_le_bytes(a)
            } else {
                u32::from_be_bytes(a)
            }
        })
    };
    // Walk IFD0 and any IFDs chained after it (a handful at most).
    let mut ifd = u32_at(4).unwrap_or(0) as usize;
    for _ in 0..8 {
        if ifd == 0 || ifd >= tiff.len() {
            break;
        }
        let Some(count) = u16_at(ifd) else { break };
        for e in 0..count as usize {
            let at = ifd + 2 + e * 12;
            let (Some(ty), Some(n), Some(off)) = (u16_at(at + 2), u32_at(at + 4), u32_at(at + 8))
            else {
                break;
            };
            // BYTE, ASCII and UNDEFINED entries: one byte per count.
            if !matches!(ty, 1 | 2 | 7) {
                continue;
            }
            let n = n as usize;
            let raw = if n <= 4 {
                tiff.get(at + 8..at + 8 + n)
            } else {
                tiff.get(off as usize..(off as usize).saturating_add(n))
            };
            let Some(raw) = raw else { continue };
            let text = String::from_utf8_lossy(raw);
            let text = text.trim_end_matches('\0');
            if let Some((key, json)) = text.split_once(':') {
                if key == "prompt" || key == "workflow" {
                    out.set(key, json.to_string());
                }
            }
        }
        ifd = u32_at(ifd + 2 + count as usize * 12).unwrap_or(0) as usize;
    }
}

// ---------------------------------------------------------------------------------------------
// MP4 / QuickTime.

struct Mp4Box<'a> {
    ty: [u8; 4],
    body: &'a [u8],
}

/// Splits a run of ISO-BMFF boxes; stops at the first malformed header.
fn boxes(mut data: &[u8]) -> Vec<Mp4Box<'_>> {
    let mut out = Vec::new();
    while data.len() >= 8 {
        let size = be32(data, 0).unwrap_or(0) as u64;
        let mut ty = [0u8; 4];
        ty.copy_from_slice(&data[4..8]);
        let (header, total) = match size {
            0 => (8, data.len() as u64),
            1 => match be64(data, 8) {
                Some(large) => (16, large),
                None => break,
            },
            s => (8, s),
        };
        if total < header as u64 || total > data.len() as u64 {
            break;
        }
        let total = total as usize;
        out.push(Mp4Box {
            ty,
            body: &data[header..total],
        });
        data = &data[total..];
    }
    out
}

/// `meta` is a full box (4 bytes of version/flags before its children) in MP4, and a plain
/// container in some QuickTime writers; tell them apart by whether a box header follows.
fn meta_children(body: &[u8]) -> &[u8] {
    let looks_like_box = |b: &[u8]| {
        b.len() >= 8
            && be32(b, 0).is_some_and(|s| s >= 8)
            && b[4..8].iter().all(|c| c.is_ascii_graphic() || *c == 0xA9)
    };
    if looks_like_box(body) {
        body
    } else {
        body.get(4..).unwrap_or(&[])
    }
}

fn data_box_text(item: &[u8]) -> Option<String> {
    let data = boxes(item).into_iter().find(|b| &b.ty == b"data")?;
    // type indicator (4) + locale (4), then the value.
    let value = data.body.get(8..)?;
    Some(String::from_utf8_lossy(value).into_owned())
}

fn read_meta(body: &[u8], out: &mut Embedded) {
    let children = boxes(meta_children(body));
    let mut keys: Vec<String> = Vec::new();
    if let Some(k) = children.iter().find(|b| &b.ty == b"keys") {
        // version/flags, entry_count, then (size, namespace, name) entries.
        let count = be32(k.body, 4).unwrap_or(0) as usize;
        let mut pos = 8;
        for _ in 0..count {
            let Some(size) = be32(k.body, pos).map(|s| s as usize) else {
                break;
            };
            if size < 8 || pos + size > k.body.len() {
                break;
            }
            keys.push(String::from_utf8_lossy(&k.body[pos + 8..pos + size]).into_owned());
            pos += size;
        }
    }
    let Some(ilst) = children.iter().find(|b| &b.ty == b"ilst") else {
        return;
    };
    for item in boxes(ilst.body) {
        let index = u32::from_be_bytes(item.ty) as usize;
        let key = if !keys.is_empty() && (1..=keys.len()).contains(&index) {
            keys[index - 1].clone()
        } else {
            latin1(&item.ty)
        };
        if let Some(text) = data_box_text(item.body) {
            out.set(&key, text);
        }
    }
}

fn walk_mp4(data: &[u8], depth: usize, out: &mut Embedded) {
    if depth > 8 {
        return;
    }
    for b in boxes(data) {
        match &b.ty {
            b"moov" | b"udta" | b"trak" => walk_mp4(b.body, depth + 1, out),
            b"meta" => read_meta(b.body, out),
            _ => {}
        }
    }
}

/// Reads the `prompt`/`workflow` container metadata of an MP4/MOV file.
pub(crate) fn mp4(bytes: &[u8]) -> Result<Embedded, WorkflowError> {
    let top = boxes(bytes);
    if top.is_empty() {
        return Err(WorkflowError::Metadata("not an MP4 file".into()));
    }
    if !top.iter().any(|b| &b.ty == b"moov") {
        return Err(WorkflowError::Metadata(
            "this MP4 has no `moov` box (unfinished or damaged file)".into(),
        ));
    }
    let mut out = Embedded::default();
    walk_mp4(bytes, 0, &mut out);
    if out.is_empty() {
        return Err(missing("MP4"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_by_content() {
        assert_eq!(sniff(b"  {\"a\":1}"), Some(Kind::Json));
        assert_eq!(sniff(b"\xEF\xBB\xBF{}"), Some(Kind::Json));
        assert_eq!(sniff(PNG_SIGNATURE), Some(Kind::Png));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some(Kind::Webp));
        assert_eq!(sniff(b"\0\0\0\x20ftypisom"), Some(Kind::Mp4));
        assert_eq!(sniff(b"GIF89a"), None);
    }

    #[test]
    fn webp_exif_strings() {
        // Little-endian TIFF, IFD0 with Model = "prompt:{...}" and Make = "workflow:{...}".
        let prompt = b"prompt:{\"1\":{}}\0";
        let workflow = b"workflow:{\"nodes\":[]}\0";
        let mut tiff = Vec::new();
        tiff.extend_from_slice(b"II*\0\x08\0\0\0");
        tiff.extend_from_slice(&2u16.to_le_bytes());
        let data_at = 8 + 2 + 2 * 12 + 4;
        for (tag, s, off) in [
            (0x010Fu16, &workflow[..], data_at + prompt.len()),
            (0x0110u16, &prompt[..], data_at),
        ] {
            tiff.extend_from_slice(&tag.to_le_bytes());
            tiff.extend_from_slice(&2u16.to_le_bytes());
            tiff.extend_from_slice(&(s.len() as u32).to_le_bytes());
            tiff.extend_from_slice(&(off as u32).to_le_bytes());
        }
        tiff.extend_from_slice(&0u32.to_le_bytes());
        tiff.extend_from_slice(prompt);
        tiff.extend_from_slice(workflow);
        let mut chunk = b"Exif\0\0".to_vec();
        chunk.extend_from_slice(&tiff);
        let mut file = b"RIFF\0\0\0\0WEBP".to_vec();
        file.extend_from_slice(b"VP8X");
        file.extend_from_slice(&10u32.to_le_bytes());
        file.extend_from_slice(&[0; 10]);
        file.extend_from_slice(b"EXIF");
        file.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        file.extend_from_slice(&chunk);
        if chunk.len() % 2 == 1 {
            file.push(0);
        }
        let e = webp(&file).unwrap();
        assert_eq!(e.prompt.as_deref(), Some("{\"1\":{}}"));
        assert_eq!(e.workflow.as_deref(), Some("{\"nodes\":[]}"));
    }

    #[test]
    fn png_without_metadata_is_reported() {
        let mut file = PNG_SIGNATURE.to_vec();
        file.extend_from_slice(&0u32.to_be_bytes());
        file.extend_from_slice(b"IEND");
        file.extend_from_slice(&[0; 4]);
        let err = png(&file).unwrap_err().to_string();
        assert!(err.contains("no ComfyUI workflow"), "{err}");
    }
}
