//! Backends (CPU, CUDA) chosen through ggml's device registry, backend buffers (including a
//! zero-copy CPU buffer over mapped bytes), the graph allocator and graph compute.

use std::ffi::CStr;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::Once;

use ggml_sys as sys;

use super::context::{Context, Graph, Tensor};
use super::GgmlError;

/// Kind of a ggml device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Gpu,
    IntegratedGpu,
    Accelerator,
}

/// A device from ggml's registry (static for the life of the program).
#[derive(Clone, Copy)]
pub struct Device {
    ptr: sys::ggml_backend_dev_t,
}

// SAFETY: registry devices are immutable process-wide singletons; ggml's device queries are
// thread safe.
unsafe impl Send for Device {}
unsafe impl Sync for Device {}

fn cstr(p: *const std::os::raw::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: ggml returns NUL-terminated static strings for names and descriptions.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

static INIT: Once = Once::new();

/// One-time process init: ggml's CPU tables and log routing into `tracing`.
pub fn init() {
    INIT.call_once(|| {
        // SAFETY: ggml_cpu_init is idempotent and thread safe; log_set installs a static fn.
        unsafe {
            sys::ggml_cpu_init();
            sys::ggml_log_set(Some(log_to_tracing), std::ptr::null_mut());
        }
    });
}

/// ggml's log callback.
///
/// # Safety
/// Called by ggml only, with `text` null or a NUL-terminated string valid for the call
/// (`cstr` handles both); it keeps no pointer after returning.
unsafe extern "C" fn log_to_tracing(
    level: sys::ggml_log_level,
    text: *const std::os::raw::c_char,
    _user: *mut std::os::raw::c_void,
) {
    let msg = cstr(text);
    let msg = msg.trim_end();
    if msg.is_empty() {
        return;
    }
    match level {
        sys::GGML_LOG_LEVEL_ERROR => tracing::error!(target: "ggml", "{msg}"),
        sys::GGML_LOG_LEVEL_WARN => tracing::warn!(target: "ggml", "{msg}"),
        sys::GGML_LOG_LEVEL_INFO => tracing::debug!(target: "ggml", "{msg}"),
        _ => tracing::trace!(target: "ggml", "{msg}"),
    }
}

/// Every device ggml knows in this build (the CPU always; CUDA GPUs when built with `cuda`).
pub fn devices() -> Vec<Device> {
    init();
    // SAFETY: registry queries; indices are within the count.
    let n = unsafe { sys::ggml_backend_dev_count() };
    (0..n)
        .filter_map(|i| {
            // SAFETY: i < count.
            let ptr = unsafe { sys::ggml_backend_dev_get(i) };
            (!ptr.is_null()).then_some(Device { ptr })
        })
        .collect()
}

impl Device {
    /// ggml's device name ("CPU", "CUDA0").
    pub fn name(&self) -> String {
        // SAFETY: live registry device.
        cstr(unsafe { sys::ggml_backend_dev_name(self.ptr) })
    }

    pub fn description(&self) -> String {
        // SAFETY: live registry device.
        cstr(unsafe { sys::ggml_backend_dev_description(self.ptr) })
    }

    pub fn kind(&self) -> DeviceKind {
        // SAFETY: live registry device.
        match unsafe { sys::ggml_backend_dev_type(self.ptr) } {
            sys::GGML_BACKEND_DEVICE_TYPE_CPU => DeviceKind::Cpu,
            sys::GGML_BACKEND_DEVICE_TYPE_GPU => DeviceKind::Gpu,
            sys::GGML_BACKEND_DEVICE_TYPE_IGPU => DeviceKind::IntegratedGpu,
            _ => DeviceKind::Accelerator,
        }
    }

    /// (free, total) bytes of device memory as the driver reports them.
    pub fn memory(&self) -> (u64, u64) {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: live device; out-pointers are valid.
        unsafe { sys::ggml_backend_dev_memory(self.ptr, &mut free, &mut total) };
        (free as u64, total as u64)
    }

    /// A buffer of `size` bytes of host memory the device copies from fastest: page-locked
    /// (pinned) memory for CUDA, so that uploads are DMA transfers that run beside compute;
    /// plain host memory where the device has no such type (the CPU).
    pub fn host_buffer(&self, size: usize) -> Result<Buffer<'static>, GgmlError> {
        init();
        // SAFETY: live device; the host buffer type may be null (then the CPU type is used);
        // alloc returns null on failure.
        let ptr = unsafe {
            let mut buft = sys::ggml_backend_dev_host_buffer_type(self.ptr);
            if buft.is_null() {
                buft = sys::ggml_backend_cpu_buffer_type();
            }
            sys::ggml_backend_buft_alloc_buffer(buft, size.max(1))
        };
        Buffer::from_raw(ptr).ok_or(GgmlError::OutOfMemory {
            what: "pinned host buffer",
            bytes: size,
        })
    }

    /// Starts a backend on this device.
    pub fn init_backend(&self) -> Result<Backend, GgmlError> {
        init();
        // SAFETY: live device; null params means defaults; returns null on failure.
        let ptr = unsafe { sys::ggml_backend_dev_init(self.ptr, std::ptr::null()) };
        NonNull::new(ptr)
            .map(|ptr| Backend { ptr })
            .ok_or_else(|| GgmlError::Backend(format!("could not start device {}", self.name())))
    }
}

/// A running backend (a compute stream on one device).
pub struct Backend {
    ptr: NonNull<sys::ggml_backend>,
}

// SAFETY: a backend may be moved between threads; it is never used from two at once (&mut for
// compute, and Backend is not Sync).
unsafe impl Send for Backend {}

impl Backend {
    /// The CPU backend with `threads` compute threads.
    pub fn cpu(threads: usize) -> Result<Backend, GgmlError> {
        init();
        // SAFETY: plain constructor, null on failure.
        let ptr = unsafe { sys::ggml_backend_cpu_init() };
        let b = NonNull::new(ptr)
            .map(|ptr| Backend { ptr })
            .ok_or_else(|| GgmlError::Backend("could not start the CPU backend".into()))?;
        b.set_threads(threads);
        Ok(b)
    }

    /// Backend by device name as `nijigen --device` spells it: "cpu", "cuda", "cuda:N".
    pub fn from_spec(spec: &str, threads: usize) -> Result<Backend, GgmlError> {
        let spec_l = spec.to_ascii_lowercase();
        if spec_l == "cpu" {
            return Backend::cpu(threads);
        }
        let want = if let Some(rest) = spec_l.strip_prefix("cuda") {
            let idx = rest.trim_start_matches(':');
            let idx = if idx.is_empty() { "0" } else { idx };
            format!("cuda{idx}")
        } else {
            spec_l.clone()
        };
        let devs = devices();
        let dev = devs
            .iter()
            .find(|d| d.name().to_ascii_lowercase() == want)
            .ok_or_else(|| {
                let names: Vec<String> = devs.iter().map(|d| d.name()).collect();
                GgmlError::Backend(format!(
                    "no device '{spec}' in this build (have: {}){}",
                    names.join(", "),
                    if cfg!(nijigen_cuda) {
                        ""
                    } else {
                        "; CUDA needs a build with --features cuda"
                    }
                ))
            })?;
        let b = dev.init_backend()?;
        b.set_threads(threads);
        Ok(b)
    }

    pub(crate) fn as_ptr(&self) -> sys::ggml_backend_t {
        self.ptr.as_ptr()
    }

    pub fn name(&self) -> String {
        // SAFETY: live backend.
        cstr(unsafe { sys::ggml_backend_name(self.as_ptr()) })
    }

    /// The registry device this backend computes on.
    pub fn device(&self) -> Option<Device> {
        // SAFETY: live backend; returns the static registry device (or null).
        let ptr = unsafe { sys::ggml_backend_get_device(self.as_ptr()) };
        (!ptr.is_null()).then_some(Device { ptr })
    }

    /// Whether this backend can compute with `t` where its data lives (a CPU backend cannot
    /// read a CUDA buffer, nor a CUDA backend a plain host buffer). Tensors without data
    /// (placed later by the graph allocator) are usable.
    pub fn can_use(&self, t: Tensor<'_>) -> bool {
        // SAFETY: live backend and tensor; the buffer pointer is read only when non-null.
        unsafe {
            let buf = (*t.as_ptr()).buffer;
            buf.is_null()
                || sys::ggml_backend_supports_buft(
                    self.as_ptr(),
                    sys::ggml_backend_buffer_get_type(buf),
                )
        }
    }

    /// The nodes of `graph` this backend cannot compute ("CONV_3D (f16, f32)"), deduplicated.
    /// ggml aborts the process on an unsupported op, so callers check first.
    pub fn unsupported_ops(&self, graph: &Graph<'_>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        // SAFETY: live backend and graph; nodes and their sources are live tensors.
        unsafe {
            let n = sys::ggml_graph_n_nodes(graph.as_ptr());
            for i in 0..n {
                let node = sys::ggml_graph_node(graph.as_ptr(), i);
                if sys::ggml_backend_supports_op(self.as_ptr(), node) {
                    continue;
                }
                let types: Vec<String> = (*node)
                    .src
                    .iter()
                    .take_while(|s| !s.is_null())
                    .map(|&s| cstr(sys::ggml_type_name((*s).type_)))
                    .collect();
                let d = format!("{} ({})", cstr(sys::ggml_op_desc(node)), types.join(", "));
                if !out.contains(&d) {
                    out.push(d);
                }
            }
        }
        out
    }

    pub fn is_cpu(&self) -> bool {
        // SAFETY: live backend.
        unsafe { sys::ggml_backend_is_cpu(self.as_ptr()) }
    }

    /// Sets the CPU thread count (no effect on other backends).
    pub fn set_threads(&self, threads: usize) {
        if self.is_cpu() {
            // SAFETY: checked that this is the CPU backend.
            unsafe { sys::ggml_backend_cpu_set_n_threads(self.as_ptr(), threads.max(1) as i32) };
        }
    }

    /// Runs the graph to completion.
    pub fn compute(&mut self, graph: &Graph<'_>) -> Result<(), GgmlError> {
        // ggml aborts on an op a GPU backend lacks: refuse with the list instead.
        if !self.is_cpu() {
            let bad = self.unsupported_ops(graph);
            if !bad.is_empty() {
                return Err(GgmlError::Unsupported(format!(
                    "the {} backend cannot compute {}",
                    self.name(),
                    bad.join(", ")
                )));
            }
        }
        // SAFETY: graph tensors all have data (allocated by a buffer or the graph allocator;
        // ggml checks and fails otherwise); compute is synchronous here.
        let status = unsafe { sys::ggml_backend_graph_compute(self.as_ptr(), graph.as_ptr()) };
        if status == sys::GGML_STATUS_SUCCESS {
            Ok(())
        } else {
            Err(GgmlError::Compute(status as i32))
        }
    }

    /// Waits for queued work (async copies) to finish.
    pub fn synchronize(&self) {
        // SAFETY: live backend.
        unsafe { sys::ggml_backend_synchronize(self.as_ptr()) }
    }

    /// The alignment of tensor data in this backend's buffers.
    pub fn alignment(&self) -> usize {
        // SAFETY: live backend.
        unsafe { sys::ggml_backend_get_alignment(self.as_ptr()) }
    }

    /// Bytes a tensor shaped like `t` takes in this backend's buffers: its data plus any
    /// padding the device's kernels read past the end (CUDA pads the last row of quantized
    /// matrices to 512 values).
    pub fn alloc_size(&self, t: Tensor<'_>) -> usize {
        // SAFETY: live backend and tensor; get_alloc_size only reads the type and shape.
        unsafe {
            let buft = sys::ggml_backend_get_default_buffer_type(self.as_ptr());
            sys::ggml_backend_buft_get_alloc_size(buft, t.as_ptr())
        }
    }

    /// Allocates a buffer of `size` bytes on this backend's device.
    pub fn alloc_buffer(&self, size: usize) -> Result<Buffer<'static>, GgmlError> {
        // SAFETY: live backend; returns null on failure.
        let ptr = unsafe {
            let buft = sys::ggml_backend_get_default_buffer_type(self.as_ptr());
            sys::ggml_backend_buft_alloc_buffer(buft, size)
        };
        NonNull::new(ptr)
            .map(|ptr| Buffer {
                ptr,
                borrowed: false,
                _data: PhantomData,
            })
            .ok_or(GgmlError::OutOfMemory {
                what: "backend buffer",
                bytes: size,
            })
    }

    /// Allocates one buffer for every tensor of `ctx` that has no data yet.
    pub fn alloc_ctx_tensors(&self, ctx: &Context) -> Result<Buffer<'static>, GgmlError> {
        // SAFETY: ctx is a live no_alloc context; returns null if there is nothing to allocate
        // or allocation failed.
        let ptr = unsafe { sys::ggml_backend_alloc_ctx_tensors(ctx.as_ptr(), self.as_ptr()) };
        NonNull::new(ptr)
            .map(|ptr| Buffer {
                ptr,
                borrowed: false,
                _data: PhantomData,
            })
            .ok_or(GgmlError::OutOfMemory {
                what: "context tensors",
                bytes: 0,
            })
    }

    /// A graph allocator for this backend's default buffer type.
    pub fn graph_allocator(&self) -> Result<GraphAllocator, GgmlError> {
        // SAFETY: live backend; gallocr_new returns null on failure.
        let ptr = unsafe {
            sys::ggml_gallocr_new(sys::ggml_backend_get_default_buffer_type(self.as_ptr()))
        };
        NonNull::new(ptr)
            .map(|ptr| GraphAllocator { ptr, meter: None })
            .ok_or_else(|| GgmlError::Backend("could not create a graph allocator".into()))
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // SAFETY: we own the backend.
        unsafe { sys::ggml_backend_free(self.as_ptr()) }
    }
}

/// A backend buffer. `'d` is the lifetime of borrowed host bytes for buffers made over
/// existing memory (`'static` for buffers that own their memory).
pub struct Buffer<'d> {
    ptr: NonNull<sys::ggml_backend_buffer>,
    /// Over caller bytes ([`Buffer::from_host_bytes`], read-only): never handed out mutably.
    borrowed: bool,
    _data: PhantomData<&'d [u8]>,
}

// SAFETY: a buffer is plain memory owned by this handle; moving it between threads is fine.
unsafe impl Send for Buffer<'_> {}

/// How ggml's CPU backend aligns buffer bases.
pub const CPU_BUFFER_ALIGNMENT: usize = 32;

impl<'d> Buffer<'d> {
    /// A CPU buffer over `bytes` without copying (e.g. a memory-mapped weight file). The bytes
    /// must start 32-byte aligned (page-aligned maps always do). ggml never writes to tensors
    /// placed in it as long as they are used only as weights (graph sources).
    pub fn from_host_bytes(bytes: &'d [u8]) -> Result<Buffer<'d>, GgmlError> {
        if bytes.is_empty() {
            return Err(GgmlError::Backend(
                "cannot make a buffer over zero bytes".into(),
            ));
        }
        if bytes.as_ptr() as usize % CPU_BUFFER_ALIGNMENT != 0 {
            return Err(GgmlError::Backend(
                "host bytes are not 32-byte aligned".into(),
            ));
        }
        init();
        // SAFETY: the slice outlives the buffer ('d); ggml treats the memory as borrowed and
        // does not free it. The pointer is cast to mut as the API requires; weights placed here
        // are only read by compute.
        let ptr = unsafe {
            sys::ggml_backend_cpu_buffer_from_ptr(
                bytes.as_ptr() as *mut std::os::raw::c_void,
                bytes.len(),
            )
        };
        NonNull::new(ptr)
            .map(|ptr| Buffer {
                ptr,
                borrowed: true,
                _data: PhantomData,
            })
            .ok_or_else(|| GgmlError::Backend("ggml_backend_cpu_buffer_from_ptr failed".into()))
    }

    /// Takes ownership of a buffer ggml allocated (None if null).
    pub(crate) fn from_raw(ptr: sys::ggml_backend_buffer_t) -> Option<Buffer<'static>> {
        NonNull::new(ptr).map(|ptr| Buffer {
            ptr,
            borrowed: false,
            _data: PhantomData,
        })
    }

    pub fn size(&self) -> usize {
        // SAFETY: live buffer.
        unsafe { sys::ggml_backend_buffer_get_size(self.ptr.as_ptr()) }
    }

    /// The buffer's bytes, for a host buffer it owns (pinned staging memory); `None` for device
    /// memory and for buffers over caller bytes (read-only, e.g. a mapped file).
    pub fn host_bytes_mut(&mut self) -> Option<&mut [u8]> {
        if !self.is_host() || self.borrowed {
            return None;
        }
        // SAFETY: an owned host buffer's base points at `size` bytes it allocated; &mut self
        // makes this the only access for the slice's life.
        unsafe {
            let base = sys::ggml_backend_buffer_get_base(self.ptr.as_ptr()) as *mut u8;
            (!base.is_null()).then(|| std::slice::from_raw_parts_mut(base, self.size()))
        }
    }

    pub fn is_host(&self) -> bool {
        // SAFETY: live buffer.
        unsafe { sys::ggml_backend_buffer_is_host(self.ptr.as_ptr()) }
    }

    /// Marks the buffer as holding weights (lets schedulers prefer computing where they live).
    pub fn set_weights_usage(&self) {
        // SAFETY: live buffer.
        unsafe {
            sys::ggml_backend_buffer_set_usage(
                self.ptr.as_ptr(),
                sys::GGML_BACKEND_BUFFER_USAGE_WEIGHTS,
            )
        }
    }

    /// Places `tensor` at byte `offset` of this buffer (no copy). The tensor must have no data
    /// yet, and must not outlive the buffer: `'c` cannot outlive `'b`.
    pub fn place<'b, 'c>(&'b self, tensor: Tensor<'c>, offset: usize) -> Result<(), GgmlError>
    where
        'b: 'c,
    {
        let size = tensor.nbytes();
        let end = offset
            .checked_add(size)
            .ok_or_else(|| GgmlError::Backend("offset overflow".into()))?;
        if end > self.size() {
            return Err(GgmlError::Backend(format!(
                "tensor of {size} bytes at offset {offset} does not fit a buffer of {} bytes",
                self.size()
            )));
        }
        if tensor.has_data() {
            return Err(GgmlError::Backend("tensor already has data".into()));
        }
        // SAFETY: bounds checked above; base + offset lies within the buffer; the tensor has no
        // data and is not a view (fresh tensors from new_tensor). The lifetime bound keeps the
        // buffer alive as long as the tensor handle.
        let status = unsafe {
            let base = sys::ggml_backend_buffer_get_base(self.ptr.as_ptr()) as *mut u8;
            sys::ggml_backend_tensor_alloc(
                self.ptr.as_ptr(),
                tensor.as_ptr(),
                base.add(offset) as *mut _,
            )
        };
        if status == sys::GGML_STATUS_SUCCESS {
            Ok(())
        } else {
            Err(GgmlError::Backend(format!(
                "ggml_backend_tensor_alloc failed ({status})"
            )))
        }
    }
}

impl Drop for Buffer<'_> {
    fn drop(&mut self) {
        // SAFETY: we own the buffer; for host-pointer buffers ggml does not free the memory.
        unsafe { sys::ggml_backend_buffer_free(self.ptr.as_ptr()) }
    }
}

/// A pending copy of one host tensor's bytes into a device tensor of the same size: the unit
/// of weight streaming. It is `Send`, so a copy thread can run it while the compute thread
/// works on other tensors; `'a` keeps both tensors (the mapped file and the device set) alive.
/// The bytes are either read from host memory or made on the way by a conversion (a deferred
/// tensor, [`super::TensorSet::add_deferred`]).
pub struct Upload<'a> {
    src: UploadSrc<'a>,
    dst: NonNull<sys::ggml_tensor>,
    len: usize,
    _borrow: PhantomData<&'a ()>,
}

enum UploadSrc<'a> {
    Host(*const u8),
    Made(&'a super::tensor_set::MakeBytes<'a>),
}

// SAFETY: the pointers stay valid for 'a (borrowed from the tensors' owners); the source is
// only read (a conversion only reads the mapped file and is Sync), and the destination is
// written by exactly one thread at a time (the streamer hands a slot to the copy thread only
// while no graph reading it is computing).
unsafe impl Send for Upload<'_> {}

impl<'a> Upload<'a> {
    /// A copy of `src` (a tensor in host memory) into `dst` (same type and byte size).
    pub fn new(src: Tensor<'a>, dst: Tensor<'a>) -> Result<Upload<'a>, GgmlError> {
        check_pair(src, dst)?;
        // SAFETY: read-only field access on a live tensor; host_data checks the buffer kind.
        let data = unsafe { host_data(src.as_ptr()) }.ok_or_else(|| {
            GgmlError::Backend("upload: the source tensor is not in host memory".into())
        })?;
        Ok(Upload {
            src: UploadSrc::Host(data),
            dst: NonNull::new(dst.as_ptr()).expect("live tensor"),
            len: src.nbytes(),
            _borrow: PhantomData,
        })
    }

    /// A copy into `dst` of the bytes `make` writes for the deferred tensor `src` (same type
    /// and size as `dst`), made when the upload runs.
    pub fn made(
        src: Tensor<'a>,
        make: &'a super::tensor_set::MakeBytes<'a>,
        dst: Tensor<'a>,
    ) -> Result<Upload<'a>, GgmlError> {
        check_pair(src, dst)?;
        Ok(Upload {
            src: UploadSrc::Made(make),
            dst: NonNull::new(dst.as_ptr()).expect("live tensor"),
            len: src.nbytes(),
            _borrow: PhantomData,
        })
    }

    pub fn bytes(&self) -> usize {
        self.len
    }

    /// Whether the bytes are made by a conversion on the way.
    pub fn is_made(&self) -> bool {
        matches!(self.src, UploadSrc::Made(_))
    }

    fn make(
        &self,
        make: &dyn Fn(&mut [u8]) -> Result<(), String>,
        out: &mut [u8],
    ) -> Result<(), GgmlError> {
        make(out).map_err(|e| {
            let name = Tensor::from_raw(self.dst).name();
            GgmlError::Backend(format!("making '{name}' for the device: {e}"))
        })
    }

    /// Performs the copy (synchronous). A made tensor is written straight into a host
    /// destination, else made in a temporary buffer first.
    pub fn run(&self) -> Result<(), GgmlError> {
        match self.src {
            // SAFETY: see the Send impl; sizes were checked in `new`.
            UploadSrc::Host(src) => unsafe {
                sys::ggml_backend_tensor_set(self.dst.as_ptr(), src as *const _, 0, self.len)
            },
            UploadSrc::Made(make) => {
                // SAFETY: live tensor; host_data checks the buffer kind.
                match unsafe { host_data(self.dst.as_ptr()) } {
                    Some(p) => {
                        // SAFETY: a host destination of len bytes, written by this thread only
                        // (see the Send impl).
                        let out = unsafe { std::slice::from_raw_parts_mut(p as *mut u8, self.len) };
                        self.make(make, out)?;
                    }
                    None => {
                        let mut tmp = vec![0u8; self.len];
                        self.make(make, &mut tmp)?;
                        // SAFETY: tmp holds len bytes, the destination's size.
                        unsafe {
                            sys::ggml_backend_tensor_set(
                                self.dst.as_ptr(),
                                tmp.as_ptr() as *const _,
                                0,
                                self.len,
                            )
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Performs the copy through `staging` (pinned host memory): the bytes are first copied
    /// (or made) there, then sent in pieces of the staging size. From pinned memory, CUDA
    /// copies by DMA on the calling thread's stream, beside the compute stream.
    pub fn run_staged(&self, staging: &mut [u8]) -> Result<(), GgmlError> {
        if staging.is_empty() {
            return self.run();
        }
        let made;
        let src: &[u8] = match self.src {
            // SAFETY: src holds len readable bytes (checked in `new`).
            UploadSrc::Host(p) => unsafe { std::slice::from_raw_parts(p, self.len) },
            UploadSrc::Made(make) if self.len <= staging.len() => {
                self.make(make, &mut staging[..self.len])?;
                // SAFETY: see the Send impl; the staging buffer holds the len bytes.
                unsafe {
                    sys::ggml_backend_tensor_set(
                        self.dst.as_ptr(),
                        staging.as_ptr() as *const _,
                        0,
                        self.len,
                    )
                }
                return Ok(());
            }
            UploadSrc::Made(make) => {
                let mut tmp = vec![0u8; self.len];
                self.make(make, &mut tmp)?;
                made = tmp;
                &made
            }
        };
        let mut done = 0;
        while done < self.len {
            let n = staging.len().min(self.len - done);
            staging[..n].copy_from_slice(&src[done..done + n]);
            // SAFETY: see the Send impl; offset done + n <= the tensor's size.
            unsafe {
                sys::ggml_backend_tensor_set(
                    self.dst.as_ptr(),
                    staging.as_ptr() as *const _,
                    done,
                    n,
                )
            }
            done += n;
        }
        Ok(())
    }
}

/// Checks that `src` can be copied into `dst`: same type and size, `dst` with memory.
fn check_pair(src: Tensor<'_>, dst: Tensor<'_>) -> Result<(), GgmlError> {
    let len = src.nbytes();
    if src.ty() != dst.ty() || dst.nbytes() != len || !dst.has_data() {
        return Err(GgmlError::Backend(format!(
            "upload: a {} tensor of {len} bytes into a {} tensor of {} bytes{}",
            src.ty(),
            dst.ty(),
            dst.nbytes(),
            if dst.has_data() {
                ""
            } else {
                " without memory"
            }
        )));
    }
    Ok(())
}

/// Forgets where `t` was placed if a graph allocator placed it (its buffer is a compute
/// buffer), so that the next allocation places it again.
///
/// # Safety
/// `t` must be null or a live tensor not used by a running computation.
unsafe fn detach_compute(t: *mut sys::ggml_tensor) {
    if t.is_null() {
        return;
    }
    let raw = &mut *t;
    if !raw.buffer.is_null()
        && sys::ggml_backend_buffer_get_usage(raw.buffer) == sys::GGML_BACKEND_BUFFER_USAGE_COMPUTE
    {
        raw.data = std::ptr::null_mut();
        raw.buffer = std::ptr::null_mut();
    }
}

/// The host address of a tensor's data, if it lives in host memory.
///
/// # Safety
/// `t` must be a live tensor.
unsafe fn host_data(t: *mut sys::ggml_tensor) -> Option<*const u8> {
    let raw = &*t;
    if raw.data.is_null() {
        return None;
    }
    if !raw.buffer.is_null() && !sys::ggml_backend_buffer_is_host(raw.buffer) {
        return None;
    }
    Some(raw.data as *const u8)
}

/// Copies `data` into a backend tensor (any backend). Sizes must match exactly.
pub fn tensor_set(t: Tensor<'_>, data: &[u8]) -> Result<(), GgmlError> {
    if !t.has_data() {
        return Err(GgmlError::Backend(
            "tensor_set on a tensor without data".into(),
        ));
    }
    if data.len() != t.nbytes() {
        return Err(GgmlError::Backend(format!(
            "tensor_set: {} bytes for a tensor of {}",
            data.len(),
            t.nbytes()
        )));
    }
    // SAFETY: tensor has a buffer and the sizes match.
    unsafe { sys::ggml_backend_tensor_set(t.as_ptr(), data.as_ptr() as *const _, 0, data.len()) };
    Ok(())
}

/// Copies f32 values into an F32 backend tensor.
pub fn tensor_set_f32(t: Tensor<'_>, data: &[f32]) -> Result<(), GgmlError> {
    if t.ty() != super::GgmlType::F32 {
        return Err(GgmlError::Backend(format!(
            "tensor_set_f32 on a {} tensor",
            t.ty()
        )));
    }
    tensor_set(t, bytemuck::cast_slice(data))
}

/// Reads a backend tensor's bytes.
pub fn tensor_get(t: Tensor<'_>) -> Result<Vec<u8>, GgmlError> {
    if !t.has_data() {
        return Err(GgmlError::Backend(
            "tensor_get on a tensor without data".into(),
        ));
    }
    let mut out = vec![0u8; t.nbytes()];
    // SAFETY: tensor has data; out has exactly nbytes.
    unsafe { sys::ggml_backend_tensor_get(t.as_ptr(), out.as_mut_ptr() as *mut _, 0, out.len()) };
    Ok(out)
}

/// Reads an F32 backend tensor (contiguous) as f32 values.
pub fn tensor_get_f32(t: Tensor<'_>) -> Result<Vec<f32>, GgmlError> {
    if t.ty() != super::GgmlType::F32 {
        return Err(GgmlError::Backend(format!(
            "tensor_get_f32 on a {} tensor",
            t.ty()
        )));
    }
    let bytes = tensor_get(t)?;
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// A check run with the allocator's buffer size after each reserve or allocation (the
/// runtime's memory accountant): an error stops the caller before it computes, as
/// [`GgmlError::Refused`] with the check's error as its source.
pub type AllocMeter =
    Box<dyn FnMut(usize) -> Result<(), Box<dyn std::error::Error + Send + Sync>> + Send>;

/// ggml's graph allocator: plans and allocates the intermediate tensors of a graph, reusing
/// memory between nodes. Reserve once per shape, then allocate each time the graph is rebuilt.
pub struct GraphAllocator {
    ptr: NonNull<sys::ggml_gallocr>,
    meter: Option<AllocMeter>,
}

// SAFETY: owned allocator state, used from one thread at a time (&mut).
unsafe impl Send for GraphAllocator {}

impl GraphAllocator {
    /// Installs (or removes) the check run with the buffer size after each allocation.
    pub fn set_meter(&mut self, meter: Option<AllocMeter>) {
        self.meter = meter;
    }

    /// Replaces the allocator with a fresh one for `backend`'s buffer type, keeping the meter
    /// (a model moved to another backend).
    pub fn rebind(&mut self, backend: &Backend) -> Result<(), GgmlError> {
        let mut fresh = backend.graph_allocator()?;
        fresh.meter = self.meter.take();
        *self = fresh;
        Ok(())
    }

    fn metered(&mut self) -> Result<(), GgmlError> {
        let size = self.buffer_size();
        match &mut self.meter {
            Some(m) => m(size).map_err(GgmlError::Refused),
            None => Ok(()),
        }
    }

    /// Sizes the allocator's buffer for `graph` (and graphs like it).
    pub fn reserve(&mut self, graph: &Graph<'_>) -> Result<(), GgmlError> {
        // SAFETY: live allocator and graph.
        if unsafe { sys::ggml_gallocr_reserve(self.ptr.as_ptr(), graph.as_ptr()) } {
            self.metered()
        } else {
            Err(GgmlError::OutOfMemory {
                what: "graph reserve",
                bytes: 0,
            })
        }
    }

    /// Allocates the intermediate tensors of `graph` (every tensor that has no data, or whose
    /// data is in a compute buffer from an earlier allocation).
    ///
    /// ggml keeps the data pointer of a tensor that already has one, and frees its compute
    /// buffer when a larger graph makes it grow. A graph allocated before by this allocator,
    /// while another graph made the buffer grow in between (the graphs of a staged forward),
    /// would keep pointers into the freed buffer: so every tensor whose memory is in a compute
    /// buffer is detached first and placed again. Weights, state tensors and inputs set by
    /// the caller after this call live elsewhere or are placed now.
    pub fn alloc_graph(&mut self, graph: &Graph<'_>) -> Result<(), GgmlError> {
        // SAFETY: live graph; nodes and their sources are live tensors of the graph's context
        // (or of weight sets that outlive it). Only gallocr-owned tensors are reset.
        unsafe {
            let n = sys::ggml_graph_n_nodes(graph.as_ptr());
            for i in 0..n {
                let node = sys::ggml_graph_node(graph.as_ptr(), i);
                detach_compute(node);
                for &src in (*node).src.iter() {
                    detach_compute(src);
                }
            }
        }
        // SAFETY: live allocator and graph; tensors with data are skipped by ggml.
        if unsafe { sys::ggml_gallocr_alloc_graph(self.ptr.as_ptr(), graph.as_ptr()) } {
            self.metered()
        } else {
            Err(GgmlError::OutOfMemory {
                what: "graph allocation",
                bytes: self.buffer_size(),
            })
        }
    }

    /// Bytes of the allocator's compute buffer.
    pub fn buffer_size(&self) -> usize {
        // SAFETY: live allocator; buffer 0 always exists for a single-buffer allocator.
        unsafe { sys::ggml_gallocr_get_buffer_size(self.ptr.as_ptr(), 0) }
    }
}

impl Drop for GraphAllocator {
    fn drop(&mut self) {
        // SAFETY: we own the allocator.
        unsafe { sys::ggml_gallocr_free(self.ptr.as_ptr()) }
    }
}
