//! Tiny random-weight models of both stages, for `nijigen demo` and the tests: the real
//! architectures (the tensor names and layouts of the files users download) at tiny widths, so
//! the whole pipeline runs on a CPU in seconds with no download.
//!
//! Each architecture has one tensor table (a file here: names, shapes and how the values are
//! drawn, from its sizes), from which the demo writes its files and the tests theirs. The
//! demo's sizes are those of the test fixtures (tests/fixtures/sdxl_pipeline and
//! tests/fixtures/wan_pipeline, whose recipes tests/demo.rs compares with these lists); the
//! tables at other sizes are compared with the names dumped from the reference implementations
//! (tests/fixtures/names). The values come from a counter-based hash: nothing is read at run
//! time. The weights are random, so the pictures are noise-like patterns, not anime; the point
//! is to see every stage run.
//!
//! Files (in the cache folder):
//! - `demo_sdxl.safetensors`: one SDXL checkpoint in the ldm single-file layout (UNet, CLIP-L,
//!   bigG, VAE), F16, as CivitAI checkpoints are.
//! - `demo_wan_i2v.gguf`: a Wan2.1 I2V DiT (original names, 5-D patch embedding), F32.
//! - `demo_umt5.gguf`: umT5 with llama.cpp names and a small Unigram tokenizer in
//!   `tokenizer.ggml.*`, as city96's umT5 GGUF.
//! - `demo_clip_vision.safetensors`: CLIP vision H (HF names), F32.
//! - `demo_wan_vae.safetensors`: the Wan VAE (original names), F32.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::formats::gguf::{GgufWriter, TensorDecl};
use crate::formats::{FormatError, MetaValue};
use crate::ggml::GgmlType;

pub mod clip_text;
pub mod clip_vision;
mod table;
#[cfg(test)]
mod tests;
pub mod umt5;
pub mod unet_sdxl;
pub mod vae_sdxl;
pub mod wan_dit;
pub mod wan_vae;

pub use clip_text::ClipTextSizes;
pub use clip_vision::ClipVisionSizes;
pub use table::{hash_values, Init, Table, TensorSpec};
pub use umt5::Umt5Sizes;
pub use unet_sdxl::UnetSizes;
pub use vae_sdxl::SdxlVaeSizes;
pub use wan_dit::WanDitSizes;
pub use wan_vae::WanVaeSizes;

/// Changes whenever the generated files change, so a cache built by another version is rebuilt.
const DEMO_VERSION: u32 = 1;

/// Why the demo models could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Format(#[from] FormatError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DemoError + '_ {
    move |source| DemoError::Io {
        path: path.to_path_buf(),
        source,
    }
}

// ---------------------------------------------------------------------------------------------
// The demo's models

/// The SDXL checkpoint's tensors (ldm single-file prefixes).
pub fn sdxl_checkpoint() -> Vec<TensorSpec> {
    let mut s = unet_sdxl::tensors(&UnetSizes::DEMO, "model.diffusion_model.");
    s.extend(vae_sdxl::tensors(&SdxlVaeSizes::DEMO, "first_stage_model."));
    s.extend(clip_text::hf(
        &ClipTextSizes::DEMO_L,
        "conditioner.embedders.0.transformer.",
    ));
    s.extend(clip_text::open_clip(
        &ClipTextSizes::DEMO_G,
        "conditioner.embedders.1.model.",
    ));
    s
}

/// The Wan2.1 I2V DiT in the original names.
pub fn wan_dit() -> Vec<TensorSpec> {
    wan_dit::tensors(&WanDitSizes::DEMO)
}

/// umT5 in llama.cpp names.
pub fn umt5() -> Vec<TensorSpec> {
    umt5::tensors(&Umt5Sizes::DEMO)
}

/// CLIP vision H in HF names (without the `vision_model.` prefix, as Comfy's file has it).
pub fn clip_vision() -> Vec<TensorSpec> {
    clip_vision::tensors(&ClipVisionSizes::DEMO, "")
}

/// The Wan VAE in the original names.
pub fn wan_vae() -> Vec<TensorSpec> {
    wan_vae::tensors(&WanVaeSizes::DEMO)
}

/// The tensors of every demo file.
fn all_files() -> [Vec<TensorSpec>; 5] {
    [
        sdxl_checkpoint(),
        wan_dit(),
        umt5(),
        clip_vision(),
        wan_vae(),
    ]
}

// ---------------------------------------------------------------------------------------------
// Writers

/// Element type of a written safetensors file.
#[derive(Clone, Copy)]
enum StType {
    F32,
    F16,
}

/// Writes a safetensors file (values from the hash, seeds `seed0 + index`).
fn write_safetensors(
    path: &Path,
    specs: &[TensorSpec],
    seed0: u64,
    ty: StType,
) -> Result<(), DemoError> {
    let tag = match ty {
        StType::F32 => "F32",
        StType::F16 => "F16",
    };
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::json!({"format": "pt", "nijigen.demo": DEMO_VERSION.to_string()}),
    );
    let mut data = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let start = data.len();
        for v in spec.values(seed0 + i as u64) {
            match ty {
                StType::F32 => data.extend_from_slice(&v.to_le_bytes()),
                StType::F16 => data.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
            }
        }
        header.insert(
            spec.name.clone(),
            serde_json::json!({"dtype": tag, "shape": spec.shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut text = serde_json::Value::Object(header).to_string();
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut f = std::fs::File::create(path).map_err(io_err(path))?;
    f.write_all(&(text.len() as u64).to_le_bytes())
        .and_then(|()| f.write_all(text.as_bytes()))
        .and_then(|()| f.write_all(&data))
        .and_then(|()| f.sync_all())
        .map_err(io_err(path))
}

/// Writes an F32 GGUF with `metadata` (values from the hash, seeds `seed0 + index`).
fn write_gguf(
    path: &Path,
    specs: &[TensorSpec],
    seed0: u64,
    metadata: &[(String, MetaValue)],
) -> Result<(), DemoError> {
    let decls: Vec<TensorDecl> = specs
        .iter()
        .map(|s| TensorDecl::new(s.name.clone(), GgmlType::F32, s.shape.clone()))
        .collect();
    let f = std::fs::File::create(path).map_err(io_err(path))?;
    let mut w = GgufWriter::new(path, std::io::BufWriter::new(f), metadata, &decls)?;
    for (i, spec) in specs.iter().enumerate() {
        let v = spec.values(seed0 + i as u64);
        w.write_tensor(&spec.name, bytemuck::cast_slice(&v))?;
    }
    let out = w.finish()?;
    out.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .map_err(io_err(path))
}

// ---------------------------------------------------------------------------------------------
// The cache

/// The demo's model files.
#[derive(Clone, Debug)]
pub struct DemoModels {
    pub dir: PathBuf,
    pub sdxl: PathBuf,
    pub dit: PathBuf,
    pub t5: PathBuf,
    pub clip_vision: PathBuf,
    pub vae: PathBuf,
    /// Whether this call wrote them (else they were found up to date).
    pub built: bool,
}

const STAMP: &str = "demo.stamp";

/// A fingerprint of everything written: version, names, shapes. A cache with another stamp is
/// stale.
fn stamp() -> String {
    let mut h = 0xCBF2_9CE4_8422_2325u64;
    let mut eat = |b: &[u8]| {
        for &x in b {
            h = (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01B3);
        }
    };
    for list in all_files() {
        for t in list {
            eat(t.name.as_bytes());
            for d in t.shape {
                eat(&d.to_le_bytes());
            }
        }
    }
    format!("nijigen demo v{DEMO_VERSION} {h:016x}\n")
}

/// The default cache folder: `$XDG_CACHE_HOME/nijigen/demo`, else `~/.cache/nijigen/demo`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".cache"),
    };
    Some(base.join("nijigen").join("demo"))
}

/// The demo models in `dir`, written if any is missing or the folder's stamp differs (files
/// are written under temporary names and renamed; the stamp goes last).
pub fn ensure(dir: &Path) -> Result<DemoModels, DemoError> {
    let models = DemoModels {
        dir: dir.to_path_buf(),
        sdxl: dir.join("demo_sdxl.safetensors"),
        dit: dir.join("demo_wan_i2v.gguf"),
        t5: dir.join("demo_umt5.gguf"),
        clip_vision: dir.join("demo_clip_vision.safetensors"),
        vae: dir.join("demo_wan_vae.safetensors"),
        built: false,
    };
    let stamp_path = dir.join(STAMP);
    let want = stamp();
    let fresh = std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == want)
        && [
            &models.sdxl,
            &models.dit,
            &models.t5,
            &models.clip_vision,
            &models.vae,
        ]
        .iter()
        .all(|p| p.is_file());
    if fresh {
        return Ok(models);
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let _ = std::fs::remove_file(&stamp_path);
    let tmp = |p: &Path| p.with_extension(format!("tmp{}", std::process::id()));
    let publish = |t: PathBuf, p: &Path| std::fs::rename(&t, p).map_err(io_err(p));
    let t = tmp(&models.sdxl);
    write_safetensors(&t, &sdxl_checkpoint(), 10_000, StType::F16)?;
    publish(t, &models.sdxl)?;
    let t = tmp(&models.dit);
    write_gguf(&t, &wan_dit(), 20_000, &wan_dit::gguf_metadata())?;
    publish(t, &models.dit)?;
    let t = tmp(&models.t5);
    write_gguf(&t, &umt5(), 30_000, &umt5::gguf_metadata(&Umt5Sizes::DEMO))?;
    publish(t, &models.t5)?;
    let t = tmp(&models.clip_vision);
    write_safetensors(&t, &clip_vision(), 40_000, StType::F32)?;
    publish(t, &models.clip_vision)?;
    let t = tmp(&models.vae);
    write_safetensors(&t, &wan_vae(), 50_000, StType::F32)?;
    publish(t, &models.vae)?;
    let t = tmp(&stamp_path);
    std::fs::write(&t, &want).map_err(io_err(&t))?;
    publish(t, &stamp_path)?;
    Ok(DemoModels {
        built: true,
        ..models
    })
}
