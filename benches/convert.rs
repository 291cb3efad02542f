//! Conversion benchmark: speed and peak anonymous memory of `nijigen convert` on a synthetic
//! Wan-block-shaped safetensors file (random F16 weights), for a few target types.
//!
//! `cargo bench --bench convert [-- SIZE_MIB]` (default 1024 MiB of weights). Prints figures;
//! asserts nothing. Peak anonymous RAM (RssAnon, sampled every 5 ms) excludes the page cache
//! of the memory-mapped input, which the kernel can drop at any time.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nijigen::quantize::{convert, ConvertOptions, Target};

fn rss_anon_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("RssAnon:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Writes a safetensors file of Wan-block-like linears (dim 5120 -> `dim`), F16 random values.
fn write_model(path: &Path, total_mib: u64) -> std::io::Result<u64> {
    let dim = 5120u64;
    let shapes: Vec<(String, [u64; 2])> = {
        let mut v = Vec::new();
        let mut bytes = 0;
        let mut i = 0;
        while bytes < total_mib << 20 {
            for (n, s) in [
                ("self_attn.q", [dim, dim]),
                ("self_attn.v", [dim, dim]),
                ("ffn.0", [13824, dim]),
            ] {
                v.push((format!("blocks.{i}.{n}.weight"), s));
                bytes += s[0] * s[1] * 2;
            }
            v.push((format!("blocks.{i}.norm3.weight"), [1, dim]));
            i += 1;
        }
        v
    };
    let mut header = String::from("{");
    let mut off = 0u64;
    for (k, (name, s)) in shapes.iter().enumerate() {
        let n = s[0] * s[1] * 2;
        let shape = if s[0] == 1 {
            format!("[{}]", s[1])
        } else {
            format!("[{},{}]", s[0], s[1])
        };
        if k > 0 {
            header.push(',');
        }
        header.push_str(&format!(
            "\"{name}\":{{\"dtype\":\"F16\",\"shape\":{shape},\"data_offsets\":[{off},{}]}}",
            off + n
        ));
        off += n;
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut w = BufWriter::with_capacity(1 << 22, File::create(path)?);
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(header.as_bytes())?;
    let mut s = 0x1234_5678_9abc_def0u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = off;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        for c in buf[..n].chunks_exact_mut(2) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let v = ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.05;
            c.copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    w.flush()?;
    Ok(off)
}

fn main() {
    let mib: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1024);
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("model.safetensors");
    let bytes = write_model(&input, mib).expect("writing the synthetic model");
    println!(
        "input: {} MiB of F16 linears (Wan block shapes), {} threads",
        bytes >> 20,
        rayon::current_num_threads()
    );
    println!(
        "{:<8} {:>9} {:>10} {:>11} {:>16}",
        "type", "seconds", "MiB/s in", "out MiB", "peak anon MiB"
    );
    for ty in ["q8_0", "q4_k_m", "q4_k", "q3_k_s"] {
        let output = dir.path().join(format!("out-{ty}.gguf"));
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let base = rss_anon_kib();
        let sampler = {
            let (peak, stop) = (peak.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_anon_kib(), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        let t = Instant::now();
        let opts = ConvertOptions {
            inputs: vec![input.clone()],
            output: output.clone(),
            target: Target::parse(ty).expect("type"),
            overrides: vec![],
            overwrite: true,
        };
        let summary = convert(&opts, |_| {}).expect("convert");
        let secs = t.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let _ = sampler.join();
        let peak_mib = peak.load(Ordering::Relaxed).saturating_sub(base) as f64 / 1024.0;
        println!(
            "{ty:<8} {secs:>9.2} {:>10.1} {:>11.1} {:>16.1}",
            (bytes >> 20) as f64 / secs,
            summary.file_bytes as f64 / 1048576.0,
            peak_mib
        );
        let _ = std::fs::remove_file(&output);
    }
}
