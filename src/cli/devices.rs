//! `nijigen devices`: the compute devices of this build, with their memory.

use std::io::Write;

use clap::Args;
use serde_json::json;

use super::human_bytes;
use crate::pipeline::devices;

#[derive(Debug, Args)]
pub struct DevicesArgs {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: DevicesArgs) -> anyhow::Result<()> {
    let devs = devices();
    let mut out = std::io::stdout().lock();
    if args.json {
        let v: Vec<_> = devs
            .iter()
            .map(|d| {
                json!({
                    "device": d.name,
                    "ggml_name": d.ggml_name,
                    "description": d.description,
                    "kind": d.kind,
                    "free_bytes": d.free_bytes,
                    "total_bytes": d.total_bytes,
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
        writeln!(
            out,
            "{:<10} {:<6} {:>12} {:>12}  {}",
            d.name,
            d.kind,
            human_bytes(d.free_bytes),
            human_bytes(d.total_bytes),
            d.description
        )?;
    }
    if !cfg!(nijigen_cuda) {
        writeln!(
            out,
            "(this build has no CUDA backend; build with --features cuda for NVIDIA GPUs)"
        )?;
    } else if !devs.iter().any(|d| d.is_gpu()) {
        writeln!(
            out,
            "(built with CUDA, but no GPU was found: check the driver and CUDA_VISIBLE_DEVICES)"
        )?;
    }
    Ok(())
}
