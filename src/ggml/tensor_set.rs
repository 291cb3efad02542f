//! A named set of weight tensors: one metadata context, tensors placed without copying into
//! CPU buffers over borrowed host bytes (memory-mapped files), copied into owned buffers when
//! they had to be converted, or deferred: made by a [`Fill`] only when copied to a device (a
//! conversion that would otherwise hold the whole model in RAM).

use std::collections::HashMap;
use std::ptr::NonNull;

use ggml_sys as sys;

use super::backend::Buffer;
use super::context::{Context, Tensor};
use super::{tensor_set, GgmlError, GgmlType};

/// Makes a deferred tensor's bytes into a slice of exactly its size (a conversion from the
/// mapped file); an error says why it could not.
pub type Fill<'d> = Box<dyn Fn(&mut [u8]) -> Result<(), String> + Send + Sync + 'd>;

/// A deferred tensor's [`Fill`], borrowed.
pub type MakeBytes<'d> = dyn Fn(&mut [u8]) -> Result<(), String> + Sync + 'd;

/// Weight tensors by name. `'d` is the lifetime of the host bytes the tensors point into.
pub struct TensorSet<'d> {
    // Field order is drop order: the context (tensor metadata) goes before the buffers.
    ctx: Context,
    index: HashMap<String, NonNull<sys::ggml_tensor>>,
    order: Vec<String>,
    /// Tensor address -> its position in `order`.
    by_ptr: HashMap<usize, usize>,
    /// One zero-copy buffer per distinct host region, keyed by (start address, length).
    host: Vec<((usize, usize), Buffer<'d>)>,
    owned: Vec<Buffer<'static>>,
    /// Deferred tensors: how to make their bytes.
    fills: HashMap<String, Fill<'d>>,
    bytes: u64,
}

impl<'d> TensorSet<'d> {
    /// Room for `max_tensors` tensors.
    pub fn new(max_tensors: usize) -> Result<TensorSet<'d>, GgmlError> {
        Ok(TensorSet {
            ctx: Context::new_meta(max_tensors.max(1), 1)?,
            index: HashMap::new(),
            order: Vec::new(),
            by_ptr: HashMap::new(),
            host: Vec::new(),
            owned: Vec::new(),
            fills: HashMap::new(),
            bytes: 0,
        })
    }

    fn declare(&mut self, name: &str, ty: GgmlType, ne: &[i64]) -> Result<Tensor<'_>, GgmlError> {
        if self.index.contains_key(name) {
            return Err(GgmlError::Backend(format!("tensor '{name}' added twice")));
        }
        if ne.is_empty() || ne.len() > 4 || ne.iter().any(|&n| n <= 0) {
            return Err(GgmlError::Backend(format!(
                "tensor '{name}': bad ggml shape {ne:?}"
            )));
        }
        if ne[0] % ty.block_size() as i64 != 0 {
            return Err(GgmlError::Backend(format!(
                "tensor '{name}': row of {} is not a multiple of the {ty} block size",
                ne[0]
            )));
        }
        Ok(self.ctx.new_tensor(ty, ne).set_name(name))
    }

    /// Adds `name` pointing at `bytes[..]` of `region` (no copy). `region` is the whole mapped
    /// file (its start must be 32-byte aligned, as page-aligned maps are); `offset` is where
    /// the tensor's data starts in it.
    pub fn add_mapped(
        &mut self,
        name: &str,
        ty: GgmlType,
        ne: &[i64],
        region: &'d [u8],
        offset: usize,
    ) -> Result<(), GgmlError> {
        let key = (region.as_ptr() as usize, region.len());
        if !self.host.iter().any(|(k, _)| *k == key) {
            self.host.push((key, Buffer::from_host_bytes(region)?));
        }
        let t = self.declare(name, ty, ne)?;
        let ptr =
            NonNull::new(t.as_ptr()).ok_or_else(|| GgmlError::Backend("null tensor".into()))?;
        let size = t.nbytes();
        let buf = &self.host.iter().find(|(k, _)| *k == key).map(|(_, b)| b);
        let buf = buf.ok_or_else(|| GgmlError::Backend("host buffer missing".into()))?;
        buf.place(Tensor::from_raw(ptr), offset)?;
        self.finish_add(name, ptr, size);
        Ok(())
    }

    /// Adds `name` with a copy of `data` in its own CPU buffer (for tensors that had to be
    /// converted, e.g. f8 to f16).
    pub fn add_owned(
        &mut self,
        name: &str,
        ty: GgmlType,
        ne: &[i64],
        data: &[u8],
    ) -> Result<(), GgmlError> {
        let t = self.declare(name, ty, ne)?;
        let ptr =
            NonNull::new(t.as_ptr()).ok_or_else(|| GgmlError::Backend("null tensor".into()))?;
        let size = t.nbytes();
        if data.len() != size {
            return Err(GgmlError::Backend(format!(
                "tensor '{name}': {} bytes of data for {size}",
                data.len()
            )));
        }
        // SAFETY: the CPU buffer type is a static singleton; alloc returns null on failure.
        let raw = unsafe {
            sys::ggml_backend_buft_alloc_buffer(sys::ggml_backend_cpu_buffer_type(), size)
        };
        let buf = Buffer::from_raw(raw).ok_or(GgmlError::OutOfMemory {
            what: "weight copy",
            bytes: size,
        })?;
        buf.place(Tensor::from_raw(ptr), 0)?;
        tensor_set(Tensor::from_raw(ptr), data)?;
        self.owned.push(buf);
        self.finish_add(name, ptr, size);
        Ok(())
    }

    /// Adds `name` without its data: `fill` makes its bytes when they are copied to a device
    /// ([`TensorSet::fill_of`]). The tensor points at the start of `placeholder` (read-only
    /// memory at least its size, which may be shared by every deferred tensor): never compute
    /// with it where it is.
    pub fn add_deferred(
        &mut self,
        name: &str,
        ty: GgmlType,
        ne: &[i64],
        placeholder: &'d [u8],
        fill: Fill<'d>,
    ) -> Result<(), GgmlError> {
        self.add_mapped(name, ty, ne, placeholder, 0)?;
        self.fills.insert(name.to_string(), fill);
        Ok(())
    }

    /// How to make the bytes of `name` if it is deferred ([`TensorSet::add_deferred`]).
    pub fn fill_of(&self, name: &str) -> Option<&MakeBytes<'d>> {
        self.fills.get(name).map(|f| {
            let f: &MakeBytes<'d> = f.as_ref();
            f
        })
    }

    /// Bytes of the deferred tensors (made only when copied to a device).
    pub fn deferred_bytes(&self) -> u64 {
        self.fills
            .keys()
            .filter_map(|n| self.get(n))
            .map(|t| t.nbytes() as u64)
            .sum()
    }

    /// Takes ownership of `buffer` (any backend's) so that tensors can be placed in it with
    /// [`TensorSet::add_in`]; returns its index.
    pub fn adopt(&mut self, buffer: Buffer<'static>) -> usize {
        self.owned.push(buffer);
        self.owned.len() - 1
    }

    /// Adds `name` at byte `offset` of the adopted buffer `buffer`, without data: the caller
    /// fills it (an upload). Several tensors may share bytes (two blocks in one streaming slot).
    pub fn add_in(
        &mut self,
        name: &str,
        ty: GgmlType,
        ne: &[i64],
        buffer: usize,
        offset: usize,
    ) -> Result<(), GgmlError> {
        if buffer >= self.owned.len() {
            return Err(GgmlError::Backend(format!(
                "tensor '{name}': no adopted buffer {buffer}"
            )));
        }
        let t = self.declare(name, ty, ne)?;
        let ptr =
            NonNull::new(t.as_ptr()).ok_or_else(|| GgmlError::Backend("null tensor".into()))?;
        let size = t.nbytes();
        self.owned[buffer].place(Tensor::from_raw(ptr), offset)?;
        self.finish_add(name, ptr, size);
        Ok(())
    }

    fn finish_add(&mut self, name: &str, ptr: NonNull<sys::ggml_tensor>, size: usize) {
        self.index.insert(name.to_string(), ptr);
        self.by_ptr.insert(ptr.as_ptr() as usize, self.order.len());
        self.order.push(name.to_string());
        self.bytes += size as u64;
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<Tensor<'_>> {
        self.index.get(name).map(|&p| Tensor::from_raw(p))
    }

    /// The name of `t` if it is one of this set's tensors.
    pub fn name_of(&self, t: Tensor<'_>) -> Option<&str> {
        self.by_ptr
            .get(&(t.as_ptr() as usize))
            .map(|&i| self.order[i].as_str())
    }

    /// Names in the order they were added.
    /// The first tensor `backend` cannot compute with where it lives (e.g. weights in mapped
    /// host memory for a CUDA backend), or `None` when it can use them all.
    pub fn unusable_by(&self, backend: &super::Backend) -> Option<&str> {
        self.order
            .iter()
            .find(|n| !backend.can_use(Tensor::from_raw(self.index[n.as_str()])))
            .map(String::as_str)
    }

    pub fn names(&self) -> &[String] {
        &self.order
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Bytes of tensor data in the set.
    pub fn data_bytes(&self) -> u64 {
        self.bytes
    }

    /// Bytes copied into owned buffers (the rest is used in place).
    pub fn copied_bytes(&self) -> u64 {
        self.owned.iter().map(|b| b.size() as u64).sum()
    }
}
