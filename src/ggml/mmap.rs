//! Read-only memory maps of weight files.

use std::fs::File;

use memmap2::Mmap;

/// Maps `file` read-only into memory.
///
/// A zero-length file gives an empty map (memmap2 handles that case itself), so callers see
/// `len() == 0` and report "empty file" in their own words.
#[allow(unsafe_code)]
pub fn map_file(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: the map is read-only and we never hand out mutable access to it. The remaining
    // hazard of file-backed maps, another process truncating or rewriting the file while it is
    // mapped (SIGBUS or changing bytes), is outside our control; like every mmap-based model
    // loader we document it rather than copy whole weight files into memory.
    unsafe { Mmap::map(file) }
}
