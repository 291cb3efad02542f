//! Weights placed on the compute device: copies of a loaded [`TensorSet`] in buffers leased
//! from the [`Accountant`], either all resident or with the blocks of a denoiser streamed
//! through device slots.
//!
//! A streamed set holds every tensor under its canonical name, so models build their graphs
//! from it exactly as from the loaded set; the tensors of block `b` live in slot `b % slots`
//! (all blocks of a slot share its bytes). [`DeviceWeights::run_blocks`] uploads each block
//! into its slot before the caller computes it; with two slots a copy thread uploads block
//! `b + 1` while block `b` computes, so the upload hides behind the compute.

use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use crate::ggml::{Backend, Buffer, GgmlError, TensorSet, Upload};

use super::accountant::{Accountant, Lease, OverBudget};

/// Why weights could not be placed on the device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Not transparent: the [`OverBudget`] is this error's source, so that it stays reachable
    /// (with its hint, [`super::accountant::hint`]) through the errors that wrap this one.
    #[error("{0}")]
    Budget(#[from] OverBudget),
    #[error(transparent)]
    Ggml(#[from] GgmlError),
    #[error("{0}")]
    Layout(String),
}

/// Where the models of a run compute: `--device cpu|cuda|cuda:N`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ComputeDevice {
    /// ggml's CPU backend. With a VRAM budget the device is simulated: weights placed "on
    /// the device" are copied into leased host buffers.
    #[default]
    Cpu,
    /// CUDA GPU `N` (ggml's "CUDAN"), in a build with `--features cuda`.
    Cuda(usize),
}

impl std::str::FromStr for ComputeDevice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let l = s.trim().to_ascii_lowercase();
        if l == "cpu" {
            return Ok(ComputeDevice::Cpu);
        }
        if let Some(rest) = l.strip_prefix("cuda") {
            let idx = rest.strip_prefix(':').unwrap_or(rest);
            if idx.is_empty() {
                return Ok(ComputeDevice::Cuda(0));
            }
            if let Ok(i) = idx.parse() {
                return Ok(ComputeDevice::Cuda(i));
            }
        }
        Err(format!("'{s}': expected cpu, cuda or cuda:N"))
    }
}

impl std::fmt::Display for ComputeDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ComputeDevice::Cpu => f.write_str("cpu"),
            ComputeDevice::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl ComputeDevice {
    pub fn is_cpu(self) -> bool {
        self == ComputeDevice::Cpu
    }

    /// The device in ggml's registry, or why there is none in this build or on this machine.
    pub fn ggml_device(self) -> Result<crate::ggml::Device, GgmlError> {
        let want = match self {
            ComputeDevice::Cpu => "cpu".to_string(),
            ComputeDevice::Cuda(i) => format!("cuda{i}"),
        };
        let devs = crate::ggml::devices();
        devs.iter()
            .find(|d| d.name().to_ascii_lowercase() == want)
            .copied()
            .ok_or_else(|| {
                let have: Vec<String> = devs.iter().map(|d| d.name()).collect();
                GgmlError::Backend(if cfg!(nijigen_cuda) || self.is_cpu() {
                    format!(
                        "no device {self} on this machine (ggml sees: {})",
                        have.join(", ")
                    )
                } else {
                    format!("--device {self}: this build has no CUDA backend")
                })
            })
    }

    /// (free, total) bytes of device memory as the driver reports them now.
    pub fn memory(self) -> Result<(u64, u64), GgmlError> {
        Ok(self.ggml_device()?.memory())
    }

    /// A compute backend on this device (`threads` for the CPU's).
    pub fn backend(self, threads: usize) -> Result<Backend, GgmlError> {
        match self {
            ComputeDevice::Cpu => Backend::cpu(threads),
            ComputeDevice::Cuda(_) => self.ggml_device()?.init_backend(),
        }
    }
}

/// How a component's weights sit on the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Residency {
    /// Every tensor uploaded once.
    Resident,
    /// Tensors whose names start with one of `blocks` (in execution order, e.g. "blocks.0.")
    /// are uploaded block by block into `slots` slots; the rest is resident.
    Streamed { blocks: Vec<String>, slots: usize },
}

/// Time spent moving weights during one [`DeviceWeights::run_blocks`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StreamStats {
    pub uploaded_bytes: u64,
    /// Time the copies took (on the copy thread with two slots).
    pub upload: Duration,
    /// Time the compute thread waited for a block's upload to finish.
    pub waited: Duration,
}

/// A component's weights on the device.
pub struct DeviceWeights<'s> {
    src: &'s TensorSet<'s>,
    set: TensorSet<'static>,
    /// Names of each streamed block's tensors, in execution order.
    blocks: Vec<Vec<String>>,
    slots: usize,
    resident_bytes: u64,
    slot_bytes: u64,
    /// Pinned host memory uploads go through (GPU backends; `None` on the CPU).
    staging: Mutex<Option<Buffer<'static>>>,
    leases: Vec<Lease>,
}

/// Bytes of the pinned host buffer uploads to a GPU are staged through.
pub const STAGING_BYTES: usize = 64 << 20;

/// Every device tensor starts at a multiple of this (at least any backend's alignment: CPU 32,
/// CUDA 128), so the planner can count the padding without knowing the backend.
pub const DEVICE_ALIGN: usize = 256;

/// `n` bytes padded as device tensors are ([`DEVICE_ALIGN`]).
pub fn padded(n: u64) -> u64 {
    n.div_ceil(DEVICE_ALIGN as u64) * DEVICE_ALIGN as u64
}

fn align_up(n: usize, a: usize) -> usize {
    n.div_ceil(a) * a
}

impl<'s> DeviceWeights<'s> {
    /// Copies `src` to `backend`'s device as `residency` says, leasing every buffer from
    /// `acct` under `what` before allocating it. Resident tensors are uploaded now; streamed
    /// blocks when [`DeviceWeights::run_blocks`] needs them.
    pub fn build(
        src: &'s TensorSet<'s>,
        backend: &Backend,
        residency: &Residency,
        acct: &Accountant,
        what: &str,
    ) -> Result<DeviceWeights<'s>, DeviceError> {
        let align = backend.alignment().max(DEVICE_ALIGN);
        let (prefixes, slots) = match residency {
            Residency::Resident => (&[][..], 0),
            Residency::Streamed { blocks, slots } => {
                if *slots == 0 || blocks.is_empty() {
                    return Err(DeviceError::Layout(format!(
                        "{what}: streaming needs at least one block and one slot"
                    )));
                }
                (&blocks[..], *slots)
            }
        };
        // Lay out the resident part and each block (offsets within its slot).
        let mut resident: Vec<(&str, usize)> = Vec::new();
        let mut resident_end = 0usize;
        let mut blocks: Vec<Vec<(&str, usize)>> = vec![Vec::new(); prefixes.len()];
        let mut block_end = vec![0usize; prefixes.len()];
        for name in src.names() {
            let t = src.get(name).expect("listed tensor");
            let size = align_up(backend.alloc_size(t), align);
            match prefixes.iter().position(|p| name.starts_with(p.as_str())) {
                Some(b) => {
                    // The blocks of a slot share its bytes, so one block's data may land in
                    // another's row padding, which the device's kernels read (CUDA: quantized
                    // rows not a multiple of 512 values) and expect zero. Wan's and umT5's
                    // widths are multiples of 512; refuse rather than compute on garbage.
                    if backend.alloc_size(t) != t.nbytes() {
                        return Err(DeviceError::Layout(format!(
                            "{what}: cannot stream '{name}' ({} {:?}): {} pads its rows",
                            t.ty(),
                            t.ne(),
                            backend.name()
                        )));
                    }
                    blocks[b].push((name, block_end[b]));
                    block_end[b] += size;
                }
                None => {
                    resident.push((name, resident_end));
                    resident_end += size;
                }
            }
        }
        if let Some(b) = blocks.iter().position(|b| b.is_empty()) {
            return Err(DeviceError::Layout(format!(
                "{what}: no tensors named '{}*' to stream",
                prefixes[b]
            )));
        }
        let slot_bytes = block_end.iter().copied().max().unwrap_or(0);
        let slots = slots.min(prefixes.len());

        let mut leases = Vec::new();
        let mut set = TensorSet::new(src.len())?;
        if resident_end > 0 {
            leases.push(acct.lease(&format!("{what} weights"), resident_end as u64)?);
            let buf = set.adopt(backend.alloc_buffer(resident_end)?);
            for &(name, off) in &resident {
                let t = src.get(name).expect("listed tensor");
                set.add_in(name, t.ty(), &t.ne(), buf, off)?;
            }
        }
        let mut slot_buf = Vec::new();
        for k in 0..slots {
            leases.push(acct.lease(&format!("{what} slot {k}"), slot_bytes as u64)?);
            slot_buf.push(set.adopt(backend.alloc_buffer(slot_bytes)?));
        }
        for (b, tensors) in blocks.iter().enumerate() {
            for &(name, off) in tensors {
                let t = src.get(name).expect("listed tensor");
                set.add_in(name, t.ty(), &t.ne(), slot_buf[b % slots], off)?;
            }
        }
        // A GPU copies by DMA from pinned memory only; the CPU needs no staging.
        let mut staging = match backend.device() {
            Some(dev) if !backend.is_cpu() => {
                Some(dev.host_buffer(STAGING_BYTES.min(resident_end.max(slot_bytes)))?)
            }
            _ => None,
        };
        for &(name, _) in &resident {
            let up = upload(src, &set, name)?;
            run_upload(&up, staging.as_mut())?;
        }
        Ok(DeviceWeights {
            src,
            set,
            blocks: blocks
                .into_iter()
                .map(|b| b.into_iter().map(|(n, _)| n.to_string()).collect())
                .collect(),
            slots,
            resident_bytes: resident_end as u64,
            slot_bytes: slot_bytes as u64,
            staging: Mutex::new(staging),
            leases,
        })
    }

    /// The device set and its leases, for a resident copy that must outlive its source's
    /// borrow (LoRA adapters copied beside a model's weights).
    pub fn into_resident(self) -> Result<(TensorSet<'static>, Vec<Lease>), DeviceError> {
        if self.is_streamed() {
            return Err(DeviceError::Layout(
                "a streamed set cannot be detached from its source".into(),
            ));
        }
        Ok((self.set, self.leases))
    }

    /// Sends later block uploads through `staging` (host memory; the pinned buffer a GPU
    /// backend gets by itself), in pieces of its size.
    pub fn stage_through(&mut self, staging: Buffer<'static>) -> Result<(), DeviceError> {
        if !staging.is_host() {
            return Err(DeviceError::Layout(
                "a staging buffer must be host memory".into(),
            ));
        }
        *self.staging.get_mut().unwrap_or_else(|e| e.into_inner()) = Some(staging);
        Ok(())
    }

    /// The device tensors under their canonical names.
    pub fn set(&self) -> &TensorSet<'static> {
        &self.set
    }

    /// Whether blocks are streamed (else every tensor is resident).
    pub fn is_streamed(&self) -> bool {
        self.slots > 0
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Streamed blocks (0 when resident).
    pub fn blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Device bytes: the resident part and one slot.
    pub fn resident_bytes(&self) -> u64 {
        self.resident_bytes
    }

    pub fn slot_bytes(&self) -> u64 {
        self.slot_bytes
    }

    fn uploads(&self, b: usize) -> Result<Vec<Upload<'_>>, GgmlError> {
        self.blocks[b]
            .iter()
            .map(|n| upload(self.src, &self.set, n))
            .collect()
    }

    /// Calls `compute(b)` for every streamed block `b` in order, each after its weights are in
    /// its slot. With two or more slots a copy thread uploads ahead while blocks compute; a
    /// slot is refilled only after the block using it has finished.
    pub fn run_blocks<E: From<GgmlError>>(
        &self,
        mut compute: impl FnMut(usize) -> Result<(), E>,
    ) -> Result<StreamStats, E> {
        let n = self.blocks.len();
        let mut stats = StreamStats::default();
        let mut jobs = Vec::with_capacity(n);
        for b in 0..n {
            let up = self.uploads(b)?;
            stats.uploaded_bytes += up.iter().map(|u| u.bytes() as u64).sum::<u64>();
            jobs.push(up);
        }
        let mut staging_guard = self.staging.lock().unwrap_or_else(|e| e.into_inner());
        let mut staging = staging_guard.as_mut();
        if self.slots < 2 {
            for (b, up) in jobs.into_iter().enumerate() {
                let t = Instant::now();
                for u in &up {
                    run_upload(u, staging.as_deref_mut())?;
                }
                stats.upload += t.elapsed();
                stats.waited += t.elapsed();
                compute(b)?;
            }
            return Ok(stats);
        }
        let slots = self.slots;
        std::thread::scope(|scope| {
            let (ready_tx, ready_rx) = mpsc::channel::<(usize, Duration, Result<(), GgmlError>)>();
            let (done_tx, done_rx) = mpsc::channel::<usize>();
            scope.spawn(move || {
                for (b, up) in jobs.into_iter().enumerate() {
                    // Block b reuses the slot of block b - slots: wait until that one is done.
                    if b >= slots && done_rx.recv().is_err() {
                        return; // the compute side stopped (an error)
                    }
                    let t = Instant::now();
                    let done = up
                        .iter()
                        .try_for_each(|u| run_upload(u, staging.as_deref_mut()));
                    let failed = done.is_err();
                    if ready_tx.send((b, t.elapsed(), done)).is_err() || failed {
                        return;
                    }
                }
            });
            for b in 0..n {
                let t = Instant::now();
                let (got, took, done) = ready_rx
                    .recv()
                    .expect("the copy thread sends every block until one fails");
                debug_assert_eq!(got, b);
                done?;
                stats.waited += t.elapsed();
                stats.upload += took;
                compute(b)?;
                // The copy thread may have finished already (no more blocks): ignore.
                let _ = done_tx.send(b);
            }
            Ok(stats)
        })
    }
}

/// Runs `up`, through the pinned `staging` buffer when there is one.
fn run_upload(up: &Upload<'_>, staging: Option<&mut Buffer<'static>>) -> Result<(), GgmlError> {
    match staging.and_then(Buffer::host_bytes_mut) {
        Some(bytes) => up.run_staged(bytes),
        None => up.run(),
    }
}

/// The copy of `src`'s tensor `name` into `dst`'s: read from host memory, or made by its
/// conversion when it is deferred.
fn upload<'a>(
    src: &'a TensorSet<'a>,
    dst: &'a TensorSet<'static>,
    name: &str,
) -> Result<Upload<'a>, GgmlError> {
    let (s, d) = (
        src.get(name).expect("listed"),
        dst.get(name).expect("added"),
    );
    match src.fill_of(name) {
        Some(make) => Upload::made(s, make, d),
        None => Upload::new(s, d),
    }
}

#[cfg(test)]
mod tests {
    use super::ComputeDevice;

    #[test]
    fn device_names_parse_and_print_as_the_cli_spells_them() {
        for (s, d) in [
            ("cpu", ComputeDevice::Cpu),
            ("CPU", ComputeDevice::Cpu),
            ("cuda", ComputeDevice::Cuda(0)),
            ("cuda:0", ComputeDevice::Cuda(0)),
            ("cuda:1", ComputeDevice::Cuda(1)),
            ("CUDA1", ComputeDevice::Cuda(1)),
        ] {
            assert_eq!(s.parse::<ComputeDevice>(), Ok(d), "{s}");
        }
        assert_eq!(ComputeDevice::Cuda(1).to_string(), "cuda:1");
        assert_eq!(ComputeDevice::Cpu.to_string(), "cpu");
        for bad in ["gpu", "cuda:x", "", "vulkan0"] {
            let e = bad.parse::<ComputeDevice>().unwrap_err();
            assert!(e.contains("expected cpu, cuda or cuda:N"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_cpu_is_always_there_and_a_cuda_device_only_in_a_cuda_build() {
        assert!(ComputeDevice::Cpu.ggml_device().is_ok());
        assert!(ComputeDevice::Cpu.backend(1).unwrap().is_cpu());
        if !cfg!(nijigen_cuda) {
            let e = ComputeDevice::Cuda(0)
                .ggml_device()
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("this build has no CUDA backend"), "{e}");
        }
        let e = ComputeDevice::Cuda(99)
            .ggml_device()
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("cuda:99"), "{e}");
    }
}
