//! Read-only memory maps of weight files.

use std::fs::File;

/// Maps `file` read-only.
pub fn map_file(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: the map is read-only and we never hand out mutable access. The remaining hazard,
    // another process truncating or rewriting the file while it is mapped, is inherent to mmap
    // and is documented for users (do not edit model files while nijigen runs).
    unsafe { memmap2::Mmap::map(file) }
}

/// Drops the pages of `map` from this process's resident set (`MADV_DONTNEED`); the next read
/// faults them in again from the page cache or the file. Used when a model is done with its
/// weights but its file stays mapped (Wan2.2's high-noise expert before the low-noise one).
pub fn release_pages(map: &memmap2::Mmap) -> std::io::Result<()> {
    if map.is_empty() {
        return Ok(());
    }
    // SAFETY: the map is a read-only shared file mapping; MADV_DONTNEED on it discards no data
    // (its pages are the file's), and no slice into it is invalidated: later reads refault.
    unsafe { map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) }
}
