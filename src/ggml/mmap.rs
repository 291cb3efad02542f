//! Read-only memory maps of weight files.

use std::fs::File;

/// Maps `file` read-only.
pub fn map_file(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: the map is read-only and we never hand out mutable access. The remaining hazard,
    // another process truncating or rewriting the file while it is mapped, is inherent to mmap
    // and is documented for users (do not edit model files while nijigen runs).
    unsafe { memmap2::Mmap::map(file) }
}
