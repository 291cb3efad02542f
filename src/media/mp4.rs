//! A minimal MP4 (ISO/IEC 14496-12 + 14496-15) muxer for one H.264 video track.
//!
//! Why our own boxes instead of a muxer crate: we need exactly one layout (one `avc1` track, all
//! samples in one chunk, `moov` before `mdat` so browsers start playing before the whole file has
//! loaded), plus two things the crates we looked at do not write: a `colr` (nclx) box next to
//! `avcC`, and iTunes-style `moov/udta/meta/ilst` text items (`©nam`, `©cmt`, `desc`, `©too`) that
//! ffprobe, exiftool and players show. That is ~300 lines with no further dependency. The tests
//! read the files back with an independent parser (the `mp4` crate, dev-dependency only).
//!
//! Layout written by [`write_mp4`]:
//! ```text
//! ftyp  isom (isom iso2 avc1 mp41)
//! moov  mvhd
//!       trak  tkhd
//!             mdia  mdhd, hdlr(vide)
//!                   minf  vmhd, dinf/dref/url, stbl
//!                         stbl  stsd/avc1(avcC, colr, pasp), stts, stss, stsc, stsz, stco|co64
//!       udta  meta(hdlr mdir)/ilst  ©nam ©cmt desc ©too
//! mdat  samples: AVCC (4-byte big-endian length before each NAL unit), no SPS/PPS in band
//! ```

use std::io::{self, Write};

/// Colour description written to the `colr` box (and, by the encoder, to the SPS VUI):
/// ITU-T H.273 code points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Colour {
    pub primaries: u16,
    pub transfer: u16,
    pub matrix: u16,
    pub full_range: bool,
}

impl Colour {
    /// BT.709 primaries, transfer and matrix, limited (16-235) range: what browsers and players
    /// assume for untagged HD video and what sRGB content is conventionally tagged as.
    pub const BT709_LIMITED: Colour = Colour {
        primaries: 1,
        transfer: 1,
        matrix: 1,
        full_range: false,
    };
}

/// One coded picture in `mdat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Bytes in `mdat` (AVCC length prefixes included).
    pub size: u32,
    /// Duration in track timescale units.
    pub duration: u32,
    /// IDR picture (listed in `stss`).
    pub sync: bool,
}

/// The video track: everything `moov` describes.
#[derive(Clone, Debug)]
pub struct Track {
    pub width: u16,
    pub height: u16,
    /// Units per second of the sample durations.
    pub timescale: u32,
    /// Sequence parameter set NAL unit (without start code).
    pub sps: Vec<u8>,
    /// Picture parameter set NAL unit (without start code).
    pub pps: Vec<u8>,
    pub colour: Colour,
    pub samples: Vec<Sample>,
}

/// iTunes-style text items in `moov/udta/meta/ilst`; empty strings are left out.
#[derive(Clone, Debug, Default)]
pub struct Tags {
    /// `©nam`: title.
    pub title: String,
    /// `©cmt`: comment (ffprobe shows it as `comment`).
    pub comment: String,
    /// `desc`: description (ffprobe: `description`); nijigen stores the parameters JSON here.
    pub description: String,
    /// `©too`: encoding tool (ffprobe: `encoder`).
    pub encoder: String,
}

/// Movie header timescale (the track has its own).
const MOVIE_TIMESCALE: u32 = 1000;

/// Writes a complete MP4 file: `ftyp`, `moov`, then `mdat` holding `payload` (the samples of
/// `track` back to back, in order).
pub fn write_mp4<W: Write>(
    out: &mut W,
    track: &Track,
    tags: &Tags,
    payload: &[u8],
) -> io::Result<()> {
    let total: u64 = track.samples.iter().map(|s| u64::from(s.size)).sum();
    if total != payload.len() as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "mp4: sample sizes add up to {total} bytes but the payload has {}",
                payload.len()
            ),
        ));
    }
    let ftyp = ftyp();
    let large_mdat = payload.len() as u64 + 8 > u64::from(u32::MAX);
    let mdat_header_len: u64 = if large_mdat { 16 } else { 8 };
    // The chunk offset depends on the size of moov, whose size does not depend on the offset's
    // value (only on stco vs co64): build once to measure, then with the real offset.
    let probe = moov(track, tags, 0, false);
    let mut offset = ftyp.len() as u64 + probe.len() as u64 + mdat_header_len;
    // Only a giant moov pushes mdat past 4 GiB; co64's single entry is 4 bytes longer.
    let use_co64 = offset > u64::from(u32::MAX);
    if use_co64 {
        offset += 4;
    }
    let moov = moov(track, tags, offset, use_co64);
    debug_assert_eq!(
        ftyp.len() as u64 + moov.len() as u64 + mdat_header_len,
        offset
    );
    out.write_all(&ftyp)?;
    out.write_all(&moov)?;
    if large_mdat {
        out.write_all(&1u32.to_be_bytes())?;
        out.write_all(b"mdat")?;
        out.write_all(&(payload.len() as u64 + 16).to_be_bytes())?;
    } else {
        out.write_all(&(payload.len() as u32 + 8).to_be_bytes())?;
        out.write_all(b"mdat")?;
    }
    out.write_all(payload)?;
    Ok(())
}

/// A byte buffer with nested box helpers: `begin` writes a size placeholder and the type,
/// `end` patches the size.
#[derive(Default)]
struct Boxes(Vec<u8>);

impl Boxes {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }
    fn zeros(&mut self, n: usize) {
        self.0.resize(self.0.len() + n, 0);
    }
    fn begin(&mut self, kind: &[u8; 4]) -> usize {
        let at = self.0.len();
        self.u32(0);
        self.bytes(kind);
        at
    }
    fn begin_full(&mut self, kind: &[u8; 4], version: u8, flags: u32) -> usize {
        let at = self.begin(kind);
        self.u32((u32::from(version) << 24) | (flags & 0x00ff_ffff));
        at
    }
    fn end(&mut self, at: usize) {
        // Boxes built here are small (moov of a few thousand samples); mdat is written apart.
        let size = u32::try_from(self.0.len() - at).unwrap_or(u32::MAX);
        self.0[at..at + 4].copy_from_slice(&size.to_be_bytes());
    }
    /// The 3x3 unity transformation matrix of mvhd/tkhd (16.16 and 2.30 fixed point).
    fn unity_matrix(&mut self) {
        for v in [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000u32] {
            self.u32(v);
        }
    }
}

fn ftyp() -> Vec<u8> {
    let mut b = Boxes::default();
    let at = b.begin(b"ftyp");
    b.bytes(b"isom");
    b.u32(0x200);
    for brand in [b"isom", b"iso2", b"avc1", b"mp41"] {
        b.bytes(brand);
    }
    b.end(at);
    b.0
}

/// Track duration in track timescale units.
fn track_duration(track: &Track) -> u64 {
    track.samples.iter().map(|s| u64::from(s.duration)).sum()
}

fn moov(track: &Track, tags: &Tags, chunk_offset: u64, co64: bool) -> Vec<u8> {
    let media_duration = track_duration(track);
    let movie_duration = if track.timescale == 0 {
        0
    } else {
        media_duration * u64::from(MOVIE_TIMESCALE) / u64::from(track.timescale)
    };
    let mut b = Boxes::default();
    let moov = b.begin(b"moov");

    let at = b.begin_full(b"mvhd", 1, 0);
    b.u64(0); // creation time (left 0: output does not depend on the clock)
    b.u64(0); // modification time
    b.u32(MOVIE_TIMESCALE);
    b.u64(movie_duration);
    b.u32(0x0001_0000); // rate 1.0
    b.u16(0x0100); // volume 1.0
    b.zeros(10);
    b.unity_matrix();
    b.zeros(24); // pre_defined
    b.u32(2); // next_track_ID
    b.end(at);

    let trak = b.begin(b"trak");
    let at = b.begin_full(b"tkhd", 1, 0x3); // enabled | in movie
    b.u64(0);
    b.u64(0);
    b.u32(1); // track_ID
    b.u32(0);
    b.u64(movie_duration);
    b.zeros(8);
    b.u16(0); // layer
    b.u16(0); // alternate_group
    b.u16(0); // volume (video)
    b.u16(0);
    b.unity_matrix();
    b.u32(u32::from(track.width) << 16);
    b.u32(u32::from(track.height) << 16);
    b.end(at);

    let mdia = b.begin(b"mdia");
    let at = b.begin_full(b"mdhd", 1, 0);
    b.u64(0);
    b.u64(0);
    b.u32(track.timescale);
    b.u64(media_duration);
    b.u16(0x55c4); // language "und" (ISO 639-2/T packed 5-bit letters)
    b.u16(0);
    b.end(at);
    hdlr(&mut b, b"vide", b"VideoHandler");

    let minf = b.begin(b"minf");
    let at = b.begin_full(b"vmhd", 0, 1);
    b.zeros(8); // graphicsmode, opcolor
    b.end(at);
    let dinf = b.begin(b"dinf");
    let dref = b.begin_full(b"dref", 0, 0);
    b.u32(1);
    let url = b.begin_full(b"url ", 0, 1); // media in this file
    b.end(url);
    b.end(dref);
    b.end(dinf);
    stbl(&mut b, track, chunk_offset, co64);
    b.end(minf);
    b.end(mdia);
    b.end(trak);

    udta(&mut b, tags);
    b.end(moov);
    b.0
}

fn hdlr(b: &mut Boxes, handler: &[u8; 4], name: &[u8]) {
    let at = b.begin_full(b"hdlr", 0, 0);
    b.u32(0); // pre_defined
    b.bytes(handler);
    b.zeros(12);
    b.bytes(name);
    b.u8(0);
    b.end(at);
}

fn stbl(b: &mut Boxes, track: &Track, chunk_offset: u64, co64: bool) {
    let stbl = b.begin(b"stbl");

    let stsd = b.begin_full(b"stsd", 0, 0);
    b.u32(1);
    let avc1 = b.begin(b"avc1");
    b.zeros(6);
    b.u16(1); // data_reference_index
    b.zeros(16); // pre_defined, reserved
    b.u16(track.width);
    b.u16(track.height);
    b.u32(0x0048_0000); // 72 dpi
    b.u32(0x0048_0000);
    b.u32(0);
    b.u16(1); // frame_count
    let mut compressor = [0u8; 32];
    let name = b"nijigen H.264";
    compressor[0] = name.len() as u8;
    compressor[1..=name.len()].copy_from_slice(name);
    b.bytes(&compressor);
    b.u16(0x0018); // depth
    b.u16(0xffff); // pre_defined = -1
    avcc(b, track);
    let colr = b.begin(b"colr");
    b.bytes(b"nclx");
    b.u16(track.colour.primaries);
    b.u16(track.colour.transfer);
    b.u16(track.colour.matrix);
    b.u8(if track.colour.full_range { 0x80 } else { 0 });
    b.end(colr);
    let pasp = b.begin(b"pasp");
    b.u32(1);
    b.u32(1);
    b.end(pasp);
    b.end(avc1);
    b.end(stsd);

    // stts: runs of equal durations.
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for s in &track.samples {
        match runs.last_mut() {
            Some((count, delta)) if *delta == s.duration => *count += 1,
            _ => runs.push((1, s.duration)),
        }
    }
    let at = b.begin_full(b"stts", 0, 0);
    b.u32(runs.len() as u32);
    for (count, delta) in runs {
        b.u32(count);
        b.u32(delta);
    }
    b.end(at);

    let syncs: Vec<u32> = (1u32..)
        .zip(&track.samples)
        .filter(|(_, s)| s.sync)
        .map(|(n, _)| n)
        .collect();
    if syncs.len() != track.samples.len() {
        // No stss means "every sample is a sync sample".
        let at = b.begin_full(b"stss", 0, 0);
        b.u32(syncs.len() as u32);
        for n in syncs {
            b.u32(n);
        }
        b.end(at);
    }

    let count = track.samples.len() as u32;
    let at = b.begin_full(b"stsc", 0, 0);
    if count == 0 {
        b.u32(0);
    } else {
        b.u32(1);
        b.u32(1); // first_chunk
        b.u32(count); // samples_per_chunk: everything in one chunk
        b.u32(1); // sample_description_index
    }
    b.end(at);

    let at = b.begin_full(b"stsz", 0, 0);
    b.u32(0); // sizes differ
    b.u32(count);
    for s in &track.samples {
        b.u32(s.size);
    }
    b.end(at);

    let chunks = u32::from(count > 0);
    if co64 {
        let at = b.begin_full(b"co64", 0, 0);
        b.u32(chunks);
        if chunks == 1 {
            b.u64(chunk_offset);
        }
        b.end(at);
    } else {
        let at = b.begin_full(b"stco", 0, 0);
        b.u32(chunks);
        if chunks == 1 {
            b.u32(chunk_offset as u32);
        }
        b.end(at);
    }
    b.end(stbl);
}

/// `avcC` (AVCDecoderConfigurationRecord, ISO/IEC 14496-15 5.3.3.1).
fn avcc(b: &mut Boxes, track: &Track) {
    let at = b.begin(b"avcC");
    let sps = &track.sps;
    let (profile, compat, level) = match sps.get(1..4) {
        Some(p) => (p[0], p[1], p[2]),
        None => (66, 0, 30),
    };
    b.u8(1); // configurationVersion
    b.u8(profile);
    b.u8(compat);
    b.u8(level);
    b.u8(0xfc | 3); // lengthSizeMinusOne = 3
    b.u8(0xe0 | 1); // one SPS
    b.u16(sps.len() as u16);
    b.bytes(sps);
    b.u8(1); // one PPS
    b.u16(track.pps.len() as u16);
    b.bytes(&track.pps);
    if matches!(profile, 100 | 110 | 122 | 144) {
        // High profiles carry the chroma format and bit depths (4:2:0, 8 bit).
        b.u8(0xfc | 1);
        b.u8(0xf8);
        b.u8(0xf8);
        b.u8(0);
    }
    b.end(at);
}

fn udta(b: &mut Boxes, tags: &Tags) {
    let items: [(&[u8; 4], &str); 4] = [
        (b"\xa9nam", &tags.title),
        (b"\xa9cmt", &tags.comment),
        (b"desc", &tags.description),
        (b"\xa9too", &tags.encoder),
    ];
    if items.iter().all(|(_, v)| v.is_empty()) {
        return;
    }
    let udta = b.begin(b"udta");
    let meta = b.begin_full(b"meta", 0, 0);
    let at = b.begin_full(b"hdlr", 0, 0);
    b.u32(0);
    b.bytes(b"mdir");
    b.bytes(b"appl");
    b.zeros(8);
    b.u8(0);
    b.end(at);
    let ilst = b.begin(b"ilst");
    for (kind, value) in items {
        if value.is_empty() {
            continue;
        }
        let item = b.begin(kind);
        let data = b.begin(b"data");
        b.u32(1); // well-known type 1: UTF-8 text
        b.u32(0); // locale
        b.bytes(value.as_bytes());
        b.end(data);
        b.end(item);
    }
    b.end(ilst);
    b.end(meta);
    b.end(udta);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(samples: Vec<Sample>) -> Track {
        Track {
            width: 64,
            height: 48,
            timescale: 16_000,
            sps: vec![0x67, 66, 0xc0, 30, 0xaa],
            pps: vec![0x68, 0xce, 0x3c, 0x80],
            colour: Colour::BT709_LIMITED,
            samples,
        }
    }

    /// Walks top-level boxes: (type, size).
    fn top_level(file: &[u8]) -> Vec<([u8; 4], u64)> {
        let mut out = Vec::new();
        let mut at = 0usize;
        while at + 8 <= file.len() {
            let size = u32::from_be_bytes(file[at..at + 4].try_into().unwrap()) as u64;
            let kind: [u8; 4] = file[at + 4..at + 8].try_into().unwrap();
            out.push((kind, size));
            at += size as usize;
        }
        assert_eq!(at, file.len());
        out
    }

    #[test]
    fn layout_and_chunk_offset() {
        let samples = vec![
            Sample {
                size: 5,
                duration: 1000,
                sync: true,
            },
            Sample {
                size: 3,
                duration: 1000,
                sync: false,
            },
        ];
        let payload = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let tags = Tags {
            description: "{\"seed\":1}".into(),
            ..Tags::default()
        };
        let mut file = Vec::new();
        write_mp4(&mut file, &track(samples), &tags, &payload).unwrap();
        let boxes = top_level(&file);
        let kinds: Vec<&[u8; 4]> = boxes.iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, [b"ftyp", b"moov", b"mdat"]);
        // stco's single entry points at the first payload byte.
        let stco = file.windows(4).position(|w| w == b"stco").unwrap();
        let off = u32::from_be_bytes(file[stco + 12..stco + 16].try_into().unwrap()) as usize;
        assert_eq!(&file[off..], &payload);
        assert!(file.windows(10).any(|w| w == b"{\"seed\":1}"));
    }

    #[test]
    fn size_mismatch_is_an_error() {
        let samples = vec![Sample {
            size: 4,
            duration: 1,
            sync: true,
        }];
        let err = write_mp4(&mut Vec::new(), &track(samples), &Tags::default(), &[0; 3]);
        assert!(err.is_err());
    }
}
