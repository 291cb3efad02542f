//! `nijigen plan image|video [the same arguments]`: the memory plan without computing.
//!
//! Opens the weight files (headers only: the tensor tables give every byte count), estimates
//! each component's compute buffer from the request's shapes ([`crate::models::estimate`]),
//! and runs the planner ([`crate::runtime::plan`]). On `--device cpu` the budget is simulated:
//! `--vram-budget` gives it, and without one it is unlimited (everything resident); on a GPU it
//! defaults to the free memory less [`DRIVER_MARGIN`]. A budget keeps [`RESERVE`] aside for the
//! tensors carried between
//! components (prompt embeddings, latents) and allocator slack.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;

use super::human_bytes;
use super::image::ImageArgs;
use super::video::VideoArgs;
use super::WithHint;
use crate::formats::names::{ArchConfig, Architecture};
use crate::models::estimate;
use crate::pipeline::Memory;
use crate::runtime::device::padded;
use crate::runtime::plan::{
    self, Action, Component, ComponentSpec, EncoderDevice, Offload, Plan, PlanInput, PlanOptions,
    TileOption,
};
use crate::runtime::{Accountant, ComputeDevice, WeightStore};

/// Bytes of a budget kept free of planned allocations.
pub const RESERVE: u64 = 256 << 20;

/// Bytes a CUDA budget keeps aside, besides [`RESERVE`], for the temporaries ggml's CUDA
/// backend takes from its own pool (activations converted for cuBLAS or quantized for MMQ,
/// flash-attention K/V in F16): they are not graph-allocator memory, so the accountant does
/// not see them.
pub const CUDA_POOL_RESERVE: u64 = 1 << 30;

/// Device memory left out of a GPU's free memory when the budget is taken from it (cuBLAS
/// handles and workspaces, the driver's growth while the run starts).
pub const DRIVER_MARGIN: u64 = 256 << 20;

/// The device `--device` names: `auto` is the first CUDA GPU of a CUDA build when one is
/// present, else the CPU.
pub(super) fn resolve_device(spec: &str) -> anyhow::Result<ComputeDevice> {
    if spec.trim().eq_ignore_ascii_case("auto") {
        let gpu = ComputeDevice::Cuda(0);
        return Ok(if cfg!(nijigen_cuda) && gpu.ggml_device().is_ok() {
            gpu
        } else {
            ComputeDevice::Cpu
        });
    }
    let device: ComputeDevice = spec.parse().map_err(|e: String| WithHint {
        error: format!("--device {e}"),
        hint: "`nijigen devices` lists the devices of this build".into(),
    })?;
    device.ggml_device().map_err(|e| WithHint {
        error: e.to_string(),
        hint: if cfg!(nijigen_cuda) {
            "`nijigen devices` lists the GPUs the driver shows; check CUDA_VISIBLE_DEVICES".into()
        } else {
            "build with `cargo build --release --features cuda` (README, \"CUDA build\"), or \
             leave out --device to compute on the CPU"
                .into()
        },
    })?;
    Ok(device)
}

/// The budget a run on `device` follows. On a GPU it is the free memory less
/// [`DRIVER_MARGIN`], or `--vram-budget` when that is smaller (a larger one is lowered, with
/// a warning); on the CPU it is `--vram-budget` (a simulated device) or none.
pub(super) fn device_budget(
    device: ComputeDevice,
    given: Option<u64>,
) -> anyhow::Result<Option<u64>> {
    if device.is_cpu() {
        return Ok(given);
    }
    let (free, _) = device.memory()?;
    let (budget, lowered) = gpu_budget(given, free);
    if lowered {
        tracing::warn!(
            "--vram-budget {} is more than {device} has free ({} less a {} margin); using {}",
            human_bytes(given.unwrap_or(0)),
            human_bytes(free),
            human_bytes(DRIVER_MARGIN),
            human_bytes(budget)
        );
    }
    Ok(Some(budget))
}

/// The budget on a GPU with `free` bytes free: `given`, or the free memory less
/// [`DRIVER_MARGIN`] when there is none or it is larger (then `true`: lowered).
fn gpu_budget(given: Option<u64>, free: u64) -> (u64, bool) {
    let usable = free.saturating_sub(DRIVER_MARGIN);
    match given {
        Some(b) if b <= usable => (b, false),
        Some(_) => (usable, true),
        None => (usable, false),
    }
}

/// The planned-allocation-free part of a budget on `device`.
fn reserve_for(device: ComputeDevice) -> u64 {
    if device.is_cpu() {
        RESERVE
    } else {
        RESERVE + CUDA_POOL_RESERVE
    }
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    nijigen plan video -m wan2.1-i2v-14b-480p-Q4_K_M.gguf --t5 umt5-xxl-encoder-Q8_0.gguf --clip-vision clip_vision_h.safetensors --vae wan_2.1_vae.safetensors --vram-budget 12G\n  \
    nijigen plan image -m illustriousXL_v01.safetensors -W 1024 -H 1024 --vram-budget 8G --json")]
pub struct PlanArgs {
    #[command(subcommand)]
    pub what: PlanWhat,
}

#[derive(Debug, Subcommand)]
pub enum PlanWhat {
    /// Plan `nijigen image` with these arguments.
    Image(Box<ImageArgs>),
    /// Plan `nijigen video` with these arguments.
    Video(Box<VideoArgs>),
    /// Plan both stages of `nijigen i2v` with these arguments (each stage alone: stage 1 is
    /// released before stage 2 loads).
    I2v(Box<super::i2v::I2vArgs>),
}

pub fn parse_budget(s: &str) -> Result<u64, String> {
    plan::parse_size(s).map_err(|e| e.to_string())
}

pub fn parse_offload(s: &str) -> Result<Offload, String> {
    s.parse()
}

pub fn parse_encoder_device(s: &str) -> Result<EncoderDevice, String> {
    s.parse()
}

/// One opened file and the stored-name prefix of the component wanted in it.
struct Part {
    path: PathBuf,
    store: WeightStore,
    prefix: Option<String>,
}

/// Opens `path` and finds `wanted` in it (the whole file, or a component of an SDXL checkpoint).
fn open_part(path: &Path, wanted: Architecture) -> anyhow::Result<Option<Part>> {
    let store =
        WeightStore::open_path(path).with_context(|| format!("opening {}", path.display()))?;
    let d = store.detection();
    let prefix = if d.architecture == wanted {
        None
    } else if let Some(c) = d.components.iter().find(|c| c.architecture == wanted) {
        Some(c.prefix.clone())
    } else {
        return Ok(None);
    };
    Ok(Some(Part {
        path: path.to_path_buf(),
        store,
        prefix,
    }))
}

/// The block a stored tensor name belongs to: `input_blocks.N`, `middle_block`,
/// `output_blocks.N` (ldm UNet), `down_blocks.N` / `mid_block` / `up_blocks.N` (diffusers),
/// `blocks.N` (Wan DiT).
pub fn block_key(name: &str) -> Option<String> {
    let segs: Vec<&str> = name.split('.').collect();
    for (i, s) in segs.iter().enumerate() {
        match *s {
            "input_blocks" | "output_blocks" | "blocks" | "down_blocks" | "up_blocks" => {
                let n = segs.get(i + 1)?;
                if n.parse::<usize>().is_ok() {
                    return Some(segs[..=i + 1].join("."));
                }
                return None;
            }
            "middle_block" | "mid_block" => return Some(segs[..=i].join(".")),
            _ => {}
        }
    }
    None
}

impl Part {
    fn tensors(&self) -> impl Iterator<Item = &crate::formats::TensorInfo> {
        let prefix = self.prefix.clone().unwrap_or_default();
        self.store
            .file()
            .tensors()
            .iter()
            .filter(move |t| t.name.starts_with(&prefix))
    }

    /// Device bytes of the weights: each tensor padded as device buffers place it.
    fn bytes(&self) -> u64 {
        self.tensors().map(|t| padded(t.size)).sum()
    }

    /// Bytes per block in execution order (UNet: input, middle, output).
    fn blocks(&self) -> Vec<u64> {
        let mut by: Vec<(u32, usize, String, u64)> = Vec::new();
        for t in self.tensors() {
            let Some(key) = block_key(&t.name) else {
                continue;
            };
            if let Some(e) = by.iter_mut().find(|e| e.2 == key) {
                e.3 += padded(t.size);
                continue;
            }
            let group = if key.contains("input_blocks") || key.contains("down_blocks") {
                0
            } else if key.contains("middle_block") || key.contains("mid_block") {
                1
            } else if key.contains("output_blocks") || key.contains("up_blocks") {
                2
            } else {
                0
            };
            let index = key
                .rsplit('.')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            by.push((group, index, key, padded(t.size)));
        }
        by.sort();
        by.into_iter().map(|e| e.3).collect()
    }

    fn config(&self) -> &ArchConfig {
        &self.store.detection().config
    }
}

fn checkpoint_part<T: Clone>(
    cfg: &ArchConfig,
    own: impl Fn(&ArchConfig) -> Option<T>,
    of_checkpoint: impl Fn(&crate::formats::names::SdxlCheckpointConfig) -> Option<T>,
) -> Option<T> {
    match cfg {
        ArchConfig::SdxlCheckpoint(c) => of_checkpoint(c),
        c => own(c),
    }
}

/// What the table shows besides the plan.
struct Row {
    component: Component,
    file: String,
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |s| s.to_string_lossy().into_owned(),
    )
}

fn missing(what: &str, flag: &str) -> anyhow::Error {
    WithHint {
        error: format!("no {what} to plan"),
        hint: format!("give it with {flag}"),
    }
    .into()
}

fn tiles(area: impl Fn(u64, u64) -> u64, h: u64, w: u64) -> Vec<TileOption> {
    let mut v = vec![TileOption {
        tile: None,
        compute_bytes: area(h, w),
    }];
    for t in estimate::VAE_TILES {
        let (th, tw) = estimate::tile_area(t, h, w);
        v.push(TileOption {
            tile: Some(t),
            compute_bytes: area(th, tw),
        });
    }
    v
}

fn image_inputs(a: &ImageArgs) -> anyhow::Result<(Vec<ComponentSpec>, Vec<Row>, String)> {
    let (h, w) = (a.height as u64, a.width as u64);
    let mut specs = Vec::new();
    let mut rows = Vec::new();
    let model = &a.model;
    let unet = open_part(model, Architecture::SdxlUnet)?.ok_or_else(|| WithHint {
        error: format!("{}: not an SDXL checkpoint or UNet", model.display()),
        hint: "`nijigen info FILE` shows what a weight file contains".into(),
    })?;
    let forwards = if a.cfg == 1.0 { 1 } else { 2 } * a.batch.max(1) as u32;
    let ucfg = checkpoint_part(
        unet.config(),
        |c| match c {
            ArchConfig::SdxlUnet(u) => Some(u.clone()),
            _ => None,
        },
        |c| c.unet.clone(),
    );
    let compute = match unet_compute(&unet, h, w) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::debug!(error = %e, "UNet memory from the formula");
            ucfg.map_or(0, |c| estimate::unet_compute_bytes(&c, h, w))
        }
    };
    specs.push(
        ComponentSpec::new(Component::Unet, unet.bytes())
            .with_compute(compute)
            .with_forwards(forwards),
    );
    rows.push(Row {
        component: Component::Unet,
        file: file_name(&unet.path),
    });
    for (comp, arch, explicit, flag, what) in [
        (
            Component::ClipL,
            Architecture::ClipL,
            &a.clip_l,
            "--clip-l",
            "CLIP-L",
        ),
        (
            Component::ClipG,
            Architecture::ClipG,
            &a.clip_g,
            "--clip-g",
            "bigG",
        ),
        (
            Component::VaeSdxl,
            Architecture::SdxlVae,
            &a.vae,
            "--vae",
            "VAE",
        ),
    ] {
        let path = explicit.as_ref().unwrap_or(model);
        let part = open_part(path, arch)?.ok_or_else(|| missing(what, flag))?;
        let cfg = part.config().clone();
        let spec = ComponentSpec::new(comp, part.bytes());
        let spec = match comp {
            Component::VaeSdxl => {
                let vc = checkpoint_part(
                    &cfg,
                    |c| match c {
                        ArchConfig::SdxlVae(v) => Some(v.clone()),
                        _ => None,
                    },
                    |c| c.vae.clone(),
                );
                match vc {
                    Some(vc) => spec.with_tiles(tiles(
                        |th, tw| estimate::sdxl_vae_decode_compute_bytes(&vc, th, tw),
                        h,
                        w,
                    )),
                    None => spec,
                }
            }
            _ => {
                let tc = checkpoint_part(
                    &cfg,
                    |c| match c {
                        ArchConfig::ClipText(t) => Some(t.clone()),
                        _ => None,
                    },
                    |c| {
                        if comp == Component::ClipL {
                            c.clip_l.clone()
                        } else {
                            c.clip_g.clone()
                        }
                    },
                );
                spec.with_compute(tc.map_or(0, |t| estimate::clip_text_compute_bytes(&t)))
            }
        };
        specs.push(spec);
        rows.push(Row {
            component: comp,
            file: file_name(&part.path),
        });
    }
    Ok((specs, rows, format!("image {}x{}", a.width, a.height)))
}

fn video_inputs(a: &VideoArgs) -> anyhow::Result<(Vec<ComponentSpec>, Vec<Row>, String)> {
    let (w, h) = match (a.width, a.height) {
        (Some(w), Some(h)) => (w, h),
        (w, h) => (w.unwrap_or(832), h.unwrap_or(480)),
    };
    let (hh, ww) = (h as u64, w as u64);
    let mut specs = Vec::new();
    let mut rows = Vec::new();
    let dit = open_part(&a.model, Architecture::WanDitI2v)?
        .or(open_part(&a.model, Architecture::WanDitT2v)?)
        .ok_or_else(|| WithHint {
            error: format!("{}: not a Wan2.1 DiT", a.model.display()),
            hint: "`nijigen info FILE` shows what a weight file contains".into(),
        })?;
    let compute = match wan_dit_memory(&dit, a.frames, hh, ww) {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::debug!(error = %e, "Wan DiT memory from the formula");
            match dit.config() {
                // Streamed, the activations carried between block graphs are held besides.
                ArchConfig::WanDit(c) => {
                    estimate::wan_dit_compute_bytes(c, a.frames as u64, hh, ww)
                        + estimate::wan_dit_state_bytes(c, a.frames as u64, hh, ww)
                }
                _ => 0,
            }
        }
    };
    specs.push(
        ComponentSpec::new(Component::Dit, dit.bytes())
            .with_blocks(dit.blocks())
            .with_compute(compute)
            .with_forwards(if a.cfg == 1.0 { 1 } else { 2 }),
    );
    rows.push(Row {
        component: Component::Dit,
        file: file_name(&dit.path),
    });
    let t5 =
        a.t5.as_ref()
            .ok_or_else(|| missing("umT5 encoder", "--t5"))?;
    let part = open_part(t5, Architecture::Umt5)?.ok_or_else(|| missing("umT5 encoder", "--t5"))?;
    let compute = match part.config() {
        ArchConfig::Umt5(c) => estimate::umt5_compute_bytes(c, 512),
        _ => 0,
    };
    specs.push(ComponentSpec::new(Component::T5, part.bytes()).with_compute(compute));
    rows.push(Row {
        component: Component::T5,
        file: file_name(&part.path),
    });
    if let Some(cv) = &a.clip_vision {
        let part = open_part(cv, Architecture::ClipVisionH)?
            .ok_or_else(|| missing("CLIP vision H", "--clip-vision"))?;
        let compute = match part.config() {
            ArchConfig::ClipVision(c) => estimate::clip_vision_compute_bytes(c),
            _ => 0,
        };
        specs.push(ComponentSpec::new(Component::ClipVision, part.bytes()).with_compute(compute));
        rows.push(Row {
            component: Component::ClipVision,
            file: file_name(&part.path),
        });
    }
    let vae = a.vae.as_ref().ok_or_else(|| missing("Wan VAE", "--vae"))?;
    let part = open_part(vae, Architecture::WanVae)?.ok_or_else(|| missing("Wan VAE", "--vae"))?;
    let spec = ComponentSpec::new(Component::VaeWan, part.bytes());
    let spec = match wan_vae_tiles(&part, a.frames, hh, ww, a.vae_tile) {
        Ok(t) => spec.with_tiles(t),
        Err(e) => {
            tracing::debug!(error = %e, "Wan VAE memory from the formula");
            match part.config() {
                ArchConfig::WanVae(c) => spec.with_tiles(tiles(
                    |th, tw| estimate::wan_vae_decode_compute_bytes(c, th, tw),
                    hh,
                    ww,
                )),
                _ => spec,
            }
        }
    };
    specs.push(spec);
    rows.push(Row {
        component: Component::VaeWan,
        file: file_name(&part.path),
    });
    Ok((specs, rows, format!("video {w}x{h}x{}", a.frames)))
}

/// The SDXL UNet's compute buffer for an `h` x `w` image with flash attention, as a run
/// allocates it (context of 3 prompt chunks, 231 tokens: long tag prompts take 2 or 3).
fn unet_compute(part: &Part, h: u64, w: u64) -> anyhow::Result<u64> {
    let prefix = part.prefix.clone().unwrap_or_default();
    let set = part.store.load_meta(|n| n.starts_with(&prefix))?;
    let mut unet = crate::models::SdxlUnet::new(&set, &prefix, 1)?;
    unet.set_attention(crate::models::UnetAttention::Flash);
    Ok(unet.compute_bytes(h as usize / 8, w as usize / 8, 231)?)
}

/// The Wan DiT's device memory besides its weights for a request, exactly as a run allocates
/// it: the larger of one whole graph and the staged graphs of a streamed forward plus the
/// activations they carry (512 text tokens; 257 image tokens for an I2V model). Only tensor
/// metadata is read.
fn wan_dit_memory(part: &Part, frames: usize, h: u64, w: u64) -> anyhow::Result<u64> {
    let prefix = part.prefix.clone().unwrap_or_default();
    let set = part.store.load_meta(|n| n.starts_with(&prefix))?;
    let dit = crate::models::WanDit::new(&set, &prefix, 1)?;
    let img = dit.config().image_dim.map(|_| 257);
    let lat = (
        1 + frames.saturating_sub(1) / 4,
        h as usize / 8,
        w as usize / 8,
    );
    let (whole, _) = dit.memory(lat, 512, img, false)?;
    let (staged, state) = dit.memory(lat, 512, img, true)?;
    Ok(whole.max(staged + state))
}

/// The Wan VAE's device memory per tile option, exactly as the runs allocate it: the graph
/// allocator sizes the chunk graphs (compute buffer) and the causal caches are laid out, for
/// the decode in each tile size and for the (untiled) encode of the first frame, which bounds
/// every option from below. Only tensor metadata is read.
fn wan_vae_tiles(
    part: &Part,
    frames: usize,
    h: u64,
    w: u64,
    chosen: Option<u32>,
) -> anyhow::Result<Vec<TileOption>> {
    let prefix = part.prefix.clone().unwrap_or_default();
    let set = part.store.load_meta(|n| n.starts_with(&prefix))?;
    let vae = crate::models::WanVae::new(&set, &prefix, 1)?;
    let c = vae.config();
    let (s, tf) = (c.spatial_factor(), c.temporal_factor());
    let (lh, lw) = (h as usize / s, w as usize / s);
    let t = 1 + frames.saturating_sub(1) / tf;
    let dev = |m: crate::models::wan_vae::WanVaeMemory| (m.compute_bytes + m.cache_bytes) as u64;
    let encode = if c.has_encoder {
        dev(vae.encode_memory(h as usize, w as usize)?)
    } else {
        0
    };
    let mut v = vec![TileOption {
        tile: None,
        compute_bytes: dev(vae.decode_memory(t, lh, lw, None)?).max(encode),
    }];
    let mut sizes = estimate::VAE_TILES.to_vec();
    if let Some(t) = chosen.filter(|t| !sizes.contains(t)) {
        sizes.push(t);
        sizes.sort_unstable_by(|a, b| b.cmp(a));
    }
    for px in sizes {
        // As the pipeline tiles: latent tiles of px / 8, overlapping by 1/8 of a tile.
        let tl = (px as usize / s).max(2);
        let overlap = (tl / 8).max(1);
        let m = vae.decode_memory(t, lh, lw, Some((tl, overlap)))?;
        v.push(TileOption {
            tile: Some(px),
            compute_bytes: dev(m).max(encode),
        });
    }
    Ok(v)
}

fn mib(n: u64) -> String {
    format!("{} MiB", n.div_ceil(1 << 20))
}

fn print_table(
    out: &mut impl Write,
    p: &Plan,
    rows: &[Row],
    what: &str,
    device: ComputeDevice,
) -> std::io::Result<()> {
    let on = if device.is_cpu() {
        "simulated on the CPU".to_string()
    } else {
        format!(
            "on {device}, {} of it for CUDA's own pool",
            mib(CUDA_POOL_RESERVE)
        )
    };
    let budget = match p.budget {
        Some(b) => format!("{} (reserve {}, {on})", human_bytes(b), mib(p.reserve)),
        None => "unlimited (simulated on the CPU)".into(),
    };
    writeln!(out, "plan: {what}, budget {budget}")?;
    writeln!(
        out,
        "{:<5} {:<12} {:>10} {:>10} {:>10}  {:<30} file",
        "stage", "component", "weights", "on device", "compute", "placement"
    )?;
    for c in &p.components {
        let file = rows
            .iter()
            .find(|r| r.component == c.component)
            .map_or("", |r| r.file.as_str());
        let mut placement = c.placement.label();
        if matches!(c.component, Component::VaeSdxl | Component::VaeWan) {
            placement += &match c.tile {
                Some(t) => format!(", tile {t} px"),
                None => ", untiled".into(),
            };
        }
        writeln!(
            out,
            "{:<5} {:<12} {:>10} {:>10} {:>10}  {:<30} {file}",
            c.stage.number(),
            c.component.name(),
            mib(c.weight_bytes),
            mib(c.device_weight_bytes),
            mib(c.compute_bytes),
            placement,
        )?;
    }
    let order: Vec<String> = p
        .steps
        .iter()
        .map(|s| match s.action {
            Action::Load => format!("load {}", s.component),
            Action::Run(w) => format!("run {} ({w})", s.component),
            Action::Free => format!("free {}", s.component),
        })
        .collect();
    writeln!(out, "order: {}", order.join(", "))?;
    writeln!(
        out,
        "predicted peak: device {} ({}), RAM {} ({})",
        mib(p.peak_device),
        human_bytes(p.peak_device),
        mib(p.peak_ram),
        human_bytes(p.peak_ram)
    )?;
    writeln!(
        out,
        "uploaded per step: {} ({})",
        mib(p.upload_per_step),
        human_bytes(p.upload_per_step)
    )
}

fn plan_json(p: &Plan, rows: &[Row], what: &str, device: ComputeDevice) -> serde_json::Value {
    json!({
        "request": what,
        "device": device.to_string(),
        "budget": p.budget,
        "reserve": p.reserve,
        "components": p.components.iter().map(|c| {
            let (kind, blocks, slots) = match &c.placement {
                plan::Placement::Resident => ("resident", None, None),
                plan::Placement::Streamed { blocks, slots } => ("streamed", Some(blocks.clone()), Some(*slots)),
                plan::Placement::Cpu => ("cpu", None, None),
            };
            json!({
                "component": c.component.name(),
                "stage": c.stage.number(),
                "file": rows.iter().find(|r| r.component == c.component).map(|r| r.file.clone()),
                "weight_bytes": c.weight_bytes,
                "device_weight_bytes": c.device_weight_bytes,
                "compute_bytes": c.compute_bytes,
                "placement": kind,
                "blocks": blocks,
                "slots": slots,
                "tile": c.tile,
                "ram_bytes": c.ram_peak(),
                "upload_per_step": c.upload_per_step,
            })
        }).collect::<Vec<_>>(),
        "steps": p.steps.iter().map(|s| {
            let (action, what) = match s.action {
                Action::Load => ("load", None),
                Action::Run(w) => ("run", Some(w)),
                Action::Free => ("free", None),
            };
            json!({"action": action, "what": what, "component": s.component.name(),
                   "device_bytes": s.device_bytes, "ram_bytes": s.ram_bytes})
        }).collect::<Vec<_>>(),
        "peak_device_bytes": p.peak_device,
        "peak_ram_bytes": p.peak_ram,
        "upload_per_step_bytes": p.upload_per_step,
    })
}

/// Plans `inputs` under `budget` on `device`, turning a shortfall into an error with its hint.
fn make_plan(
    device: ComputeDevice,
    budget: Option<u64>,
    options: PlanOptions,
    components: Vec<ComponentSpec>,
) -> anyhow::Result<Plan> {
    let input = PlanInput {
        components,
        budget,
        reserve: if budget.is_some() {
            reserve_for(device)
        } else {
            0
        },
        options,
    };
    plan::plan(&input).map_err(|e| match e.hint().map(str::to_string) {
        Some(hint) => WithHint {
            error: e.to_string(),
            hint,
        }
        .into(),
        None => e.into(),
    })
}

fn image_options(a: &ImageArgs) -> PlanOptions {
    PlanOptions {
        offload: a.offload,
        encoders: a.text_encoder_device,
        vae_tile: a.vae_tile,
    }
}

fn video_options(a: &VideoArgs) -> PlanOptions {
    PlanOptions {
        offload: a.offload,
        encoders: a.text_encoder_device,
        vae_tile: a.vae_tile,
    }
}

/// The memory plan a run on `device` follows under `budget`: the accountant that enforces it
/// and the planner's placement of every component (`None` without a budget: the CPU from the
/// mapped files, unaccounted).
fn memory_of(device: ComputeDevice, budget: Option<u64>, plan: Plan) -> Option<(Memory, Plan)> {
    let budget = budget?;
    let accountant = Accountant::with_budget(budget);
    if !device.is_cpu() {
        accountant.watch_free_memory(move || device.memory().ok().map(|(free, _)| free));
    }
    let memory = Memory {
        accountant,
        placements: plan
            .components
            .iter()
            .map(|c| (c.component, c.placement.clone()))
            .collect(),
        device,
    };
    Some((memory, plan))
}

/// For `image`: the plan (it must fit before anything is computed) and the memory it puts the
/// run under; `None` on the CPU without `--vram-budget`.
pub(super) fn memory_image(a: &ImageArgs) -> anyhow::Result<Option<(Memory, Plan)>> {
    let device = resolve_device(&a.device)?;
    let Some(budget) = device_budget(device, a.vram_budget)? else {
        return Ok(None);
    };
    let (components, _, _) = image_inputs(a)?;
    let plan = make_plan(device, Some(budget), image_options(a), components)?;
    Ok(memory_of(device, Some(budget), plan))
}

/// As [`memory_image`] for `video`.
pub(super) fn memory_video(a: &VideoArgs) -> anyhow::Result<Option<(Memory, Plan)>> {
    let device = resolve_device(&a.device)?;
    let Some(budget) = device_budget(device, a.vram_budget)? else {
        return Ok(None);
    };
    let (components, _, _) = video_inputs(a)?;
    let plan = make_plan(device, Some(budget), video_options(a), components)?;
    Ok(memory_of(device, Some(budget), plan))
}

pub fn run(args: PlanArgs) -> anyhow::Result<()> {
    let (device, budget, options, json_out, inputs) = match &args.what {
        PlanWhat::Image(a) => (
            &a.device,
            a.vram_budget,
            image_options(a),
            a.json,
            image_inputs(a)?,
        ),
        PlanWhat::Video(a) => (
            &a.device,
            a.vram_budget,
            video_options(a),
            a.json,
            video_inputs(a)?,
        ),
        PlanWhat::I2v(a) => return run_i2v(a),
    };
    let device = resolve_device(device)?;
    let budget = device_budget(device, budget)?;
    let (components, rows, what) = inputs;
    let p = make_plan(device, budget, options, components)?;
    let mut out = std::io::stdout().lock();
    if json_out {
        writeln!(out, "{}", plan_json(&p, &rows, &what, device))?;
    } else {
        print_table(&mut out, &p, &rows, &what, device)?;
    }
    Ok(())
}

/// `plan i2v`: the plan of each stage, and the run's peak (the larger of the two).
fn run_i2v(a: &super::i2v::I2vArgs) -> anyhow::Result<()> {
    let device = resolve_device(&a.device)?;
    let (ia, va) = a.stages()?;
    let (ic, irows, iwhat) = image_inputs(&ia)?;
    let still = make_plan(
        device,
        device_budget(device, ia.vram_budget)?,
        image_options(&ia),
        ic,
    )?;
    let (vc, vrows, vwhat) = video_inputs(&va)?;
    let video = make_plan(
        device,
        device_budget(device, va.vram_budget)?,
        video_options(&va),
        vc,
    )?;
    let peak_device = still.peak_device.max(video.peak_device);
    let peak_ram = still.peak_ram.max(video.peak_ram);
    let mut out = std::io::stdout().lock();
    if a.json {
        let v = json!({
            "still": plan_json(&still, &irows, &iwhat, device),
            "video": plan_json(&video, &vrows, &vwhat, device),
            "peak_device_bytes": peak_device,
            "peak_ram_bytes": peak_ram,
        });
        writeln!(out, "{v}")?;
        return Ok(());
    }
    writeln!(out, "stage 1 (still):")?;
    print_table(&mut out, &still, &irows, &iwhat, device)?;
    writeln!(out, "\nstage 2 (video; stage 1 released first):")?;
    print_table(&mut out, &video, &vrows, &vwhat, device)?;
    writeln!(
        out,
        "\npredicted peak of the run: device {} ({}), RAM {} ({})",
        mib(peak_device),
        human_bytes(peak_device),
        mib(peak_ram),
        human_bytes(peak_ram)
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{block_key, gpu_budget, DRIVER_MARGIN};

    #[test]
    fn a_gpu_budget_never_exceeds_the_free_memory_less_the_margin() {
        let gib = 1u64 << 30;
        let free = 11 * gib;
        assert_eq!(gpu_budget(None, free), (free - DRIVER_MARGIN, false));
        assert_eq!(gpu_budget(Some(8 * gib), free), (8 * gib, false));
        assert_eq!(
            gpu_budget(Some(12 * gib), free),
            (free - DRIVER_MARGIN, true)
        );
        assert_eq!(gpu_budget(Some(gib), 0), (0, true));
    }

    #[test]
    fn block_keys() {
        assert_eq!(
            block_key("model.diffusion_model.input_blocks.4.1.proj_in.weight").as_deref(),
            Some("model.diffusion_model.input_blocks.4")
        );
        assert_eq!(
            block_key("middle_block.1.norm.weight").as_deref(),
            Some("middle_block")
        );
        assert_eq!(
            block_key("blocks.39.ffn.2.weight").as_deref(),
            Some("blocks.39")
        );
        assert_eq!(block_key("head.head.weight"), None);
        assert_eq!(block_key("time_embed.0.weight"), None);
    }
}
