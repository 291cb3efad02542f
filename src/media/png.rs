//! PNG output with the generation parameters in a `parameters` text chunk.

use std::io::{BufWriter, Write};
use std::path::Path;

use super::output::AtomicFile;
use super::params::GenerationParams;
use super::{check_rgb, MediaError, Result};

/// The PNG text keyword A1111, Forge, CivitAI and image viewers read.
pub const PARAMETERS_KEY: &str = "parameters";

/// Writes 8-bit RGB pixels (row-major, `width * height * 3` bytes) to `path` as a PNG with the
/// A1111 infotext of `params` in a `parameters` chunk. The chunk is tEXt when the text is ASCII
/// and iTXt (UTF-8) otherwise, as PIL/A1111 do for text that Latin-1 cannot carry; Latin-1 tEXt
/// is avoided for non-ASCII text because many readers decode tEXt as UTF-8.
///
/// The file is written under a temporary name in the same folder and renamed when complete.
/// An existing file at `path` is replaced; use [`super::output::unique_path`] first to avoid it.
pub fn write_png(
    path: impl AsRef<Path>,
    rgb: &[u8],
    width: u32,
    height: u32,
    params: &GenerationParams,
) -> Result<()> {
    let path = path.as_ref();
    check_rgb(&path.display().to_string(), rgb, width, height)?;
    let text = params.to_a1111();
    let mut file = AtomicFile::create(path)?;
    let enc_err = |source| MediaError::PngEncode {
        path: path.to_path_buf(),
        source,
    };
    {
        let mut sink = BufWriter::new(file.file_mut());
        let mut enc = ::png::Encoder::new(&mut sink, width, height);
        enc.set_color(::png::ColorType::Rgb);
        enc.set_depth(::png::BitDepth::Eight);
        if text.is_ascii() {
            enc.add_text_chunk(PARAMETERS_KEY.to_string(), text)
                .map_err(enc_err)?;
        } else {
            enc.add_itxt_chunk(PARAMETERS_KEY.to_string(), text)
                .map_err(enc_err)?;
        }
        let mut writer = enc.write_header().map_err(enc_err)?;
        writer.write_image_data(rgb).map_err(enc_err)?;
        writer.finish().map_err(enc_err)?;
        sink.flush().map_err(|source| MediaError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    }
    file.commit()?;
    tracing::debug!(path = %path.display(), width, height, "wrote PNG");
    Ok(())
}

/// Reads the `parameters` text (tEXt, zTXt or iTXt) of a PNG file, `None` when it has none.
/// Only chunks before the image data are seen (where A1111 and nijigen put it).
pub fn read_parameters(path: impl AsRef<Path>) -> Result<Option<String>> {
    let path = path.as_ref();
    let io_err = |source| MediaError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    let dec = ::png::Decoder::new(std::io::BufReader::new(file));
    let reader = dec.read_info().map_err(|e| MediaError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    let info = reader.info();
    if let Some(t) = info
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == PARAMETERS_KEY)
    {
        return Ok(Some(t.text.clone()));
    }
    if let Some(t) = info
        .compressed_latin1_text
        .iter()
        .find(|t| t.keyword == PARAMETERS_KEY)
    {
        return t.get_text().map(Some).map_err(|e| MediaError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        });
    }
    if let Some(t) = info.utf8_text.iter().find(|t| t.keyword == PARAMETERS_KEY) {
        return t.get_text().map(Some).map_err(|e| MediaError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        });
    }
    Ok(None)
}
