//! The sidecar JSON next to an output (`clip.mp4.json`).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{io_err, Result};
use crate::media::output::AtomicFile;
use crate::media::MediaError;

/// The sidecar path for an output: the full file name plus `.json` (`clip.mp4` ->
/// `clip.mp4.json`), so `clip.mp4` and `clip.gif` never share one.
pub fn sidecar_path(output: &Path) -> PathBuf {
    let mut name = output
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "output".into());
    name.push(".json");
    output.with_file_name(name)
}

/// Writes `json` to [`sidecar_path`]`(output)` atomically and returns that path. The JSON must
/// parse; it is written as given. An existing sidecar is replaced: it belongs to `output`,
/// whose name [`VideoWriter`](super::VideoWriter) has already made unique.
pub fn write_sidecar_json(output: impl AsRef<Path>, json: &str) -> Result<PathBuf> {
    let path = sidecar_path(output.as_ref());
    if let Err(e) = serde_json::from_str::<serde_json::Value>(json) {
        return Err(MediaError::Parameters(format!(
            "sidecar {}: invalid JSON: {e}",
            path.display()
        ))
        .into());
    }
    let mut file = AtomicFile::create(&path)?;
    file.write_all(json.as_bytes())
        .and_then(|()| {
            if json.ends_with('\n') {
                Ok(())
            } else {
                file.write_all(b"\n")
            }
        })
        .map_err(io_err(&path))?;
    Ok(file.commit()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_name_and_validation() {
        assert_eq!(
            sidecar_path(Path::new("/x/clip.mp4")),
            Path::new("/x/clip.mp4.json")
        );
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("clip.mp4");
        let p = write_sidecar_json(&out, "{\"seed\":1}").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\"seed\":1}\n");
        assert!(write_sidecar_json(&out, "{not json").is_err());
    }
}
