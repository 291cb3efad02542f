//! `nijigen convert`: safetensors (one file or shards) or GGUF in, GGUF out. Streaming: the
//! header is written first, then one tensor at a time is converted (rows in parallel with
//! rayon) and written, so memory stays at about one tensor, not the model.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::rules::{Choice, Override, Rules, Target};
use crate::formats::gguf::{GgufWriter, TensorDecl};
use crate::formats::names;
use crate::formats::quant::{self, Fp8Scaled};
use crate::formats::weights::WeightFile;
use crate::formats::{float, DType, FormatError, MetaValue, TensorInfo};
use crate::ggml::{self, GgmlType};

/// What the user asked for.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    pub inputs: Vec<PathBuf>,
    pub output: PathBuf,
    pub target: Target,
    pub overrides: Vec<Override>,
    /// Replace an existing output file.
    pub overwrite: bool,
}

/// Why a conversion failed.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("{}: {source}", path.display())]
    Output {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: refusing to overwrite an input file; choose another --output", path.display())]
    OutputIsInput { path: PathBuf },
    #[error("{}: exists; pass --overwrite to replace it", path.display())]
    OutputExists { path: PathBuf },
    #[error("{}: tensor '{tensor}': {what}", path.display())]
    Tensor {
        path: PathBuf,
        tensor: String,
        what: String,
    },
}

/// The decision for one tensor, as `--dry-run` prints it.
#[derive(Clone, Debug)]
pub struct PlannedTensor {
    pub name: String,
    /// PyTorch order.
    pub shape: Vec<u64>,
    pub from: DType,
    pub choice: Choice,
    pub in_bytes: u64,
    pub out_bytes: u64,
}

/// The tensors of `file` that are written: all but the quantization tensors of ComfyUI's
/// scaled fp8 files (scales, input scales, markers, `comfy_quant`: the scales are applied to
/// their weights) and raw-byte (U8) tensors such as an embedded tokenizer, which GGUF has no
/// tensor type for.
pub fn written(file: &WeightFile) -> impl Iterator<Item = &TensorInfo> {
    file.tensors()
        .iter()
        .filter(|t| t.dtype != DType::U8 && !quant::is_aux_name(&t.name))
}

/// Chooses every tensor's output type. Fails (before writing anything) on tensors that cannot
/// be stored, e.g. more dims than GGUF allows.
pub fn plan(file: &WeightFile, rules: &Rules) -> Result<Vec<PlannedTensor>, ConvertError> {
    written(file)
        .map(|t| {
            let shape = if t.shape.is_empty() {
                vec![1]
            } else {
                t.shape.clone()
            };
            let choice = rules.choose(&t.name, &shape, t.dtype);
            let out_bytes = TensorDecl::new(t.name.clone(), choice.ty, shape.clone())
                .byte_size()
                .map_err(|what| tensor_err(file, t, what))?;
            Ok(PlannedTensor {
                name: t.name.clone(),
                shape,
                from: t.dtype,
                choice,
                in_bytes: t.size,
                out_bytes,
            })
        })
        .collect()
}

fn tensor_err(file: &WeightFile, t: &TensorInfo, what: impl Into<String>) -> ConvertError {
    ConvertError::Tensor {
        path: file.paths().get(t.shard).cloned().unwrap_or_default(),
        tensor: t.name.clone(),
        what: what.into(),
    }
}

/// Metadata for the output: the source's GGUF metadata (minus what we set), then ours.
pub fn output_metadata(file: &WeightFile, rules: &Rules, arch: &str) -> Vec<(String, MetaValue)> {
    const OURS: &[&str] = &[
        "general.architecture",
        "general.file_type",
        "general.quantization_version",
        "general.alignment",
        "nijigen.source",
        "nijigen.rules",
    ];
    let mut md: Vec<(String, MetaValue)> = vec![(
        "general.architecture".into(),
        MetaValue::String(arch.into()),
    )];
    for (k, v) in file.metadata() {
        // safetensors metadata is free-form strings; keep it under a namespace.
        let key = if file.format() == crate::formats::weights::Format::Safetensors {
            format!("safetensors.{k}")
        } else {
            k.clone()
        };
        // The scales it describes are applied: the output has no scaled layers.
        if !OURS.contains(&key.as_str()) && key != "safetensors._quantization_metadata" {
            md.push((key, v.clone()));
        }
    }
    md.push((
        "general.file_type".into(),
        MetaValue::U32(rules.target().file_type()),
    ));
    md.push(("general.quantization_version".into(), MetaValue::U32(2)));
    let sources = file
        .paths()
        .iter()
        .map(|p| {
            MetaValue::String(
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            )
        })
        .collect();
    md.push(("nijigen.source".into(), MetaValue::Array(sources)));
    let mut rule_text = vec![MetaValue::String(format!("--type {}", rules.target()))];
    rule_text.extend(
        rules
            .overrides()
            .iter()
            .map(|o| MetaValue::String(format!("--tensor-type {}", o.text))),
    );
    md.push(("nijigen.rules".into(), MetaValue::Array(rule_text)));
    md
}

/// The `general.architecture` value for a file: the source's, else from the detected names.
pub fn architecture_name(file: &WeightFile) -> String {
    if let Some(a) = file.meta("general.architecture").and_then(|v| v.as_str()) {
        return a.to_string();
    }
    use names::Architecture as A;
    let det = names::detect(file.tensors(), file.metadata());
    match det.architecture {
        // What city96's files and ComfyUI-GGUF use.
        A::WAN_DIT_I2V | A::WAN_DIT_T2V => "wan",
        A::UMT5 => "t5encoder",
        A::SDXL_CHECKPOINT | A::SDXL_UNET => "sdxl",
        A::CLIP_L | A::CLIP_G => "clip",
        other => other.name(),
    }
    .to_string()
}

/// Progress events for the caller's progress bar.
pub enum Progress<'a> {
    Start { tensors: usize, bytes: u64 },
    Tensor { name: &'a str, out_bytes: u64 },
}

/// Result figures.
#[derive(Clone, Debug)]
pub struct ConvertSummary {
    pub tensors: usize,
    pub in_bytes: u64,
    pub out_bytes: u64,
    pub file_bytes: u64,
}

/// Removes the temporary output unless the conversion completed.
struct TempGuard {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Runs the conversion. The output is written to a temporary file beside it and renamed at
/// the end; a failed run leaves no output.
pub fn convert(
    opts: &ConvertOptions,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<ConvertSummary, ConvertError> {
    let file = WeightFile::open(&opts.inputs)?;
    for p in file.paths() {
        if same_file(p, &opts.output) {
            return Err(ConvertError::OutputIsInput {
                path: opts.output.clone(),
            });
        }
    }
    if opts.output.exists() && !opts.overwrite {
        return Err(ConvertError::OutputExists {
            path: opts.output.clone(),
        });
    }
    let fp8 = Fp8Scaled::read(&file)?;
    if let Some(q) = &fp8 {
        q.check_loadable(&file)?;
    }
    let rules = Rules::new(opts.target, opts.overrides.clone());
    let planned = plan(&file, &rules)?;
    let arch = architecture_name(&file);
    let mut metadata = output_metadata(&file, &rules, &arch);
    // An embedded sentencepiece tokenizer (ComfyUI's `spiece_model`) becomes llama.cpp's
    // `tokenizer.ggml.*` metadata, where GGUF readers (ours, llama.cpp) find it.
    if let Some(t) = file.spiece_model() {
        if file.meta("tokenizer.ggml.model").is_none() {
            let path = file.paths().first().cloned().unwrap_or_default();
            let md =
                crate::text::umt5::gguf_metadata_from_spiece(file.data(t), &path).map_err(|e| {
                    let why = e.reason();
                    tensor_err(
                        &file,
                        t,
                        format!("embedded tokenizer could not be read: {why}"),
                    )
                })?;
            metadata.extend(md);
        }
    }
    let decls: Vec<TensorDecl> = planned
        .iter()
        .map(|p| TensorDecl::new(p.name.clone(), p.choice.ty, p.shape.clone()))
        .collect();

    let out_err = |e| ConvertError::Output {
        path: opts.output.clone(),
        source: e,
    };
    let dir = opts
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = opts
        .output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut guard = TempGuard {
        path: tmp.clone(),
        keep: false,
    };
    let f = File::create(&tmp).map_err(out_err)?;
    let mut writer = GgufWriter::new(
        &opts.output,
        BufWriter::with_capacity(8 << 20, f),
        &metadata,
        &decls,
    )?;

    let total_out: u64 = planned.iter().map(|p| p.out_bytes).sum();
    progress(Progress::Start {
        tensors: planned.len(),
        bytes: total_out,
    });
    let mut in_bytes = 0;
    for (t, p) in written(&file).zip(&planned) {
        let src = file.data(t);
        in_bytes += src.len() as u64;
        let scale = fp8.as_ref().and_then(|q| q.scale_of(&t.name));
        if let Some(scale) = scale {
            let s = file
                .tensor(scale)
                .ok_or_else(|| tensor_err(&file, t, format!("its scale \"{scale}\" is missing")))?;
            let out = convert_scaled(src, t, file.data(s), s, p)
                .map_err(|what| tensor_err(&file, t, what))?;
            writer.write_tensor(&p.name, &out)?;
        } else if t.dtype == DType::Ggml(p.choice.ty) {
            writer.write_tensor(&p.name, src)?;
        } else {
            let out = convert_tensor(src, t.dtype, p.choice.ty, &p.shape, p.out_bytes)
                .map_err(|what| tensor_err(&file, t, what))?;
            writer.write_tensor(&p.name, &out)?;
        }
        progress(Progress::Tensor {
            name: &p.name,
            out_bytes: p.out_bytes,
        });
    }
    let mut buf = writer.finish()?;
    buf.flush().map_err(out_err)?;
    let f = buf.into_inner().map_err(|e| out_err(e.into_error()))?;
    f.sync_all().map_err(out_err)?;
    drop(f);
    let file_bytes = fs::metadata(&tmp).map_err(out_err)?.len();
    fs::rename(&tmp, &opts.output).map_err(out_err)?;
    guard.keep = true;
    Ok(ConvertSummary {
        tensors: planned.len(),
        in_bytes,
        out_bytes: total_out,
        file_bytes,
    })
}

/// Values per parallel work item (about 4 MiB of f32).
const CHUNK_VALUES: usize = 1 << 20;

/// Converts one tensor's bytes from `from` to `to`, rows in parallel.
fn convert_tensor(
    src: &[u8],
    from: DType,
    to: GgmlType,
    shape: &[u64],
    out_bytes: u64,
) -> Result<Vec<u8>, String> {
    let row = shape.last().copied().unwrap_or(1) as usize;
    let numel: u64 = shape.iter().product();
    let rows = (numel / row as u64) as usize;
    let in_row = from
        .bytes_for(row as u64)
        .ok_or("input row is not a whole number of blocks")? as usize;
    let out_row = to
        .bytes_for(row as u64)
        .ok_or("output row is not a whole number of blocks")? as usize;
    if in_row * rows != src.len() || out_row as u64 * rows as u64 != out_bytes {
        return Err(format!(
            "size mismatch: {} bytes for {rows} rows of {row}",
            src.len()
        ));
    }
    let rows_per_chunk = (CHUNK_VALUES / row.max(1)).max(1);
    let mut out = vec![0u8; out_bytes as usize];
    out.par_chunks_mut(out_row * rows_per_chunk)
        .zip(src.par_chunks(in_row * rows_per_chunk))
        .try_for_each(|(dst, s)| {
            let n = s.len() / in_row * row;
            let mut vals = vec![0f32; n];
            decode(from, s, &mut vals)?;
            ggml::quantize(to, &vals, row, dst).map_err(|e| e.to_string())?;
            Ok::<(), String>(())
        })?;
    Ok(out)
}

/// A scaled fp8 weight: dequantized whole (float(q) x scale, in f32), then stored as planned.
fn convert_scaled(
    src: &[u8],
    t: &TensorInfo,
    scale: &[u8],
    s: &TensorInfo,
    p: &PlannedTensor,
) -> Result<Vec<u8>, String> {
    let mut vals = vec![0f32; t.numel() as usize];
    decode(t.dtype, src, &mut vals)?;
    let mut sv = vec![0f32; s.numel() as usize];
    decode(s.dtype, scale, &mut sv).map_err(|e| format!("its scale: {e}"))?;
    quant::apply_scale(t, &mut vals, &sv, &s.shape)?;
    let row = p.shape.last().copied().unwrap_or(1) as usize;
    let out_row = p
        .choice
        .ty
        .bytes_for(row as u64)
        .ok_or("output row is not a whole number of blocks")? as usize;
    let rows_per_chunk = (CHUNK_VALUES / row.max(1)).max(1);
    let mut out = vec![0u8; p.out_bytes as usize];
    out.par_chunks_mut(out_row * rows_per_chunk)
        .zip(vals.par_chunks(row * rows_per_chunk))
        .try_for_each(|(dst, v)| {
            ggml::quantize(p.choice.ty, v, row, dst)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })?;
    Ok(out)
}

/// Any stored type to f32.
fn decode(from: DType, bytes: &[u8], out: &mut [f32]) -> Result<(), String> {
    match from {
        DType::Ggml(t) if t.is_quantized() => {
            ggml::dequantize(t, bytes, out).map_err(|e| e.to_string())
        }
        _ => float::to_f32(from, bytes, out).map_err(|e| e.to_string()),
    }
}
