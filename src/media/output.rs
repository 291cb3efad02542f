//! Output naming and atomic writes: a file appears under its final name only when complete.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{MediaError, Result};

/// Returns `path` if it does not exist or `overwrite` is set; otherwise the first free name of
/// the form `stem_0001.ext`, `stem_0002.ext`, ... (more digits past 9999).
///
/// The check is not atomic with the later write: two processes racing on the same name can
/// still pick the same one. [`AtomicFile::commit`] then replaces, never corrupts.
pub fn unique_path(path: &Path, overwrite: bool) -> PathBuf {
    if overwrite || !exists(path) {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path.extension().map(|e| e.to_string_lossy().into_owned());
    let mut n: u64 = 1;
    loop {
        let name = match &ext {
            Some(ext) => format!("{stem}_{n:04}.{ext}"),
            None => format!("{stem}_{n:04}"),
        };
        let candidate = path.with_file_name(name);
        if !exists(&candidate) {
            return candidate;
        }
        n += 1;
    }
}

fn exists(path: &Path) -> bool {
    // symlink_metadata: a dangling symlink still occupies the name.
    std::fs::symlink_metadata(path).is_ok()
}

/// A file written under a temporary name in the destination folder and renamed onto its final
/// path by [`commit`](Self::commit). Dropped without commit, the temporary file is removed, so an
/// interrupted run never leaves a partial output under the final name.
pub struct AtomicFile {
    target: PathBuf,
    temp: tempfile::NamedTempFile,
}

impl AtomicFile {
    /// Creates the temporary file next to `target` (same folder, so the rename is atomic).
    pub fn create(target: impl AsRef<Path>) -> Result<Self> {
        let target = target.as_ref().to_path_buf();
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "output".to_string());
        let prefix = format!(".{name}.");
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(".tmp");
        // tempfile creates 0600 files; outputs should get the mode `File::create` would give
        // (0666 less the umask), so that other users and tools can read them after the rename.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            builder.permissions(std::fs::Permissions::from_mode(0o666));
        }
        let temp = builder.tempfile_in(&dir).map_err(|source| MediaError::Io {
            path: target.clone(),
            source,
        })?;
        Ok(Self { target, temp })
    }

    /// The final path the file will have after `commit`.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// The temporary path being written.
    pub fn temp_path(&self) -> &Path {
        self.temp.path()
    }

    /// The underlying file.
    pub fn file_mut(&mut self) -> &mut File {
        self.temp.as_file_mut()
    }

    /// Flushes to disk and renames onto the target (replacing an existing file).
    pub fn commit(self) -> Result<PathBuf> {
        let target = self.target;
        self.temp
            .as_file()
            .sync_all()
            .map_err(|source| MediaError::Io {
                path: target.clone(),
                source,
            })?;
        self.temp.persist(&target).map_err(|e| MediaError::Io {
            path: target.clone(),
            source: e.error,
        })?;
        Ok(target)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.temp.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.temp.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_path_numbers_existing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img.png");
        assert_eq!(unique_path(&p, false), p);
        std::fs::write(&p, b"x").unwrap();
        assert_eq!(unique_path(&p, true), p);
        let p1 = dir.path().join("img_0001.png");
        assert_eq!(unique_path(&p, false), p1);
        std::fs::write(&p1, b"x").unwrap();
        assert_eq!(unique_path(&p, false), dir.path().join("img_0002.png"));
        let q = dir.path().join("noext");
        std::fs::write(&q, b"x").unwrap();
        assert_eq!(unique_path(&q, false), dir.path().join("noext_0001"));
    }

    #[test]
    fn atomic_file_removed_on_drop_and_committed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        let temp_path;
        {
            let mut f = AtomicFile::create(&target).unwrap();
            f.write_all(b"partial").unwrap();
            temp_path = f.temp_path().to_path_buf();
            assert!(temp_path.exists());
            assert_eq!(temp_path.parent(), target.parent());
        }
        assert!(!temp_path.exists());
        assert!(!target.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

        let mut f = AtomicFile::create(&target).unwrap();
        f.write_all(b"done").unwrap();
        assert_eq!(f.commit().unwrap(), target);
        assert_eq!(std::fs::read(&target).unwrap(), b"done");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn committed_file_has_ordinary_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        File::create(&plain).unwrap();
        let target = dir.path().join("atomic");
        AtomicFile::create(&target).unwrap().commit().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&target), mode(&plain));
    }

    #[test]
    fn atomic_file_missing_dir_names_target() {
        let err = AtomicFile::create("/nonexistent-dir-nijigen/x.png")
            .err()
            .unwrap();
        assert!(err.to_string().contains("/nonexistent-dir-nijigen/x.png"));
    }
}
