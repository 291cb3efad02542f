//! `nijigen info`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use serde_json::{json, Map, Value};

use super::human_bytes;
use crate::formats::MetaValue;
use crate::pipeline;

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    nijigen info wan2.1-i2v-14b-480p-Q4_K_M.gguf\n  \
    nijigen info sdxl.safetensors --tensors\n  \
    nijigen info umt5-xxl-encoder-Q8_0.gguf --json | jq .architecture")]
pub struct InfoArgs {
    /// A weight file (.gguf, .safetensors, *.safetensors.index.json), or several shards.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Print one JSON object (format, architecture, config, metadata, tensors).
    #[arg(long)]
    pub json: bool,
    /// List every tensor (name, type, shape, bytes).
    #[arg(long)]
    pub tensors: bool,
}

pub fn run(args: InfoArgs) -> anyhow::Result<()> {
    let inspected = pipeline::inspect_files(&args.files)?;
    let (file, det) = (inspected.file(), inspected.detection());
    let info = &inspected.inspection;
    let params: u64 = file.tensors().iter().map(|t| t.numel()).sum();
    let mut by_type: BTreeMap<String, (usize, u64)> = BTreeMap::new();
    for t in file.tensors() {
        let e = by_type.entry(t.dtype.name()).or_default();
        e.0 += 1;
        e.1 += t.size;
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let metadata: Map<String, Value> = file
            .metadata()
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json()))
            .collect();
        let tensors: Vec<Value> = file
            .tensors()
            .iter()
            .map(|t| json!({"name": t.name, "type": t.dtype.name(), "shape": t.shape}))
            .collect();
        let types: Map<String, Value> = by_type
            .iter()
            .map(|(k, (n, b))| (k.clone(), json!({"tensors": n, "bytes": b})))
            .collect();
        let v = json!({
            "format": file.format().name(),
            "files": file.paths(),
            "gguf_version": file.gguf_version(),
            "architecture": det.architecture.name(),
            "layout": det.layout,
            "prefix": det.prefix,
            "summary": info.summary,
            "config": info.config,
            "components": det.components,
            "parameters": params,
            "tensor_bytes": file.data_bytes(),
            "types": types,
            "fp8_scaled": inspected.fp8_scaled(),
            "embedded_tokenizer": inspected.has_embedded_tokenizer(),
            "metadata": metadata,
            "tensors": tensors,
        });
        serde_json::to_writer_pretty(&mut out, &v)?;
        writeln!(out)?;
        return Ok(());
    }

    let files: Vec<String> = file
        .paths()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let format = match file.gguf_version() {
        Some(v) => format!("GGUF v{v}"),
        None => format!(
            "safetensors ({} file{})",
            files.len(),
            if files.len() == 1 { "" } else { "s" }
        ),
    };
    writeln!(out, "file:          {}", files.join(", "))?;
    writeln!(
        out,
        "format:        {format}, {} tensors, {}",
        file.tensors().len(),
        human_bytes(file.data_bytes())
    )?;
    writeln!(
        out,
        "architecture:  {} ({})",
        det.architecture.name(),
        det.architecture.description()
    )?;
    writeln!(out, "config:        {}", info.summary)?;
    writeln!(
        out,
        "layout:        {}{}",
        det.layout.name(),
        det.prefix
            .as_ref()
            .map(|p| format!(", prefix '{p}'"))
            .unwrap_or_default()
    )?;
    if det.components.len() > 1 {
        for c in &det.components {
            writeln!(
                out,
                "  component:   {} ({} tensors under '{}')",
                c.architecture.name(),
                c.tensors,
                c.prefix
            )?;
        }
    }
    if let Some(q) = inspected.fp8_scaled() {
        if q.layers > 0 {
            writeln!(
                out,
                "quantization:  fp8 scaled (ComfyUI), {} layers ({}); applied at load",
                q.layers,
                q.layout.describe()
            )?;
        }
        for (format, n) in &q.unsupported {
            writeln!(
                out,
                "quantization:  {format} (ComfyUI), {n} layers: not supported for loading \
                 (float8_e4m3fn and float8_e5m2 are)"
            )?;
        }
    }
    if inspected.has_embedded_tokenizer() {
        writeln!(
            out,
            "tokenizer:     embedded (spiece_model, sentencepiece); no --t5-tokenizer needed"
        )?;
    }
    writeln!(out, "parameters:    {}", human_count(params))?;
    writeln!(out, "types:")?;
    for (ty, (n, b)) in &by_type {
        writeln!(out, "  {ty:<8} {n:>6} tensors  {:>10}", human_bytes(*b))?;
    }
    if !file.metadata().is_empty() {
        writeln!(out, "metadata:")?;
        for (k, v) in file.metadata() {
            writeln!(out, "  {k} = {}", short_value(v))?;
        }
    }
    if args.tensors {
        writeln!(out, "tensors:")?;
        for t in file.tensors() {
            writeln!(
                out,
                "  {:<60} {:>8} {:<24} {:>12}",
                t.name,
                t.dtype.name(),
                format!("{:?}", t.shape),
                t.size
            )?;
        }
    }
    Ok(())
}

fn human_count(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=9_999_999 => format!("{:.2} M", n as f64 / 1e6),
        _ if n < 1_000_000_000 => format!("{:.1} M", n as f64 / 1e6),
        _ => format!("{:.2} B", n as f64 / 1e9),
    }
}

/// A metadata value for a terminal: long arrays and strings abbreviated.
fn short_value(v: &MetaValue) -> String {
    match v {
        MetaValue::String(s) if s.chars().count() > 120 => {
            format!(
                "{:?}... ({} chars)",
                s.chars().take(100).collect::<String>(),
                s.chars().count()
            )
        }
        MetaValue::String(s) => format!("{s:?}"),
        MetaValue::Array(a) if a.len() > 8 => {
            let head: Vec<String> = a.iter().take(4).map(short_value).collect();
            format!("[{}, ...] ({} values)", head.join(", "), a.len())
        }
        MetaValue::Array(a) => format!(
            "[{}]",
            a.iter().map(short_value).collect::<Vec<_>>().join(", ")
        ),
        MetaValue::F32(f) => f.to_string(),
        other => other.to_json().to_string(),
    }
}
