//! `nijigen devices`: the compute devices of this build, with their memory.

use std::io::Write;

use clap::Args;
use serde_json::json;

use super::human_bytes;
use crate::ggml::{self, DeviceKind};

#[derive(Debug, Args)]
pub struct DevicesArgs {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn spec_name(ggml_name: &str, kind: DeviceKind) -> String {
    // ggml names CUDA devices "CUDA0", "CUDA1"; `--device` spells them "cuda:0".
    let lower = ggml_name.to_ascii_lowercase();
    match lower.strip_prefix("cuda") {
        Some(idx) if kind != DeviceKind::Cpu && idx.chars().all(|c| c.is_ascii_digit()) => {
            format!("cuda:{idx}")
        }
        _ => lower,
    }
}

pub fn run(args: DevicesArgs) -> anyhow::Result<()> {
    let devs = ggml::devices();
    let mut out = std::io::stdout().lock();
    if args.json {
        let v: Vec<_> = devs
            .iter()
            .map(|d| {
                let (free, total) = d.memory();
                json!({
                    "device": spec_name(&d.name(), d.kind()),
                    "ggml_name": d.name(),
                    "description": d.description(),
                    "kind": format!("{:?}", d.kind()).to_lowercase(),
                    "free_bytes": free,
                    "total_bytes": total,
                })
            })
            .collect();
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<10} {:<6} {:>12} {:>12}  description",
        "device", "kind", "free", "total"
    )?;
    for d in &devs {
        let (free, total) = d.memory();
        writeln!(
            out,
            "{:<10} {:<6} {:>12} {:>12}  {}",
            spec_name(&d.name(), d.kind()),
            format!("{:?}", d.kind()).to_lowercase(),
            human_bytes(free),
            human_bytes(total),
            d.description()
        )?;
    }
    if !cfg!(nijigen_cuda) {
        writeln!(
            out,
            "(this build has no CUDA backend; build with --features cuda for NVIDIA GPUs)"
        )?;
    } else if !devs.iter().any(|d| d.kind() == DeviceKind::Gpu) {
        writeln!(
            out,
            "(built with CUDA, but no GPU was found: check the driver and CUDA_VISIBLE_DEVICES)"
        )?;
    }
    Ok(())
}
