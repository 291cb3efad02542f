//! `nijigen convert`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::{human_bytes, set_threads, WithHint};
use crate::formats::weights::WeightFile;
use crate::quantize::{self, ConvertOptions, Override, Progress, Rules, Target};

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    nijigen convert wan2.1_i2v_480p_14B_fp16.safetensors -o wan-i2v-14b-Q4_K_M.gguf --type q4_k_m\n  \
    nijigen convert model-0000*-of-00002.safetensors -o model-Q8_0.gguf --type q8_0\n  \
    nijigen convert umt5_xxl_fp8_e4m3fn_scaled.safetensors -o umt5-xxl-Q8_0.gguf --type q8_0\n  \
    nijigen convert unet.safetensors -o unet.gguf --type q4_k_m --tensor-type 'attn2\\.to_v=q8_0' --dry-run")]
pub struct ConvertArgs {
    /// Input: a .safetensors file, its shards, a *.safetensors.index.json, or a .gguf.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// Output GGUF file.
    #[arg(short, long, value_name = "OUT.gguf")]
    pub output: PathBuf,
    /// Target: a ggml type (f32, f16, bf16, q8_0, q6_k, q5_k, q4_k, q5_0, q5_1, q4_0, q4_1,
    /// q3_k, q2_k, iq4_nl, iq4_xs, ...) or a mix (q3_k_s, q3_k_m, q4_k_s, q4_k_m, q5_k_s, q5_k_m).
    #[arg(short, long = "type", value_name = "TYPE", value_parser = parse_target)]
    pub target: Target,
    /// Per-tensor type override REGEX=TYPE (repeatable; first match wins), e.g. 'ffn\.2=q8_0'.
    #[arg(long = "tensor-type", value_name = "REGEX=TYPE", value_parser = parse_override)]
    pub tensor_type: Vec<Override>,
    /// Print the per-tensor plan (name, shape, from, to, bytes) and the total; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Worker threads for quantization (default: all cores) [default: 0]
    #[arg(short = 'j', long)]
    pub threads: Option<usize>,
    /// Replace OUT.gguf if it exists.
    #[arg(long)]
    pub overwrite: bool,
}

fn parse_target(s: &str) -> Result<Target, String> {
    Target::parse(s)
}

fn parse_override(s: &str) -> Result<Override, String> {
    Override::parse(s)
}

pub fn run(args: ConvertArgs, quiet: bool) -> anyhow::Result<()> {
    set_threads(args.threads.unwrap_or(super::settings::THREADS));
    if args.dry_run {
        return dry_run(&args);
    }
    let opts = ConvertOptions {
        inputs: args.inputs.clone(),
        output: args.output.clone(),
        target: args.target,
        overrides: args.tensor_type.clone(),
        overwrite: args.overwrite,
    };
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let (mut done, mut total) = (0usize, 0usize);
    let summary = quantize::convert(&opts, |p| match p {
        Progress::Start { tensors, bytes } => {
            total = tensors;
            bar.set_length(bytes);
        }
        Progress::Tensor { name, out_bytes } => {
            done += 1;
            bar.inc(out_bytes);
            bar.set_message(format!("{done}/{total} {name}"));
        }
    })
    .map_err(|e| match e {
        quantize::ConvertError::OutputExists { .. } => anyhow::Error::new(WithHint {
            error: e.to_string(),
            hint: "pass --overwrite, or choose another --output".into(),
        }),
        e => anyhow::Error::new(e),
    })?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    if !quiet {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "wrote {} ({} tensors, {}; read {}) in {secs:.1} s",
            args.output.display(),
            summary.tensors,
            human_bytes(summary.file_bytes),
            human_bytes(summary.in_bytes),
        )?;
    }
    Ok(())
}

fn dry_run(args: &ConvertArgs) -> anyhow::Result<()> {
    let file = WeightFile::open(&args.inputs)?;
    let rules = Rules::new(args.target, args.tensor_type.clone());
    let planned = quantize::plan(&file, &rules)?;
    let mut out = std::io::stdout().lock();
    let w = planned
        .iter()
        .map(|p| p.name.len())
        .max()
        .unwrap_or(4)
        .clamp(4, 80);
    writeln!(
        out,
        "{:<w$}  {:<22}  {:>8}  {:>8}  {:>10}  why",
        "name", "shape", "from", "to", "bytes"
    )
    .context("writing the plan")?;
    let (mut tin, mut tout) = (0u64, 0u64);
    for p in &planned {
        let shape = format!("{:?}", p.shape);
        writeln!(
            out,
            "{:<w$}  {:<22}  {:>8}  {:>8}  {:>10}  {}",
            p.name,
            shape,
            p.from.name(),
            p.choice.ty.lower_name(),
            p.out_bytes,
            p.choice.reason
        )?;
        tin += p.in_bytes;
        tout += p.out_bytes;
    }
    writeln!(
        out,
        "total: {} tensors, {} -> {} of tensor data ({} {})",
        planned.len(),
        human_bytes(tin),
        human_bytes(tout),
        args.target,
        if args.tensor_type.is_empty() {
            String::new()
        } else {
            format!("with {} override(s)", args.tensor_type.len())
        }
    )?;
    Ok(())
}
