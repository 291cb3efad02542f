//! Fuzzes the safetensors parser: any bytes must give Ok or Err, never a panic or crash; and
//! every tensor the parser accepts must lie inside the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = nijigen::formats::safetensors::parse(Path::new("fuzz.safetensors"), data) {
        for t in &h.tensors {
            let end = t.offset.checked_add(t.size).expect("offset + size overflows");
            assert!(end <= data.len() as u64, "tensor {} past the end", t.name);
        }
    }
});
