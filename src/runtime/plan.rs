//! The memory planner: a pure function from the bytes of each component's weights (read from
//! the files' tensor tables), activation estimates for the request's shapes and a device budget
//! to a [`Plan`]: where every component lives (resident on the device, streamed block by block
//! through two device slots, or on the CPU), the VAE tile size, and the order in which the
//! components are loaded, run and freed across both stages. When no placement fits, planning
//! fails before anything is computed with [`PlanError::Short`] ("short by N MiB" and a hint).
//!
//! The idea is mistral.rs's `auto_device_map`: sizes come from the files, the decision is made
//! once, up front, and is printable (`nijigen plan`).
//!
//! Model of execution the plan assumes (ARCHITECTURE.md, "Execution model"):
//! - components run one after another and each is freed before the next is loaded, so the
//!   device peak is the largest single working set (weights on the device + compute buffer),
//!   not the sum; stage 1 (SDXL) is fully released before stage 2 (Wan) starts;
//! - a streamed denoiser keeps its non-block tensors (embeddings, head, norms) resident and
//!   uploads each block, in order, into one of `slots` device buffers of the largest block's
//!   size; with two slots the next block's upload overlaps the current block's compute;
//! - the outputs carried between components (prompt embeddings, latents: a few MB, 16 MB at
//!   Wan 480p) are not counted; the reserve covers them and the backend's own allocations.
//!
//! RAM figures: a CPU-placed component counts its weights (used in place from the memory map:
//! page cache that must stay resident to run at speed, or their converted copy) and its compute
//! buffer; a streamed one counts its blocks' source (the mapped file the uploads read, fp8 for
//! weights converted on the way); a resident one counts nothing after its upload.

use std::fmt;

const MIB: u64 = 1 << 20;

/// A network as the planner sees it: its name, what it does (which decides the policy applied
/// to it), its stage, where it runs in the sequence, and what a run uses it for. Each network
/// describes itself (its model file declares its `Component`, see `crate::models::network`); the
/// planner knows no network by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Component {
    /// Short name in plans and errors: "clip_l", "unet", "dit", ...
    pub name: &'static str,
    pub role: Role,
    pub stage: Stage,
    /// Position in the execution order within its stage (ascending).
    pub order: u16,
    /// What a run uses it for, in order ("encode prompt", "sample", ...).
    pub uses: &'static [Use],
}

/// One use of a component in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Use {
    /// "encode prompt", "sample", "decode", ...
    pub what: &'static str,
    /// Runs after its stage's denoiser (the Wan VAE's decode), not in the component's order.
    pub after_denoiser: bool,
}

impl Use {
    /// A use in the component's place in the order.
    pub const fn now(what: &'static str) -> Use {
        Use {
            what,
            after_denoiser: false,
        }
    }

    /// A use after the stage's denoiser.
    pub const fn after_denoiser(what: &'static str) -> Use {
        Use {
            what,
            after_denoiser: true,
        }
    }
}

/// What a component does, which decides the policy applied to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Runs once before the denoiser (text encoders, CLIP vision): device or CPU.
    Encoder,
    /// The sampled network: resident, streamed by blocks, or CPU.
    Denoiser,
    /// The VAE: resident with a tile size, or CPU.
    Vae,
}

/// Stage 1 draws the still (SDXL); stage 2 animates it (Wan).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    Image,
    Video,
}

impl Stage {
    pub fn number(self) -> u32 {
        match self {
            Stage::Image => 1,
            Stage::Video => 2,
        }
    }
}

impl Component {
    pub fn name(self) -> &'static str {
        self.name
    }

    pub fn stage(self) -> Stage {
        self.stage
    }

    pub fn role(self) -> Role {
        self.role
    }

    /// Sort key of the execution order: stage, then order.
    fn sequence(self) -> (Stage, u16) {
        (self.stage, self.order)
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One VAE tile size the caller can offer, with its predicted compute-buffer bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileOption {
    /// Tile edge in pixels; `None` = the whole image at once.
    pub tile: Option<u32>,
    pub compute_bytes: u64,
}

/// What the planner knows about one component. It always names its component: there is no
/// default (a spec that forgot it would be planned as some other model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentSpec {
    pub component: Component,
    /// All weight bytes as stored (the sum of the tensor table's byte ranges).
    pub weight_bytes: u64,
    /// Bytes of each block, in execution order, for block-structured denoisers (UNet input /
    /// middle / output blocks, DiT `blocks.N`); empty otherwise. Their sum is part of
    /// `weight_bytes`; the rest is resident whenever the component is on the device.
    pub blocks: Vec<u64>,
    /// Compute-buffer bytes for the request's shapes (encoders, denoisers).
    pub compute_bytes: u64,
    /// VAEs: the tile sizes on offer, largest (or untiled) first, with their compute bytes.
    pub tiles: Vec<TileOption>,
    /// Denoisers: network evaluations per sampling step (2 with CFG, 1 without).
    pub forwards_per_step: u32,
    /// RAM the weights take when the component runs on the CPU, where it differs from
    /// `weight_bytes` (fp8 weights converted to Q8_0 at load).
    pub cpu_ram: Option<u64>,
    /// RAM the streamed blocks' source takes, where it differs from their device bytes (fp8
    /// weights made as F16 at upload from the file's fp8 bytes).
    pub stream_ram: Option<u64>,
    /// RAM the component holds from its stage's start to its end when it runs on the CPU,
    /// whichever component is running (fp8 weights converted at load: a run loads a stage's
    /// weights up front). Part of its own RAM; counted in every other step of its stage too.
    pub held_ram: u64,
}

impl ComponentSpec {
    pub fn new(component: Component, weight_bytes: u64) -> ComponentSpec {
        ComponentSpec {
            component,
            weight_bytes,
            blocks: Vec::new(),
            compute_bytes: 0,
            tiles: Vec::new(),
            forwards_per_step: 1,
            cpu_ram: None,
            stream_ram: None,
            held_ram: 0,
        }
    }

    pub fn with_blocks(mut self, blocks: Vec<u64>) -> Self {
        self.blocks = blocks;
        self
    }

    pub fn with_compute(mut self, bytes: u64) -> Self {
        self.compute_bytes = bytes;
        self
    }

    pub fn with_tiles(mut self, tiles: Vec<TileOption>) -> Self {
        self.tiles = tiles;
        self
    }

    pub fn with_forwards(mut self, n: u32) -> Self {
        self.forwards_per_step = n;
        self
    }

    fn kind(&self) -> Component {
        self.component
    }
}

/// `--offload`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Offload {
    /// The planner chooses (resident if it fits, else streamed blocks, encoders to the CPU).
    #[default]
    Auto,
    /// Everything resident; fail if it does not fit.
    None,
    /// Stream the denoiser's blocks even when it would fit (frees memory for activations).
    Blocks,
    /// Everything on the CPU (what this version does; the device holds nothing).
    Full,
}

impl std::str::FromStr for Offload {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Offload::Auto),
            "none" => Ok(Offload::None),
            "blocks" => Ok(Offload::Blocks),
            "full" => Ok(Offload::Full),
            _ => Err(format!(
                "'{s}': expected auto, none, blocks or full for --offload"
            )),
        }
    }
}

/// `--text-encoder-device`: where the encoders (text encoders and CLIP vision) run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncoderDevice {
    /// On the device when they fit there alone, else the CPU.
    #[default]
    Auto,
    /// On the device; fail if they do not fit.
    Device,
    Cpu,
}

impl std::str::FromStr for EncoderDevice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(EncoderDevice::Auto),
            "cpu" => Ok(EncoderDevice::Cpu),
            "gpu" | "cuda" | "device" => Ok(EncoderDevice::Device),
            _ => Err(format!(
                "'{s}': expected auto, gpu or cpu for --text-encoder-device"
            )),
        }
    }
}

/// The user's choices that constrain the planner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlanOptions {
    pub offload: Offload,
    pub encoders: EncoderDevice,
    /// A fixed VAE tile (pixels); `None` = the planner picks from the offered tiles.
    pub vae_tile: Option<u32>,
}

/// Everything the planner reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlanInput {
    pub components: Vec<ComponentSpec>,
    /// Device bytes the run may use; `None` = unlimited (the CPU backend without a budget).
    pub budget: Option<u64>,
    /// Bytes kept free out of the budget (backend context, carried tensors, fragmentation).
    pub reserve: u64,
    pub options: PlanOptions,
}

/// Where a component's weights live while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// All weights uploaded once, freed after the component's last use.
    Resident,
    /// Non-block tensors resident; the blocks uploaded in order into `slots` device buffers of
    /// the largest block's size (2: the next upload overlaps the current compute).
    Streamed { blocks: Vec<u64>, slots: u32 },
    /// Weights and compute on the CPU.
    Cpu,
}

impl Placement {
    /// Worse placements rank higher (used to compare plans).
    pub fn rank(&self) -> u32 {
        match self {
            Placement::Resident => 0,
            Placement::Streamed { slots, .. } if *slots >= 2 => 1,
            Placement::Streamed { .. } => 2,
            Placement::Cpu => 3,
        }
    }

    pub fn label(&self) -> String {
        match self {
            Placement::Resident => "resident".into(),
            Placement::Streamed { blocks, slots } => {
                format!("streamed ({} blocks, {slots} slots)", blocks.len())
            }
            Placement::Cpu => "cpu".into(),
        }
    }
}

/// The planner's decision for one component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentPlan {
    pub component: Component,
    pub stage: Stage,
    pub weight_bytes: u64,
    pub placement: Placement,
    /// Weight bytes on the device while loaded (resident part + slots); 0 on the CPU.
    pub device_weight_bytes: u64,
    /// Compute-buffer bytes (on the device unless the placement is CPU).
    pub compute_bytes: u64,
    /// VAEs: the chosen tile (`None` = untiled).
    pub tile: Option<u32>,
    /// Host bytes while loaded (CPU weights, pinned blocks), without the compute buffer.
    pub ram_weight_bytes: u64,
    /// Bytes uploaded per sampling step (streamed denoisers).
    pub upload_per_step: u64,
    /// Host bytes held from the stage's start to its end (see [`ComponentSpec::held_ram`]).
    pub held_ram_bytes: u64,
}

impl ComponentPlan {
    /// Device bytes while this component computes.
    pub fn device_peak(&self) -> u64 {
        match self.placement {
            Placement::Cpu => 0,
            _ => self.device_weight_bytes + self.compute_bytes,
        }
    }

    /// Host bytes while this component computes.
    pub fn ram_peak(&self) -> u64 {
        match self.placement {
            Placement::Cpu => self.ram_weight_bytes + self.compute_bytes,
            _ => self.ram_weight_bytes,
        }
    }
}

/// One step of the load/run/free sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Load,
    /// Run the component; the text says for what ("encode prompt", "sample", "decode", ...).
    Run(&'static str),
    Free,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub action: Action,
    pub component: Component,
    /// Device and host bytes in use during this step.
    pub device_bytes: u64,
    pub ram_bytes: u64,
}

/// The plan for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub budget: Option<u64>,
    pub reserve: u64,
    /// In execution order.
    pub components: Vec<ComponentPlan>,
    pub steps: Vec<Step>,
    pub peak_device: u64,
    pub peak_ram: u64,
    /// Bytes uploaded to the device per sampling step (the denoisers' streamed blocks).
    pub upload_per_step: u64,
}

impl Plan {
    pub fn get(&self, c: Component) -> Option<&ComponentPlan> {
        self.components.iter().find(|p| p.component == c)
    }
}

/// Why no plan fits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "VRAM budget short by {} MiB: {component} needs at least {} MiB ({what}) but the budget \
         leaves {} MiB",
        mib_up(*short_by), mib_up(*needed), available / MIB
    )]
    Short {
        component: Component,
        /// Device bytes the smallest allowed placement of `component` needs.
        needed: u64,
        /// Budget minus reserve.
        available: u64,
        /// The whole budget.
        budget: u64,
        short_by: u64,
        what: String,
        hint: String,
    },
    #[error("--vae-tile {tile}: no estimate for that tile size ({component})")]
    UnknownTile { component: Component, tile: u32 },
}

impl PlanError {
    pub fn hint(&self) -> Option<&str> {
        match self {
            PlanError::Short { hint, .. } => Some(hint),
            PlanError::UnknownTile { .. } => None,
        }
    }
}

fn mib_up(n: u64) -> u64 {
    n.div_ceil(MIB)
}

/// A budget figure as the user would type it: GiB with one decimal, rounded up.
pub(crate) fn size_arg(n: u64) -> String {
    let tenths = (n as u128 * 10).div_ceil(1u128 << 30) as u64;
    if tenths % 10 == 0 {
        format!("{}G", tenths / 10)
    } else {
        format!("{}.{}G", tenths / 10, tenths % 10)
    }
}

/// A candidate placement for a component, in the order the policy prefers them.
struct Candidate {
    placement: Placement,
    device_weight: u64,
    compute: u64,
    tile: Option<u32>,
    what: String,
}

impl Candidate {
    fn device(&self) -> u64 {
        match self.placement {
            Placement::Cpu => 0,
            _ => self.device_weight + self.compute,
        }
    }
}

fn mib(n: u64) -> String {
    format!("{} MiB", mib_up(n))
}

fn resident(spec: &ComponentSpec, compute: u64, tile: Option<u32>) -> Candidate {
    Candidate {
        placement: Placement::Resident,
        device_weight: spec.weight_bytes,
        compute,
        tile,
        what: format!(
            "weights {} + compute {}",
            mib(spec.weight_bytes),
            mib(compute)
        ),
    }
}

fn streamed(spec: &ComponentSpec, slots: u32) -> Option<Candidate> {
    let largest = *spec.blocks.iter().max()?;
    let in_blocks: u64 = spec.blocks.iter().sum();
    let rest = spec.weight_bytes.saturating_sub(in_blocks);
    Some(Candidate {
        placement: Placement::Streamed {
            blocks: spec.blocks.clone(),
            slots,
        },
        device_weight: rest + largest * slots as u64,
        compute: spec.compute_bytes,
        tile: None,
        what: format!(
            "non-block weights {} + {slots} x block {} + compute {}",
            mib(rest),
            mib(largest),
            mib(spec.compute_bytes)
        ),
    })
}

fn cpu(compute: u64, tile: Option<u32>) -> Candidate {
    Candidate {
        placement: Placement::Cpu,
        device_weight: 0,
        compute,
        tile,
        what: "cpu".into(),
    }
}

/// The placements allowed for `spec`, best first.
fn candidates(spec: &ComponentSpec, o: &PlanOptions) -> Result<Vec<Candidate>, PlanError> {
    let kind = spec.kind();
    let full = o.offload == Offload::Full;
    Ok(match kind.role() {
        Role::Encoder => {
            let force_cpu = full || o.encoders == EncoderDevice::Cpu;
            let may_cpu = o.encoders == EncoderDevice::Auto && o.offload != Offload::None;
            if force_cpu {
                vec![cpu(spec.compute_bytes, None)]
            } else if may_cpu {
                vec![
                    resident(spec, spec.compute_bytes, None),
                    cpu(spec.compute_bytes, None),
                ]
            } else {
                vec![resident(spec, spec.compute_bytes, None)]
            }
        }
        Role::Denoiser => match o.offload {
            Offload::Full => vec![cpu(spec.compute_bytes, None)],
            Offload::None => vec![resident(spec, spec.compute_bytes, None)],
            Offload::Blocks | Offload::Auto => {
                let mut v = Vec::new();
                if o.offload == Offload::Auto || spec.blocks.is_empty() {
                    v.push(resident(spec, spec.compute_bytes, None));
                }
                v.extend(streamed(spec, 2));
                v.extend(streamed(spec, 1));
                v
            }
        },
        Role::Vae => {
            let tiles: Vec<TileOption> = if spec.tiles.is_empty() {
                vec![TileOption {
                    tile: None,
                    compute_bytes: spec.compute_bytes,
                }]
            } else {
                spec.tiles.clone()
            };
            let tiles: Vec<TileOption> = match o.vae_tile {
                None => tiles,
                Some(t) => {
                    let v: Vec<_> = tiles.into_iter().filter(|x| x.tile == Some(t)).collect();
                    if v.is_empty() {
                        return Err(PlanError::UnknownTile {
                            component: kind,
                            tile: t,
                        });
                    }
                    v
                }
            };
            if full {
                // On the CPU, RAM is the limit: still prefer the largest tile offered.
                vec![cpu(tiles[0].compute_bytes, tiles[0].tile)]
            } else {
                tiles
                    .iter()
                    .map(|t| resident(spec, t.compute_bytes, t.tile))
                    .collect()
            }
        }
    })
}

fn short_hint(kind: Component, needed: u64, reserve: u64, o: &PlanOptions) -> String {
    let budget = size_arg(needed + reserve);
    match kind.role() {
        Role::Denoiser => format!(
            "try --vram-budget {budget}, a smaller size or fewer frames, or a smaller quant of \
             the {kind}; --offload full computes on the CPU"
        ),
        Role::Encoder if o.encoders != EncoderDevice::Cpu => {
            format!("try --text-encoder-device cpu (or --vram-budget {budget})")
        }
        Role::Encoder => format!("try --vram-budget {budget}"),
        Role::Vae if o.vae_tile.is_some() => {
            format!("try a smaller --vae-tile or leave it out (or --vram-budget {budget})")
        }
        Role::Vae => format!("try --vram-budget {budget} or --offload full"),
    }
}

/// Plans a request. Pure: the same input always gives the same plan.
pub fn plan(input: &PlanInput) -> Result<Plan, PlanError> {
    let available = input
        .budget
        .map(|b| b.saturating_sub(input.reserve))
        .unwrap_or(u64::MAX);
    let o = &input.options;
    let mut specs: Vec<&ComponentSpec> = input.components.iter().collect();
    specs.sort_by_key(|s| s.kind().sequence());

    let mut worst: Option<PlanError> = None;
    let mut components = Vec::new();
    for spec in specs {
        let kind = spec.kind();
        let cands = candidates(spec, o)?;
        match cands.iter().find(|c| c.device() <= available) {
            Some(c) => {
                let in_blocks: u64 = spec.blocks.iter().sum();
                let (ram_weight, upload) = match &c.placement {
                    Placement::Cpu => (spec.cpu_ram.unwrap_or(spec.weight_bytes), 0),
                    Placement::Streamed { .. } => (
                        spec.stream_ram.unwrap_or(in_blocks),
                        in_blocks * spec.forwards_per_step.max(1) as u64,
                    ),
                    Placement::Resident => (0, 0),
                };
                components.push(ComponentPlan {
                    component: kind,
                    stage: kind.stage(),
                    weight_bytes: spec.weight_bytes,
                    placement: c.placement.clone(),
                    device_weight_bytes: c.device_weight,
                    compute_bytes: c.compute,
                    tile: c.tile,
                    ram_weight_bytes: ram_weight,
                    upload_per_step: upload,
                    held_ram_bytes: if c.placement == Placement::Cpu {
                        spec.held_ram
                    } else {
                        0
                    },
                });
            }
            None => {
                // The last candidate is the smallest one the options allow.
                let Some(min) = cands.iter().min_by_key(|c| c.device()) else {
                    continue;
                };
                let needed = min.device();
                let short_by = needed - available;
                let bigger = match &worst {
                    Some(PlanError::Short { short_by: s, .. }) => short_by > *s,
                    _ => true,
                };
                if bigger {
                    worst = Some(PlanError::Short {
                        component: kind,
                        needed,
                        available,
                        budget: input.budget.unwrap_or(u64::MAX),
                        short_by,
                        what: min.what.clone(),
                        hint: short_hint(kind, needed, input.reserve, o),
                    });
                }
            }
        }
    }
    if let Some(e) = worst {
        return Err(e);
    }

    // The sequence: each component loaded, run, freed before the next. A component with two
    // uses (the Wan VAE: encode the first frame, decode) is freed between them, and a use
    // after the denoiser moves behind the last step of its stage.
    let mut steps = Vec::new();
    let mut deferred: Vec<(Stage, [Step; 3])> = Vec::new();
    for cp in &components {
        for u in cp.component.uses {
            let three = [
                Step {
                    action: Action::Load,
                    component: cp.component,
                    device_bytes: cp.device_weight_bytes,
                    ram_bytes: cp.ram_weight_bytes,
                },
                Step {
                    action: Action::Run(u.what),
                    component: cp.component,
                    device_bytes: cp.device_peak(),
                    ram_bytes: cp.ram_peak(),
                },
                Step {
                    action: Action::Free,
                    component: cp.component,
                    device_bytes: 0,
                    ram_bytes: 0,
                },
            ];
            if u.after_denoiser {
                deferred.push((cp.stage, three));
            } else {
                steps.extend(three);
            }
        }
    }
    for (stage, three) in deferred {
        let after = steps
            .iter()
            .rposition(|s| s.component.stage() == stage)
            .map_or(steps.len(), |p| p + 1);
        steps.splice(after..after, three);
    }
    let peak_device = steps.iter().map(|s| s.device_bytes).max().unwrap_or(0);
    // What a component holds for its whole stage counts in the other steps of that stage.
    for s in &mut steps {
        s.ram_bytes += components
            .iter()
            .filter(|c| c.stage == s.component.stage() && c.component != s.component)
            .map(|c| c.held_ram_bytes)
            .sum::<u64>();
    }
    let peak_ram = steps.iter().map(|s| s.ram_bytes).max().unwrap_or(0);
    let upload_per_step = components
        .iter()
        .map(|c| c.upload_per_step)
        .max()
        .unwrap_or(0);
    Ok(Plan {
        budget: input.budget,
        reserve: input.reserve,
        components,
        steps,
        peak_device,
        peak_ram,
        upload_per_step,
    })
}

/// Why a size could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{input}': {why} (expected a size such as 12G, 11.5GiB, 900M, 2048MiB)")]
pub struct SizeError {
    pub input: String,
    pub why: &'static str,
}

/// Reads a byte size: a number (decimals allowed) and an optional unit. Units are binary
/// whatever their spelling, as GPU users mean them: K/KB/KiB = 1024, M/MB/MiB = 1024^2,
/// G/GB/GiB = 1024^3, T/TB/TiB = 1024^4; no unit or B = bytes. Case-insensitive; spaces
/// between number and unit allowed. The result is rounded down to whole bytes.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let err = |why| SizeError {
        input: s.to_string(),
        why,
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(err("no number"));
    }
    let v: f64 = num.parse().map_err(|_| err("not a number"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(err("unknown unit")),
    };
    let bytes = v * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(err("too large"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The eight networks of both stages as their model files describe them (names, roles,
    // stages, order, uses), for planning without the models.
    const fn c(
        name: &'static str,
        role: Role,
        stage: Stage,
        order: u16,
        uses: &'static [Use],
    ) -> Component {
        Component {
            name,
            role,
            stage,
            order,
            uses,
        }
    }
    const PROMPT: &[Use] = &[Use::now("encode prompt")];
    const SAMPLE: &[Use] = &[Use::now("sample")];
    const CLIP_L: Component = c("clip_l", Role::Encoder, Stage::Image, 0, PROMPT);
    const CLIP_G: Component = c("clip_g", Role::Encoder, Stage::Image, 1, PROMPT);
    const UNET: Component = c("unet", Role::Denoiser, Stage::Image, 2, SAMPLE);
    const VAE_SDXL: Component = c(
        "vae_sdxl",
        Role::Vae,
        Stage::Image,
        3,
        &[Use::now("decode")],
    );
    const T5: Component = c("t5", Role::Encoder, Stage::Video, 0, PROMPT);
    const CLIP_VISION: Component = c(
        "clip_vision",
        Role::Encoder,
        Stage::Video,
        1,
        &[Use::now("encode image")],
    );
    const VAE_WAN: Component = c(
        "vae_wan",
        Role::Vae,
        Stage::Video,
        2,
        &[
            Use::now("encode first frame"),
            Use::after_denoiser("decode"),
        ],
    );
    const DIT: Component = c("dit", Role::Denoiser, Stage::Video, 3, SAMPLE);

    const GIB: u64 = 1 << 30;

    /// Wan I2V 14B Q4_K_M-like numbers: 40 blocks of 259 MiB, 1 GiB outside them.
    fn video(budget: Option<u64>) -> PlanInput {
        let blocks = vec![259 * MIB; 40];
        let dit_bytes = blocks.iter().sum::<u64>() + GIB;
        PlanInput {
            components: vec![
                ComponentSpec::new(T5, 6 * GIB).with_compute(GIB),
                ComponentSpec::new(CLIP_VISION, 1200 * MIB).with_compute(100 * MIB),
                ComponentSpec::new(DIT, dit_bytes)
                    .with_blocks(blocks)
                    .with_compute(5 * GIB)
                    .with_forwards(2),
                ComponentSpec::new(VAE_WAN, 250 * MIB).with_tiles(vec![
                    TileOption {
                        tile: None,
                        compute_bytes: 14 * GIB,
                    },
                    TileOption {
                        tile: Some(512),
                        compute_bytes: 8 * GIB,
                    },
                    TileOption {
                        tile: Some(256),
                        compute_bytes: 2 * GIB,
                    },
                    TileOption {
                        tile: Some(128),
                        compute_bytes: GIB / 2,
                    },
                ]),
            ],
            budget,
            reserve: 512 * MIB,
            options: PlanOptions::default(),
        }
    }

    fn ranks(p: &Plan) -> Vec<(Component, u32, Option<u32>)> {
        p.components
            .iter()
            .map(|c| {
                // Untiled is the best tile; bigger tiles are better.
                (
                    c.component,
                    c.placement.rank(),
                    c.tile.map(|t| u32::MAX - t),
                )
            })
            .collect()
    }

    #[test]
    fn a_spec_always_names_its_component() {
        // Compile-time checks: `ComponentSpec` has no `Default` (the call below would be
        // ambiguous if it had, both impls applying) and its component is not optional.
        trait AmbiguousIfDefault<A> {
            fn check() {}
        }
        impl<T> AmbiguousIfDefault<()> for T {}
        struct IsDefault;
        impl<T: Default> AmbiguousIfDefault<IsDefault> for T {}
        <ComponentSpec as AmbiguousIfDefault<_>>::check();
        let spec = ComponentSpec::new(CLIP_L, 1 << 20);
        let named: Component = spec.component;
        assert_eq!(named, CLIP_L);
        // Planned as the component it names (an encoder, not the UNet).
        let p = plan(&PlanInput {
            components: vec![spec],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(p.components.len(), 1);
        assert_eq!(p.components[0].component, CLIP_L);
        assert!(p.steps.iter().all(|s| s.component == CLIP_L));
    }

    #[test]
    fn everything_fits() {
        let p = plan(&video(Some(64 * GIB))).unwrap();
        for c in &p.components {
            assert_eq!(c.placement, Placement::Resident, "{}", c.component);
        }
        assert_eq!(p.get(VAE_WAN).unwrap().tile, None);
        assert_eq!(p.upload_per_step, 0);
        let dit = p.get(DIT).unwrap();
        assert_eq!(p.peak_device, dit.weight_bytes + 5 * GIB);
        assert_eq!(p.peak_ram, 0);
        // Order: t5, clip vision, vae encode, dit, vae decode; every load freed.
        let runs: Vec<_> = p
            .steps
            .iter()
            .filter_map(|s| match s.action {
                Action::Run(w) => Some((s.component, w)),
                _ => None,
            })
            .collect();
        assert_eq!(
            runs,
            vec![
                (T5, "encode prompt"),
                (CLIP_VISION, "encode image"),
                (VAE_WAN, "encode first frame"),
                (DIT, "sample"),
                (VAE_WAN, "decode"),
            ]
        );
        let loads = p.steps.iter().filter(|s| s.action == Action::Load).count();
        let frees = p.steps.iter().filter(|s| s.action == Action::Free).count();
        assert_eq!(loads, frees);
    }

    #[test]
    fn twelve_gib_streams_the_dit_with_two_slots() {
        let p = plan(&video(Some(12 * GIB))).unwrap();
        let dit = p.get(DIT).unwrap();
        assert_eq!(
            dit.placement,
            Placement::Streamed {
                blocks: vec![259 * MIB; 40],
                slots: 2
            }
        );
        assert_eq!(dit.device_weight_bytes, GIB + 2 * 259 * MIB);
        assert_eq!(p.upload_per_step, 2 * 40 * 259 * MIB);
        assert_eq!(dit.ram_weight_bytes, 40 * 259 * MIB);
        // umT5 (6 GiB) fits alone; the VAE gets the 512 px tile (8 GiB + 250 MiB).
        assert_eq!(p.get(T5).unwrap().placement, Placement::Resident);
        assert_eq!(p.get(VAE_WAN).unwrap().tile, Some(512));
        assert!(p.peak_device <= 12 * GIB - 512 * MIB);
    }

    #[test]
    fn small_budget_one_block_at_a_time_and_encoders_on_the_cpu() {
        // 1 GiB + 1 block + 5 GiB compute = 6.25 GiB; two slots need 6.5 GiB.
        let budget = 6 * GIB + 259 * MIB + 512 * MIB + MIB;
        let p = plan(&video(Some(budget))).unwrap();
        let dit = p.get(DIT).unwrap();
        assert!(matches!(
            dit.placement,
            Placement::Streamed { slots: 1, .. }
        ));
        assert_eq!(p.get(T5).unwrap().placement, Placement::Cpu);
        assert_eq!(p.get(CLIP_VISION).unwrap().placement, Placement::Resident);
        assert_eq!(p.get(VAE_WAN).unwrap().tile, Some(256));
        assert!(p.peak_ram >= 6 * GIB);
    }

    #[test]
    fn too_small_fails_with_short_by_and_a_hint() {
        let e = plan(&video(Some(6 * GIB))).unwrap_err();
        // needed = 1024 + 259 + 5120 MiB = 6403 MiB; available 6144 - 512 = 5632 MiB.
        assert_eq!(
            e.to_string(),
            "VRAM budget short by 771 MiB: dit needs at least 6403 MiB (non-block weights 1024 \
             MiB + 1 x block 259 MiB + compute 5120 MiB) but the budget leaves 5632 MiB"
        );
        assert_eq!(
            e.hint().unwrap(),
            "try --vram-budget 6.8G, a smaller size or fewer frames, or a smaller quant of the \
             dit; --offload full computes on the CPU"
        );
        let PlanError::Short { short_by, .. } = e else {
            panic!()
        };
        assert_eq!(short_by, 771 * MIB);
        // And with the suggested budget it fits.
        assert!(plan(&video(Some(parse_size("6.8G").unwrap()))).is_ok());
    }

    #[test]
    fn offload_options() {
        let mut input = video(Some(12 * GIB));
        input.options.offload = Offload::None;
        let e = plan(&input).unwrap_err();
        assert!(e.to_string().contains("dit needs at least"), "{e}");
        input.options.offload = Offload::Full;
        let p = plan(&input).unwrap();
        assert_eq!(p.peak_device, 0);
        assert!(p.components.iter().all(|c| c.placement == Placement::Cpu));
        input.budget = Some(64 * GIB);
        input.options.offload = Offload::Blocks;
        let p = plan(&input).unwrap();
        assert!(matches!(
            p.get(DIT).unwrap().placement,
            Placement::Streamed { slots: 2, .. }
        ));
        input.options = PlanOptions {
            encoders: EncoderDevice::Cpu,
            vae_tile: Some(128),
            ..PlanOptions::default()
        };
        let p = plan(&input).unwrap();
        assert_eq!(p.get(T5).unwrap().placement, Placement::Cpu);
        assert_eq!(p.get(VAE_WAN).unwrap().tile, Some(128));
        input.options.vae_tile = Some(300);
        assert!(matches!(
            plan(&input),
            Err(PlanError::UnknownTile { tile: 300, .. })
        ));
        // Encoders forced onto a device too small for umT5.
        input.options = PlanOptions {
            encoders: EncoderDevice::Device,
            ..PlanOptions::default()
        };
        input.budget = Some(6 * GIB + 259 * MIB + 512 * MIB + MIB);
        let e = plan(&input).unwrap_err();
        assert!(e.to_string().contains("t5 needs at least"), "{e}");
        assert!(e.hint().unwrap().contains("--text-encoder-device cpu"));
    }

    #[test]
    fn monotone_and_never_above_budget() {
        let mut last: Option<Vec<(Component, u32, Option<u32>)>> = None;
        let mut ok_before = false;
        for mib_budget in (1024..40 * 1024).step_by(97) {
            let budget = mib_budget as u64 * MIB;
            match plan(&video(Some(budget))) {
                Ok(p) => {
                    assert!(p.peak_device <= budget - p.reserve, "{mib_budget} MiB");
                    let r = ranks(&p);
                    if let Some(prev) = &last {
                        for (a, b) in prev.iter().zip(&r) {
                            assert!(b.1 <= a.1, "{mib_budget} MiB: {a:?} -> {b:?}");
                            assert!(b.2 <= a.2, "{mib_budget} MiB: {a:?} -> {b:?}");
                        }
                    }
                    last = Some(r);
                    ok_before = true;
                }
                Err(e) => {
                    assert!(
                        !ok_before,
                        "{mib_budget} MiB failed after a smaller one fitted: {e}"
                    );
                }
            }
        }
        assert!(ok_before);
    }

    #[test]
    fn unlimited_budget_and_image_stage_order() {
        let input = PlanInput {
            components: vec![
                ComponentSpec::new(VAE_SDXL, 160 * MIB).with_compute(3 * GIB),
                ComponentSpec::new(UNET, 4900 * MIB)
                    .with_blocks(vec![100 * MIB; 9])
                    .with_compute(GIB)
                    .with_forwards(2),
                ComponentSpec::new(CLIP_G, 1300 * MIB),
                ComponentSpec::new(CLIP_L, 235 * MIB),
            ],
            budget: None,
            reserve: 0,
            options: PlanOptions::default(),
        };
        let p = plan(&input).unwrap();
        let order: Vec<_> = p.components.iter().map(|c| c.component).collect();
        assert_eq!(order, vec![CLIP_L, CLIP_G, UNET, VAE_SDXL]);
        assert_eq!(p.peak_device, 4900 * MIB + GIB);
    }

    #[test]
    fn ram_held_for_the_stage_counts_in_its_other_steps() {
        // A CPU-placed DiT whose fp8 weights were converted at load holds 16 GiB from the
        // stage's start: the umT5 step before it counts them too; stage 1 does not.
        let mut dit = ComponentSpec::new(DIT, 17 * GIB).with_compute(GIB);
        dit.cpu_ram = Some(17 * GIB);
        dit.held_ram = 16 * GIB;
        let input = PlanInput {
            components: vec![
                ComponentSpec::new(CLIP_L, 235 * MIB).with_compute(MIB),
                ComponentSpec::new(T5, 6 * GIB).with_compute(400 * MIB),
                dit,
            ],
            budget: None,
            reserve: 0,
            options: PlanOptions {
                offload: Offload::Full,
                ..PlanOptions::default()
            },
        };
        let p = plan(&input).unwrap();
        let run = |c: Component| {
            p.steps
                .iter()
                .find(|s| s.component == c && matches!(s.action, Action::Run(_)))
                .unwrap()
                .ram_bytes
        };
        assert_eq!(run(CLIP_L), 236 * MIB);
        assert_eq!(run(T5), 6 * GIB + 400 * MIB + 16 * GIB);
        assert_eq!(run(DIT), 18 * GIB);
        assert_eq!(p.peak_ram, 6 * GIB + 400 * MIB + 16 * GIB);
        // On the device the DiT holds nothing for the stage.
        let mut on_device = input.clone();
        on_device.options.offload = Offload::Auto;
        on_device.budget = Some(40 * GIB);
        let p = plan(&on_device).unwrap();
        assert!(p.components.iter().all(|c| c.held_ram_bytes == 0));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("12G").unwrap(), 12 * GIB);
        assert_eq!(parse_size("12GB").unwrap(), 12 * GIB);
        assert_eq!(parse_size("11.5GiB").unwrap(), 11 * GIB + GIB / 2);
        assert_eq!(parse_size("900M").unwrap(), 900 * MIB);
        assert_eq!(parse_size("1.5T").unwrap(), 1536 * GIB);
        assert_eq!(parse_size("2048MiB").unwrap(), 2 * GIB);
        assert_eq!(parse_size("512 k").unwrap(), 512 * 1024);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        for bad in ["", "G", "12X", "1.2.3G", "-1G", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_size("12X").unwrap_err().to_string(),
            "'12X': unknown unit (expected a size such as 12G, 11.5GiB, 900M, 2048MiB)"
        );
        assert_eq!(size_arg(6403 * MIB + 512 * MIB), "6.8G");
        assert_eq!(size_arg(12 * GIB), "12G");
    }
}
