//! The memory plan of a request: each component's file opened (tensor tables only), its
//! device bytes and blocks counted, its compute buffer sized from its own graph built for the
//! request's shapes without reading weights, and the planner ([`crate::runtime::plan`]) run
//! under the budget. `nijigen plan` prints what [`plan_image`] / [`plan_video`] return; a run
//! follows it through [`StagePlan::memory`].
//!
//! On the CPU the budget is simulated: a given budget, or none (everything from the mapped
//! files, unaccounted). On a GPU it defaults to the free memory less [`DRIVER_MARGIN`]. A budget
//! keeps [`RESERVE`] aside for the tensors carried between components (prompt embeddings,
//! latents) and allocator slack, and on a GPU also [`CUDA_POOL_RESERVE`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

pub use crate::runtime::plan::{
    parse_size, Action, Component, EncoderDevice, Offload, Placement, Plan, PlanError, Role,
};
pub use crate::runtime::ComputeDevice;

use super::{Memory, PipelineError};
use crate::formats::names::Architecture;
use crate::formats::DType;
use crate::ggml::GgmlType;
use crate::models::network::{self, Network};
use crate::runtime::device::padded;
use crate::runtime::plan::{self, ComponentSpec, PlanInput, PlanOptions};
use crate::runtime::{Accountant, Fp8Load, LoadError, WeightStore};

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

/// Where a run computes and how much device memory it may use.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MemoryOptions {
    /// The compute device (the CPU: a simulated device).
    pub device: ComputeDevice,
    /// The budget asked for (`None`: the free memory of a GPU; no budget on the CPU).
    pub vram_budget: Option<u64>,
    pub offload: Offload,
    pub encoders: EncoderDevice,
    /// What fp8 weights of a component that runs on the CPU become.
    pub fp8_cpu: Fp8Cpu,
}

/// What fp8 weights (ComfyUI's fp8 files) of a component that runs on the CPU become; a
/// component on the device makes them F16 tensor by tensor as it uploads them instead, holding
/// no copy in RAM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fp8Cpu {
    /// F16, unless the F16 copies of the stage's fp8 weights would take more than 3/4 of the
    /// RAM available when the stage is planned or loaded: Q8_0 then.
    #[default]
    Auto,
    /// F16 at load: the exact weights, twice the file's bytes of RAM.
    F16,
    /// Q8_0 at load: about the file's bytes of RAM, within Q8_0's rounding.
    Q8_0,
}

impl Fp8Cpu {
    /// The conversion for fp8 weights whose F16 copies take `f16_bytes` in all.
    pub fn resolve(self, f16_bytes: u64) -> Fp8Load {
        match self {
            Fp8Cpu::F16 => Fp8Load::F16,
            Fp8Cpu::Q8_0 => Fp8Load::Q8_0,
            Fp8Cpu::Auto => match available_ram() {
                Some(a) if f16_bytes > a / 4 * 3 => Fp8Load::Q8_0,
                _ => Fp8Load::F16,
            },
        }
    }
}

/// RAM available to a new allocation now (Linux `MemAvailable`), if known.
pub fn available_ram() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The fp8 weights of a component's file (ComfyUI's fp8 files), for the plan: their bytes in
/// the file and as each conversion makes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fp8Weights {
    pub scaled: bool,
    /// In the file (1 byte a weight).
    pub stored: u64,
    pub f16: u64,
    /// As Q8_0 where the rows allow, else F16.
    pub q8_0: u64,
    /// Of those, in streamable blocks: in the file and as F16.
    pub blocks_stored: u64,
    pub blocks_f16: u64,
}

impl Fp8Weights {
    /// The fp8 weights among the tensors of `store` whose stored names start with `prefix`.
    pub fn of(store: &WeightStore, prefix: &str) -> Option<Fp8Weights> {
        let mut w = Fp8Weights {
            scaled: store.fp8_scaled().is_some(),
            ..Fp8Weights::default()
        };
        for t in store.file().tensors() {
            if !t.name.starts_with(prefix)
                || !matches!(t.dtype, DType::F8E4M3 | DType::F8E5M2)
                || t.numel() == 0
            {
                continue;
            }
            let f16 = 2 * t.numel();
            let row = t.shape.last().copied().unwrap_or(1);
            let q8 = if row % GgmlType::Q8_0.block_size() == 0 {
                GgmlType::Q8_0.bytes_for(t.numel()).unwrap_or(f16)
            } else {
                f16
            };
            w.stored += t.size;
            w.f16 += f16;
            w.q8_0 += q8;
            if block_key(&t.name).is_some() {
                w.blocks_stored += t.size;
                w.blocks_f16 += f16;
            }
        }
        (w.stored > 0).then_some(w)
    }

    /// RAM the converted copies take under `how` (none at upload).
    pub fn ram(&self, how: Fp8Load) -> u64 {
        match how {
            Fp8Load::F16 => self.f16,
            Fp8Load::Q8_0 => self.q8_0,
            Fp8Load::OnUpload | Fp8Load::OnUploadQ8_0 => 0,
        }
    }
}

/// The budget a run on `device` follows: on a GPU the free memory less [`DRIVER_MARGIN`], or
/// `given` when that is smaller (a larger one is lowered, with a warning); on the CPU `given`
/// (a simulated device) or none.
pub fn device_budget(
    device: ComputeDevice,
    given: Option<u64>,
) -> Result<Option<u64>, PipelineError> {
    if device.is_cpu() {
        return Ok(given);
    }
    let (free, _) = device.memory()?;
    let (budget, lowered) = gpu_budget(given, free);
    if lowered {
        tracing::warn!(
            "--vram-budget {} MiB is more than {device} has free ({} MiB less a {} MiB margin); \
             using {} MiB",
            given.unwrap_or(0) >> 20,
            free >> 20,
            DRIVER_MARGIN >> 20,
            budget >> 20
        );
    }
    Ok(Some(budget))
}

/// The budget on a GPU with `free` bytes free: `given`, or the free memory less
/// [`DRIVER_MARGIN`] when there is none or it is larger (then `true`: lowered).
pub fn gpu_budget(given: Option<u64>, free: u64) -> (u64, bool) {
    let usable = free.saturating_sub(DRIVER_MARGIN);
    match given {
        Some(b) if b <= usable => (b, false),
        Some(_) => (usable, true),
        None => (usable, false),
    }
}

/// The planned-allocation-free part of a budget on `device`.
pub fn reserve_for(device: ComputeDevice) -> u64 {
    if device.is_cpu() {
        RESERVE
    } else {
        RESERVE + CUDA_POOL_RESERVE
    }
}

/// The plan of one stage, with what the table shows besides it.
#[derive(Clone, Debug)]
pub struct StagePlan {
    pub plan: Plan,
    /// The file each component comes from (its name).
    pub files: Vec<(Component, String)>,
    /// "image 1024x1024", "video 832x480x81".
    pub what: String,
    pub device: ComputeDevice,
    /// What loading changes, per component: "dit: fp8 scaled (ComfyUI) weights, 15.3 GiB in
    /// the file, converted to F16 at load: 30.5 GiB of RAM for the whole run".
    pub notes: Vec<String>,
    /// What fp8 weights of a component on the CPU become in this plan.
    pub fp8_cpu: Fp8Load,
    /// What fp8 weights of a component on the device become (F16, or Q8_0 where F16 does not
    /// fit the budget), made as they are uploaded.
    pub fp8_device: Fp8Load,
}

impl StagePlan {
    /// The file `c` comes from.
    pub fn file(&self, c: Component) -> Option<&str> {
        self.files
            .iter()
            .find(|(k, _)| *k == c)
            .map(|(_, f)| f.as_str())
    }

    /// The VAE tile the planner chose for `c`.
    pub fn tile(&self, c: Component) -> Option<u32> {
        self.plan.get(c).and_then(|c| c.tile)
    }

    /// The memory a run under this plan follows: a fresh accountant with the plan's budget and
    /// each component's placement (`None` without a budget: the CPU from the mapped files).
    pub fn memory(&self) -> Option<Memory> {
        let budget = self.plan.budget?;
        let accountant = Accountant::with_budget(budget);
        let device = self.device;
        if !device.is_cpu() {
            accountant.watch_free_memory(move || device.memory().ok().map(|(free, _)| free));
        }
        Some(Memory {
            accountant,
            placements: self
                .plan
                .components
                .iter()
                .map(|c| (c.component, c.placement.clone()))
                .collect(),
            device,
            fp8: self
                .plan
                .components
                .iter()
                .map(|c| {
                    let how = if c.placement == Placement::Cpu {
                        self.fp8_cpu
                    } else {
                        self.fp8_device
                    };
                    (c.component, how)
                })
                .collect(),
        })
    }
}

/// A stage checked and planned, ready to compute: its files, its request (with the planner's
/// VAE tile filled in where none was asked for) and its plan.
#[derive(Clone, Debug)]
pub struct Job<F, R> {
    pub files: F,
    pub request: R,
    /// The plan (with a budget: given, or a GPU's free memory).
    pub plan: Option<StagePlan>,
    /// The weight files as planning opened them; the run maps its weights from these.
    pub opened: OpenFiles,
}

/// The weight files of a job, each opened once (memory map, header, name detection): the
/// planner reads their tensor tables and the run maps the weights from the same open files,
/// so a 14B DiT's header is parsed once per job, not once per use.
#[derive(Clone, Default)]
pub struct OpenFiles {
    files: Arc<Mutex<Vec<Opened>>>,
    /// Files opened from disk so far (a file asked for again is not opened again).
    opens: Arc<std::sync::atomic::AtomicUsize>,
}

/// A file of [`OpenFiles`]: its path and its store.
type Opened = (PathBuf, Arc<WeightStore>);

impl OpenFiles {
    /// `path`, opened now or when it was first asked for.
    pub fn open(&self, path: &Path) -> Result<Arc<WeightStore>, LoadError> {
        let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, store)) = files.iter().find(|(p, _)| p == path) {
            return Ok(store.clone());
        }
        let store = Arc::new(WeightStore::open_path(path)?);
        self.opens
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        files.push((path.to_path_buf(), store.clone()));
        Ok(store)
    }

    /// Closes the files (their maps go when the last model using them is dropped); a later
    /// [`OpenFiles::open`] opens again.
    pub fn close(&self) {
        self.files
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// How many times a file was opened from disk.
    pub fn opens(&self) -> usize {
        self.opens.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The files opened so far, in the order they were first asked for.
    pub fn paths(&self) -> Vec<PathBuf> {
        let files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        files.iter().map(|(p, _)| p.clone()).collect()
    }
}

impl std::fmt::Debug for OpenFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.paths()).finish()
    }
}

impl<F, R> Job<F, R> {
    /// The memory the run follows (a fresh accountant for the plan's budget); `None` without a
    /// budget: the CPU from the mapped files.
    pub fn memory(&self) -> Option<Memory> {
        self.plan.as_ref().and_then(StagePlan::memory)
    }
}

/// What a stage's one-call `run` returns: the job, its output, and the memory it followed (its
/// accountant holds the peak).
pub struct Finished<F, R, O> {
    pub job: Job<F, R>,
    pub output: O,
    pub memory: Option<Memory>,
}

/// The plan `plan` makes, when there is a budget (given, or on a GPU).
pub(crate) fn when_budgeted(
    memory: &MemoryOptions,
    plan: impl FnOnce() -> Result<StagePlan, PipelineError>,
) -> Result<Option<StagePlan>, PipelineError> {
    if memory.device.is_cpu() && memory.vram_budget.is_none() {
        Ok(None)
    } else {
        plan().map(Some)
    }
}

/// One opened file and the stored-name prefix of the component wanted in it.
pub(crate) struct Part {
    path: PathBuf,
    pub(crate) store: Arc<WeightStore>,
    pub(crate) prefix: String,
}

/// Opens `path` and finds `net` in it (the whole file, or a component of an SDXL checkpoint).
pub(crate) fn open_net(
    opened: &OpenFiles,
    path: &Path,
    net: &Network,
) -> Result<Option<Part>, PipelineError> {
    open_any(opened, path, net.architectures)
}

/// As [`open_net`] for a file the user named for `net` (or the main model, where it may sit
/// in a checkpoint): the file must hold it.
pub(crate) fn open_required(
    opened: &OpenFiles,
    path: &Path,
    net: &'static Network,
) -> Result<Part, PipelineError> {
    open_net(opened, path, net)?.ok_or_else(|| nothing_to_plan(net.label, net.flag))
}

/// What the planner knows of `net` in `part` for `req`: its device bytes, its blocks when it
/// streams, and its figures ([`Network::memory`] on the tensor table: no weight is read).
pub(crate) fn spec(
    net: &Network,
    part: &Part,
    req: &network::Request,
) -> Result<ComponentSpec, PipelineError> {
    let set = part.store.load_meta(|n| n.starts_with(&part.prefix))?;
    let m = (net.memory)(&set, &part.prefix, req)?;
    let spec = ComponentSpec::new(net.component, part.bytes())
        .with_compute(m.compute_bytes)
        .with_tiles(m.tiles);
    Ok(if net.streams {
        spec.with_blocks(part.blocks())
    } else {
        spec
    })
}

/// Opens `path` once and finds the first of `wanted` in it.
pub(crate) fn open_any(
    opened: &OpenFiles,
    path: &Path,
    wanted: &[Architecture],
) -> Result<Option<Part>, PipelineError> {
    let store = opened.open(path).map_err(|source| PipelineError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let d = store.detection();
    let prefix = if wanted.contains(&d.architecture) {
        String::new()
    } else if let Some(c) = d
        .components
        .iter()
        .find(|c| wanted.contains(&c.architecture))
    {
        c.prefix.clone()
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
        self.store
            .file()
            .tensors()
            .iter()
            .filter(move |t| t.name.starts_with(&self.prefix))
    }

    /// The fp8 weights of this part, if it has any.
    pub(crate) fn fp8(&self) -> Option<Fp8Weights> {
        Fp8Weights::of(&self.store, &self.prefix)
    }

    /// Device bytes of the weights as loaded (fp8 as F16), each tensor padded as device buffers
    /// place it.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes_with(false)
    }

    /// [`Part::bytes`], with the fp8 weights as Q8_0 where their rows allow when `q8`.
    fn bytes_with(&self, q8: bool) -> u64 {
        self.tensors().map(|t| padded(self.loaded_as(t, q8))).sum()
    }

    /// Bytes tensor `t` takes on the device: as loaded, or for an fp8 weight made Q8_0 (`q8`)
    /// where its rows allow.
    fn loaded_as(&self, t: &crate::formats::TensorInfo, q8: bool) -> u64 {
        let row = t.shape.last().copied().unwrap_or(1);
        if q8
            && matches!(t.dtype, DType::F8E4M3 | DType::F8E5M2)
            && t.numel() > 0
            && row % GgmlType::Q8_0.block_size() == 0
        {
            GgmlType::Q8_0.bytes_for(t.numel()).unwrap_or(0)
        } else {
            self.store.loaded_size(t)
        }
    }

    /// `spec` (this part's) with its fp8 weights made Q8_0 on the device.
    pub(crate) fn q8_spec(&self, spec: &ComponentSpec) -> ComponentSpec {
        let mut q = spec.clone();
        q.weight_bytes = self.bytes_with(true);
        if !q.blocks.is_empty() {
            q.blocks = self.blocks_with(true);
        }
        q
    }

    /// Bytes per block in execution order (UNet: input, middle, output).
    pub(crate) fn blocks(&self) -> Vec<u64> {
        self.blocks_with(false)
    }

    /// [`Part::blocks`], with the fp8 weights as Q8_0 where their rows allow when `q8`.
    fn blocks_with(&self, q8: bool) -> Vec<u64> {
        let mut by: Vec<(u32, usize, String, u64)> = Vec::new();
        for t in self.tensors() {
            let Some(key) = block_key(&t.name) else {
                continue;
            };
            let size = padded(self.loaded_as(t, q8));
            if let Some(e) = by.iter_mut().find(|e| e.2 == key) {
                e.3 += size;
                continue;
            }
            let group = if key.contains("middle_block") || key.contains("mid_block") {
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
            by.push((group, index, key, size));
        }
        by.sort();
        by.into_iter().map(|e| e.3).collect()
    }

    pub(crate) fn file_name(&self) -> String {
        self.path.file_name().map_or_else(
            || self.path.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        )
    }
}

/// "15.3 GiB", "512.0 MiB", "3.5 KiB".
pub(crate) fn gib(bytes: u64) -> String {
    let b = bytes as f64;
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else if bytes >= 1 << 20 {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", b / 1024.0)
    }
}

pub(crate) fn nothing_to_plan(what: &'static str, flag: &'static str) -> PipelineError {
    PipelineError::NothingToPlan { what, flag }
}

/// Plans `components` under the budget `memory` gives on its device.
pub(crate) fn stage_plan(
    memory: &MemoryOptions,
    vae_tile: Option<u32>,
    mut components: Vec<ComponentSpec>,
    files: Vec<(Component, String)>,
    fp8: Vec<(Component, Fp8Weights, ComponentSpec)>,
    what: String,
) -> Result<StagePlan, PipelineError> {
    let device = memory.device;
    let budget = device_budget(device, memory.vram_budget)?;
    let fp8_cpu = memory
        .fp8_cpu
        .resolve(fp8.iter().map(|(_, w, _)| w.f16).sum());
    for spec in &mut components {
        if let Some((_, w, _)) = fp8.iter().find(|(c, _, _)| *c == spec.component) {
            spec.cpu_ram = Some(spec.weight_bytes - w.f16 + w.ram(fp8_cpu));
            spec.held_ram = w.ram(fp8_cpu);
            let in_blocks: u64 = spec.blocks.iter().sum();
            spec.stream_ram = Some(in_blocks.saturating_sub(w.blocks_f16) + w.blocks_stored);
        }
    }
    let input = PlanInput {
        components,
        budget,
        reserve: if budget.is_some() {
            reserve_for(device)
        } else {
            0
        },
        options: PlanOptions {
            // Without a budget on the CPU a run computes everything from the files (no
            // simulated device): plan that, so that the RAM figures and notes are the run's.
            offload: if device.is_cpu() && budget.is_none() {
                Offload::Full
            } else {
                memory.offload
            },
            encoders: memory.encoders,
            vae_tile,
        },
    };
    // fp8 weights on the device are made F16; where that does not fit the budget, Q8_0.
    let (plan, fp8_device) = match plan::plan(&input) {
        Ok(p) => (p, Fp8Load::OnUpload),
        Err(e @ PlanError::Short { .. }) if !fp8.is_empty() => {
            let mut q8 = input.clone();
            for spec in &mut q8.components {
                if let Some((_, _, q)) = fp8.iter().find(|(c, _, _)| *c == spec.component) {
                    spec.weight_bytes = q.weight_bytes;
                    spec.blocks = q.blocks.clone();
                }
            }
            match plan::plan(&q8) {
                Ok(p) => (p, Fp8Load::OnUploadQ8_0),
                Err(_) => return Err(e.into()),
            }
        }
        Err(e) => return Err(e.into()),
    };
    let notes = fp8
        .iter()
        .filter_map(|(c, w, _)| {
            let on_cpu = plan.get(*c)?.placement == Placement::Cpu;
            Some(fp8_note(*c, w, if on_cpu { fp8_cpu } else { fp8_device }))
        })
        .collect();
    Ok(StagePlan {
        plan,
        files,
        what,
        device,
        notes,
        fp8_cpu,
        fp8_device,
    })
}

/// The plan's line on what happens to component `c`'s fp8 weights `w` loaded as `how`.
pub(crate) fn fp8_note(c: Component, w: &Fp8Weights, how: Fp8Load) -> String {
    let what = if w.scaled {
        "fp8 scaled (ComfyUI)"
    } else {
        "fp8"
    };
    let head = format!(
        "{}: {what} weights, {} in the file",
        c.name(),
        gib(w.stored)
    );
    match how {
        Fp8Load::OnUpload => format!(
            "{head}, made F16 tensor by tensor as they are copied to the device: no copy in RAM \
             ({} as F16)",
            gib(w.f16)
        ),
        Fp8Load::OnUploadQ8_0 => format!(
            "{head}, made Q8_0 tensor by tensor as they are copied to the device, as F16 ({}) \
             does not fit the budget: no copy in RAM ({} as Q8_0)",
            gib(w.f16),
            gib(w.q8_0)
        ),
        Fp8Load::F16 => format!(
            "{head}, converted to F16 at load: {} of RAM for the whole run",
            gib(w.f16)
        ),
        Fp8Load::Q8_0 => format!(
            "{head}, converted to Q8_0 at load: {} of RAM for the whole run (F16 would take {}, \
             more than 3/4 of the RAM available)",
            gib(w.ram(how)),
            gib(w.f16)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::{block_key, gpu_budget, DRIVER_MARGIN};

    #[test]
    fn fp8_weights_on_the_device_become_q8_0_only_where_f16_does_not_fit() {
        use super::{stage_plan, Fp8Weights, MemoryOptions};
        use crate::runtime::plan::ComponentSpec;
        use crate::runtime::Fp8Load;
        let (gib, mib) = (1u64 << 30, 1u64 << 20);
        let dit = crate::models::DIT.component;
        // A DiT that cannot stream: 1 GiB as F16, 544 MiB as Q8_0, 100 MiB of compute.
        let w = Fp8Weights {
            scaled: true,
            stored: 512 * mib,
            f16: gib,
            q8_0: 544 * mib,
            ..Fp8Weights::default()
        };
        let f16 = ComponentSpec::new(dit, gib).with_compute(100 * mib);
        let q8 = ComponentSpec::new(dit, 544 * mib).with_compute(100 * mib);
        let at = |budget: u64| {
            let memory = MemoryOptions {
                vram_budget: Some(budget),
                ..Default::default()
            };
            let fp8 = vec![(dit, w, q8.clone())];
            stage_plan(
                &memory,
                None,
                vec![f16.clone()],
                vec![],
                fp8,
                "video".into(),
            )
        };
        let roomy = at(2 * gib).expect("fits as F16");
        assert_eq!(roomy.fp8_device, Fp8Load::OnUpload);
        assert_eq!(roomy.plan.components[0].device_weight_bytes, gib);
        assert!(
            roomy.notes[0].contains("made F16 tensor by tensor"),
            "{:?}",
            roomy.notes
        );
        let tight = at(gib).expect("fits as Q8_0");
        assert_eq!(tight.fp8_device, Fp8Load::OnUploadQ8_0);
        assert_eq!(tight.plan.components[0].device_weight_bytes, 544 * mib);
        assert_eq!(
            tight.notes,
            vec![
                "dit: fp8 scaled (ComfyUI) weights, 512.0 MiB in the file, made Q8_0 tensor by \
                  tensor as they are copied to the device, as F16 (1.0 GiB) does not fit the \
                  budget: no copy in RAM (544.0 MiB as Q8_0)"
                    .to_string()
            ]
        );
        let memory = tight.memory().expect("budgeted");
        assert_eq!(memory.fp8_load(dit), Fp8Load::OnUploadQ8_0);
        // Too small for Q8_0 too: the F16 plan's error.
        let e = match at(600 * mib) {
            Ok(p) => panic!("planned: {:?}", p.notes),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("short by") && e.contains("1124 MiB"), "{e}");
    }

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
