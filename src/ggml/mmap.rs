//! Read-only memory maps of weight files. The one `unsafe` call memmap2 requires lives here so
//! the readers in `formats` stay safe code.

use std::fs::File;
use std::io;

use memmap2::Mmap;

/// Maps the whole of `file` read-only.
///
/// Caveat: the map stays valid only while no other process truncates or rewrites the file. Weight
/// files are never modified in place by nijigen (the converter writes a temp file and renames
/// it), and readers check every offset against the length seen at map time, so the remaining risk
/// is an outside process shrinking the file under us (SIGBUS), the same as for every mmap reader.
#[allow(unsafe_code)]
pub fn map_file(file: &File) -> io::Result<Mmap> {
    // SAFETY: the map is read-only (`Mmap`, never `MmapMut`), so we never write through it; the
    // bytes are only read as `&[u8]` (no typed views whose validity depends on content). Another
    // process mutating or truncating the file while mapped is the documented caveat above.
    unsafe { Mmap::map(file) }
}
