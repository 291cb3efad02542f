//! Compares two PNG images, or two folders of PNG frames (pairwise, by sorted name), value by
//! value: prints the count of 8-bit values, the worst absolute difference, the mean and how
//! many differ. Used to check a GPU run against the CPU run of the same request:
//!
//!   cargo run --release --example compare_images -- cpu.png cuda.png
//!   compare_images cpu-frames/ cuda-frames/ --max 8
//!
//! Exits 1 when the worst difference is above `--max` (default: no limit).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn pngs(p: &Path) -> Result<Vec<PathBuf>, String> {
    if p.is_file() {
        return Ok(vec![p.to_path_buf()]);
    }
    let mut v: Vec<PathBuf> = std::fs::read_dir(p)
        .map_err(|e| format!("{}: {e}", p.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|f| f.extension().is_some_and(|x| x.eq_ignore_ascii_case("png")))
        .collect();
    v.sort();
    Ok(v)
}

fn run() -> Result<bool, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut paths = Vec::new();
    let mut max: Option<u8> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--max" {
            let v = it.next().ok_or("--max needs a value")?;
            max = Some(
                v.parse()
                    .map_err(|_| format!("--max {v}: expected 0-255"))?,
            );
        } else {
            paths.push(PathBuf::from(a));
        }
    }
    let [a, b] = &paths[..] else {
        return Err("usage: compare_images A B [--max N] (PNG files or folders of PNGs)".into());
    };
    let (fa, fb) = (pngs(a)?, pngs(b)?);
    if fa.len() != fb.len() || fa.is_empty() {
        return Err(format!(
            "{} has {} PNGs, {} has {}",
            a.display(),
            fa.len(),
            b.display(),
            fb.len()
        ));
    }
    let (mut n, mut worst, mut sum, mut differ) = (0u64, 0u8, 0u64, 0u64);
    for (x, y) in fa.iter().zip(&fb) {
        let load = |p: &Path| {
            nijigen::media::image::load_rgb(p).map_err(|e| format!("{}: {e}", p.display()))
        };
        let ((ra, wa, ha), (rb, wb, hb)) = (load(x)?, load(y)?);
        if (wa, ha) != (wb, hb) {
            return Err(format!(
                "{} is {wa}x{ha}, {} is {wb}x{hb}",
                x.display(),
                y.display()
            ));
        }
        for (p, q) in ra.iter().zip(&rb) {
            let d = p.abs_diff(*q);
            n += 1;
            sum += u64::from(d);
            worst = worst.max(d);
            differ += u64::from(d > 0);
        }
    }
    println!(
        "{} images, {n} values: worst |diff| {worst}, mean {:.4}, {differ} differ ({:.3} %)",
        fa.len(),
        sum as f64 / n as f64,
        100.0 * differ as f64 / n as f64
    );
    Ok(max.is_none_or(|m| worst <= m))
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("worst difference above --max");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
