//! The few fields of sentencepiece's `ModelProto` (sentencepiece_model.proto) the tokenizer
//! needs, read with a small protobuf wire-format reader (no protoc, no generated code).
//!
//! ```text
//! ModelProto      1: repeated SentencePiece pieces   2: TrainerSpec   3: NormalizerSpec
//! SentencePiece   1: string piece   2: float score   3: Type type (NORMAL = 1 by default)
//! TrainerSpec     3: model_type (UNIGRAM = 1)   24: treat_whitespace_as_suffix
//!                 35: byte_fallback   40: unk_id (0)   41: bos_id (1)   42: eos_id (2)   43: pad_id (-1)
//! NormalizerSpec  1: name   2: bytes precompiled_charsmap   3: add_dummy_prefix (true)
//!                 4: remove_extra_whitespaces (true)   5: escape_whitespaces (true)
//! ```
//!
//! Unknown fields are skipped; every length is checked against the bytes left.

/// One field value as it is on the wire.
enum Value<'a> {
    Varint(u64),
    Fixed64,
    Fixed32(u32),
    Bytes(&'a [u8]),
}

/// Iterates the fields of one message. Errors say which byte offset is bad.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Fields { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(format!("truncated varint at byte {}", self.pos));
            };
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("varint longer than 10 bytes at byte {}", self.pos))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let start = self.pos;
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| start.checked_add(n))
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "field of {n} bytes at byte {start} runs past the end ({} bytes)",
                    self.buf.len()
                )
            })?;
        self.pos = end;
        Ok(&self.buf[start..end])
    }

    fn next_field(&mut self) -> Option<Result<(u64, Value<'a>), String>> {
        if self.pos >= self.buf.len() {
            return None;
        }
        Some((|| {
            let key = self.varint()?;
            let field = key >> 3;
            let value = match key & 7 {
                0 => Value::Varint(self.varint()?),
                1 => {
                    self.take(8)?;
                    Value::Fixed64
                }
                2 => {
                    let n = self.varint()?;
                    Value::Bytes(self.take(n)?)
                }
                5 => {
                    let b = self.take(4)?;
                    Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                }
                w => return Err(format!("field {field}: unsupported wire type {w}")),
            };
            Ok((field, value))
        })())
    }
}

/// One vocabulary entry.
#[derive(Clone, Debug, PartialEq)]
pub struct SpmPiece {
    pub piece: String,
    pub score: f32,
    /// sentencepiece's `Type`: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub kind: i32,
}

/// What the tokenizer needs from a `spiece.model`.
#[derive(Clone, Debug, PartialEq)]
pub struct SpmModel {
    pub pieces: Vec<SpmPiece>,
    /// 1 unigram, 2 BPE, 3 word, 4 char.
    pub model_type: i32,
    pub byte_fallback: bool,
    pub treat_whitespace_as_suffix: bool,
    pub unk_id: i32,
    pub eos_id: i32,
    pub pad_id: i32,
    pub normalizer_name: String,
    pub precompiled_charsmap: Vec<u8>,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
}

fn as_i32(v: u64) -> i32 {
    // int32 fields are sign-extended to 64 bits on the wire.
    v as i64 as i32
}

fn piece(buf: &[u8]) -> Result<SpmPiece, String> {
    let mut p = SpmPiece {
        piece: String::new(),
        score: 0.0,
        kind: 1,
    };
    let mut f = Fields::new(buf);
    while let Some(r) = f.next_field() {
        match r? {
            (1, Value::Bytes(b)) => {
                p.piece = String::from_utf8(b.to_vec())
                    .map_err(|_| "a piece is not valid UTF-8".to_string())?;
            }
            (2, Value::Fixed32(bits)) => p.score = f32::from_bits(bits),
            (3, Value::Varint(v)) => p.kind = as_i32(v),
            (n @ 1..=3, _) => {
                return Err(format!("SentencePiece field {n} has the wrong wire type"))
            }
            _ => {}
        }
    }
    Ok(p)
}

/// Parses a serialized `ModelProto`.
pub fn parse(buf: &[u8]) -> Result<SpmModel, String> {
    let mut m = SpmModel {
        pieces: Vec::new(),
        model_type: 1,
        byte_fallback: false,
        treat_whitespace_as_suffix: false,
        unk_id: 0,
        eos_id: 2,
        pad_id: -1,
        normalizer_name: String::new(),
        precompiled_charsmap: Vec::new(),
        add_dummy_prefix: true,
        remove_extra_whitespaces: true,
        escape_whitespaces: true,
    };
    let mut seen_normalizer = false;
    let mut f = Fields::new(buf);
    while let Some(r) = f.next_field() {
        match r? {
            (1, Value::Bytes(b)) => m.pieces.push(piece(b)?),
            (2, Value::Bytes(b)) => {
                let mut t = Fields::new(b);
                while let Some(r) = t.next_field() {
                    match r? {
                        (3, Value::Varint(v)) => m.model_type = as_i32(v),
                        (24, Value::Varint(v)) => m.treat_whitespace_as_suffix = v != 0,
                        (35, Value::Varint(v)) => m.byte_fallback = v != 0,
                        (40, Value::Varint(v)) => m.unk_id = as_i32(v),
                        (42, Value::Varint(v)) => m.eos_id = as_i32(v),
                        (43, Value::Varint(v)) => m.pad_id = as_i32(v),
                        _ => {}
                    }
                }
            }
            (3, Value::Bytes(b)) => {
                seen_normalizer = true;
                let mut n = Fields::new(b);
                while let Some(r) = n.next_field() {
                    match r? {
                        (1, Value::Bytes(s)) => {
                            m.normalizer_name = String::from_utf8_lossy(s).into_owned()
                        }
                        (2, Value::Bytes(s)) => m.precompiled_charsmap = s.to_vec(),
                        (3, Value::Varint(v)) => m.add_dummy_prefix = v != 0,
                        (4, Value::Varint(v)) => m.remove_extra_whitespaces = v != 0,
                        (5, Value::Varint(v)) => m.escape_whitespaces = v != 0,
                        _ => {}
                    }
                }
            }
            (n @ 1..=3, _) => return Err(format!("ModelProto field {n} has the wrong wire type")),
            _ => {}
        }
    }
    if m.pieces.is_empty() {
        return Err("no pieces (not a sentencepiece model?)".into());
    }
    if !seen_normalizer {
        return Err("no normalizer_spec (not a sentencepiece model?)".into());
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_and_garbage_inputs_are_errors() {
        assert!(parse(&[]).is_err());
        assert!(parse(&[0x0a, 0x05, 0x0a]).is_err()); // length past the end
        assert!(parse(&[0x0b]).is_err()); // wire type 3 (group)
        assert!(parse(&[0x08, 0xff]).is_err()); // truncated varint
    }

    #[test]
    fn reads_a_hand_made_model() {
        // pieces { piece: "a" score: -1.5 type: 1 } normalizer_spec { add_dummy_prefix: false }
        let mut piece = vec![0x0a, 1, b'a', 0x15];
        piece.extend_from_slice(&(-1.5f32).to_le_bytes());
        piece.extend_from_slice(&[0x18, 1]);
        let mut buf = vec![0x0a, piece.len() as u8];
        buf.extend_from_slice(&piece);
        buf.extend_from_slice(&[0x1a, 2, 0x18, 0]);
        let m = parse(&buf).expect("valid");
        assert_eq!(m.pieces[0].piece, "a");
        assert_eq!(m.pieces[0].score, -1.5);
        assert!(!m.add_dummy_prefix);
        assert!(m.remove_extra_whitespaces);
    }
}
