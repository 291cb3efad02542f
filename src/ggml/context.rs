//! ggml contexts (tensor metadata arenas), tensor handles and the graph-building ops.

use std::ffi::CString;
use std::marker::PhantomData;
use std::ptr::NonNull;

use ggml_sys as sys;

use super::{GgmlError, GgmlType};

/// Most dims a ggml tensor has.
pub const MAX_DIMS: usize = 4;

/// A ggml context. With `no_alloc` it only holds tensor metadata (data lives in backend
/// buffers); otherwise tensors get host memory from the context's arena.
pub struct Context {
    ptr: NonNull<sys::ggml_context>,
}

impl Context {
    /// Metadata-only context for up to `max_tensors` tensors and one graph of `graph_size`
    /// nodes. Tensor data is placed later in backend buffers.
    pub fn new_meta(max_tensors: usize, graph_size: usize) -> Result<Context, GgmlError> {
        // SAFETY: pure size computations on ggml's side.
        let mem = unsafe {
            sys::ggml_tensor_overhead() * max_tensors
                + sys::ggml_graph_overhead_custom(graph_size, false)
                + 1024
        };
        Self::create(mem, true)
    }

    /// Context whose tensors get host memory from an arena of `data_bytes` (plus metadata).
    /// Used for small host-side work such as tests; models use backend buffers.
    pub fn new_host(data_bytes: usize, max_tensors: usize) -> Result<Context, GgmlError> {
        // SAFETY: pure size computation.
        let overhead = unsafe { sys::ggml_tensor_overhead() } * max_tensors;
        Self::create(data_bytes + overhead + 4096, false)
    }

    fn create(mem_size: usize, no_alloc: bool) -> Result<Context, GgmlError> {
        let params = sys::ggml_init_params {
            mem_size,
            mem_buffer: std::ptr::null_mut(),
            no_alloc,
        };
        // SAFETY: ggml_init allocates its own arena (mem_buffer null); returns null on failure.
        let ptr = unsafe { sys::ggml_init(params) };
        NonNull::new(ptr)
            .map(|ptr| Context { ptr })
            .ok_or(GgmlError::OutOfMemory {
                what: "ggml context",
                bytes: mem_size,
            })
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::ggml_context {
        self.ptr.as_ptr()
    }

    /// A new tensor with `ne` (innermost first, 1 to 4 dims).
    pub fn new_tensor(&self, ty: GgmlType, ne: &[i64]) -> Tensor<'_> {
        assert!(
            (1..=MAX_DIMS).contains(&ne.len()),
            "ggml tensors have 1 to 4 dims, got {ne:?}"
        );
        assert!(ne.iter().all(|&n| n > 0), "non-positive dim in {ne:?}");
        assert!(
            ne[0] % ty.block_size() as i64 == 0,
            "row of {} values is not a multiple of the {ty} block size",
            ne[0]
        );
        // SAFETY: ctx is live; ne has ne.len() valid entries; type id is valid. ggml aborts if
        // the arena is full, which new_meta/new_host size for the caller's declared count.
        let t = unsafe {
            sys::ggml_new_tensor(
                self.as_ptr(),
                ty as sys::ggml_type,
                ne.len() as i32,
                ne.as_ptr(),
            )
        };
        self.wrap(t)
    }

    pub fn new_f32(&self, ne: &[i64]) -> Tensor<'_> {
        self.new_tensor(GgmlType::F32, ne)
    }

    fn wrap(&self, t: *mut sys::ggml_tensor) -> Tensor<'_> {
        Tensor {
            ptr: NonNull::new(t).expect("ggml returned a null tensor"),
            _ctx: PhantomData,
        }
    }

    /// A graph with room for `size` nodes.
    pub fn new_graph(&self, size: usize) -> Graph<'_> {
        // SAFETY: ctx is live and was sized for a graph by new_meta (or has arena room).
        let g = unsafe { sys::ggml_new_graph_custom(self.as_ptr(), size, false) };
        Graph {
            ptr: NonNull::new(g).expect("ggml returned a null graph"),
            _ctx: PhantomData,
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: we own the context; tensors and graphs borrowing it are gone (lifetimes).
        unsafe { sys::ggml_free(self.ptr.as_ptr()) }
    }
}

/// A tensor in a [`Context`]. A cheap copyable handle; its lifetime is the context's borrow.
#[derive(Clone, Copy)]
pub struct Tensor<'c> {
    ptr: NonNull<sys::ggml_tensor>,
    _ctx: PhantomData<&'c Context>,
}

impl<'c> Tensor<'c> {
    /// Wraps a tensor pointer owned by a context that lives for `'c`.
    pub(crate) fn from_raw(ptr: NonNull<sys::ggml_tensor>) -> Tensor<'c> {
        Tensor {
            ptr,
            _ctx: PhantomData,
        }
    }

    pub(crate) fn as_ptr(&self) -> *mut sys::ggml_tensor {
        self.ptr.as_ptr()
    }

    fn raw(&self) -> &sys::ggml_tensor {
        // SAFETY: the tensor lives in the context arena for 'c; we only read plain fields.
        unsafe { self.ptr.as_ref() }
    }

    /// Elements per dim, innermost first.
    pub fn ne(&self) -> [i64; 4] {
        self.raw().ne
    }

    /// Byte strides per dim.
    pub fn nb(&self) -> [usize; 4] {
        self.raw().nb
    }

    pub fn ty(&self) -> GgmlType {
        GgmlType::from_id(self.raw().type_).expect("ggml tensor with a type unknown to nijigen")
    }

    pub fn n_elements(&self) -> i64 {
        self.ne().iter().product()
    }

    /// Bytes of the tensor data.
    pub fn nbytes(&self) -> usize {
        // SAFETY: read-only query on a live tensor.
        unsafe { sys::ggml_nbytes(self.as_ptr()) }
    }

    /// Whether the tensor has data (a buffer or host memory).
    pub fn has_data(&self) -> bool {
        !self.raw().data.is_null()
    }

    /// Names the tensor for debugging (ggml keeps at most 63 bytes; longer names are cut).
    pub fn set_name(self, name: &str) -> Self {
        let cut: String = name.chars().filter(|&c| c != '\0').take(63).collect();
        let c = CString::new(cut).unwrap_or_default();
        // SAFETY: ggml copies the string into the tensor's fixed name field (bounded).
        unsafe { sys::ggml_set_name(self.as_ptr(), c.as_ptr()) };
        self
    }

    /// The tensor's name as ggml keeps it (at most 63 bytes).
    pub fn name(&self) -> String {
        let raw = &self.raw().name;
        let bytes: Vec<u8> = raw
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Marks a graph input (the graph allocator gives it its own memory, never reused).
    pub fn set_input(self) -> Self {
        // SAFETY: flag update on a live tensor.
        unsafe { sys::ggml_set_input(self.as_ptr()) };
        self
    }

    /// Marks a graph output (its memory is not reused by later nodes).
    pub fn set_output(self) -> Self {
        // SAFETY: flag update on a live tensor.
        unsafe { sys::ggml_set_output(self.as_ptr()) };
        self
    }
}

/// A compute graph in a context.
pub struct Graph<'c> {
    ptr: NonNull<sys::ggml_cgraph>,
    _ctx: PhantomData<&'c Context>,
}

impl<'c> Graph<'c> {
    pub(crate) fn as_ptr(&self) -> *mut sys::ggml_cgraph {
        self.ptr.as_ptr()
    }

    /// Adds `t` and everything it depends on.
    pub fn expand(&mut self, t: Tensor<'c>) {
        // SAFETY: graph and tensor belong to the same live context.
        unsafe { sys::ggml_build_forward_expand(self.as_ptr(), t.as_ptr()) }
    }

    pub fn n_nodes(&self) -> usize {
        // SAFETY: read-only query.
        unsafe { sys::ggml_graph_n_nodes(self.as_ptr()) as usize }
    }
}

macro_rules! unary_ops {
    ($( $(#[$doc:meta])* $name:ident => $ffi:ident; )*) => {
        impl Context {
            $(
                $(#[$doc])*
                pub fn $name<'c>(&'c self, a: Tensor<'c>) -> Tensor<'c> {
                    // SAFETY: a belongs to this live context; the op only reads metadata.
                    self.wrap(unsafe { sys::$ffi(self.as_ptr(), a.as_ptr()) })
                }
            )*
        }
    };
}

unary_ops! {
    /// Makes a tensor contiguous (copies a permuted view).
    cont => ggml_cont;
    gelu => ggml_gelu;
    /// GELU with the erf formula.
    gelu_erf => ggml_gelu_erf;
    silu => ggml_silu;
    sigmoid => ggml_sigmoid;
    tanh => ggml_tanh;
    sqr => ggml_sqr;
    sqrt => ggml_sqrt;
    exp => ggml_exp;
    neg => ggml_neg;
    /// Transposes the first two dims (a view).
    transpose => ggml_transpose;
    /// Softmax over dim 0.
    soft_max => ggml_soft_max;
}

fn same_or_broadcast(a: &[i64; 4], b: &[i64; 4]) -> bool {
    (0..4).all(|i| b[i] > 0 && a[i] % b[i] == 0)
}

impl Context {
    /// `a @ b^T` in ggml terms: a [K, N, ...], b [K, M, ...] -> [N, M, ...] (f32).
    /// `a` is usually the weight; b broadcasts over a's outer dims.
    pub fn mul_mat<'c>(&'c self, a: Tensor<'c>, b: Tensor<'c>) -> Tensor<'c> {
        let (na, nb) = (a.ne(), b.ne());
        assert_eq!(na[0], nb[0], "mul_mat: inner dims differ: {na:?} x {nb:?}");
        assert!(
            nb[2] % na[2] == 0 && nb[3] % na[3] == 0,
            "mul_mat: cannot broadcast {na:?} over {nb:?}"
        );
        // SAFETY: both tensors belong to this context; shapes checked above.
        let y = unsafe { sys::ggml_mul_mat(self.as_ptr(), a.as_ptr(), b.as_ptr()) };
        if a.ty() == GgmlType::F16 {
            // F32 accumulation for F16 weights: CUDA's cuBLAS path otherwise sums in F16 (and
            // overflows past 65504); the CPU always accumulates in F32.
            // SAFETY: y is the live mul_mat node just made.
            unsafe { sys::ggml_mul_mat_set_prec(y, sys::GGML_PREC_F32) };
        }
        self.wrap(y)
    }

    /// a + b, b broadcast over a.
    pub fn add<'c>(&'c self, a: Tensor<'c>, b: Tensor<'c>) -> Tensor<'c> {
        assert!(
            same_or_broadcast(&a.ne(), &b.ne()),
            "add: {:?} + {:?}",
            a.ne(),
            b.ne()
        );
        // SAFETY: same context; broadcast checked.
        self.wrap(unsafe { sys::ggml_add(self.as_ptr(), a.as_ptr(), b.as_ptr()) })
    }

    /// a * b elementwise, b broadcast over a.
    pub fn mul<'c>(&'c self, a: Tensor<'c>, b: Tensor<'c>) -> Tensor<'c> {
        assert!(
            same_or_broadcast(&a.ne(), &b.ne()),
            "mul: {:?} * {:?}",
            a.ne(),
            b.ne()
        );
        // SAFETY: same context; broadcast checked.
        self.wrap(unsafe { sys::ggml_mul(self.as_ptr(), a.as_ptr(), b.as_ptr()) })
    }

    /// a * s.
    pub fn scale<'c>(&'c self, a: Tensor<'c>, s: f32) -> Tensor<'c> {
        // SAFETY: a belongs to this context.
        self.wrap(unsafe { sys::ggml_scale(self.as_ptr(), a.as_ptr(), s) })
    }

    /// Layer norm over dim 0 without affine parameters.
    pub fn norm<'c>(&'c self, a: Tensor<'c>, eps: f32) -> Tensor<'c> {
        // SAFETY: a belongs to this context.
        self.wrap(unsafe { sys::ggml_norm(self.as_ptr(), a.as_ptr(), eps) })
    }

    /// RMS norm over dim 0 without a weight.
    pub fn rms_norm<'c>(&'c self, a: Tensor<'c>, eps: f32) -> Tensor<'c> {
        // SAFETY: a belongs to this context.
        self.wrap(unsafe { sys::ggml_rms_norm(self.as_ptr(), a.as_ptr(), eps) })
    }

    /// Group norm of a [W, H, C, N] tensor: `groups` groups of C/groups channels.
    pub fn group_norm<'c>(&'c self, a: Tensor<'c>, groups: usize, eps: f32) -> Tensor<'c> {
        assert!(
            groups > 0 && a.ne()[2] % groups as i64 == 0,
            "group_norm: bad groups"
        );
        // SAFETY: a belongs to this context; groups divides the channels.
        self.wrap(unsafe { sys::ggml_group_norm(self.as_ptr(), a.as_ptr(), groups as i32, eps) })
    }

    /// softmax(a * scale + mask) over dim 0. Mask (F16 or F32) broadcasts over rows.
    pub fn soft_max_ext<'c>(
        &'c self,
        a: Tensor<'c>,
        mask: Option<Tensor<'c>>,
        scale: f32,
    ) -> Tensor<'c> {
        let m = mask.map_or(std::ptr::null_mut(), |m| m.as_ptr());
        // SAFETY: tensors belong to this context; a null mask means none.
        self.wrap(unsafe { sys::ggml_soft_max_ext(self.as_ptr(), a.as_ptr(), m, scale, 0.0) })
    }

    /// 2-D convolution. kernel [KW, KH, IC, OC], input [W, H, IC, N] -> [OW, OH, OC, N].
    #[allow(clippy::too_many_arguments)]
    pub fn conv_2d<'c>(
        &'c self,
        kernel: Tensor<'c>,
        input: Tensor<'c>,
        stride: (i32, i32),
        pad: (i32, i32),
        dilation: (i32, i32),
    ) -> Tensor<'c> {
        assert_eq!(kernel.ne()[2], input.ne()[2], "conv_2d: channel mismatch");
        // SAFETY: same context; channels checked.
        self.wrap(unsafe {
            sys::ggml_conv_2d(
                self.as_ptr(),
                kernel.as_ptr(),
                input.as_ptr(),
                stride.0,
                stride.1,
                pad.0,
                pad.1,
                dilation.0,
                dilation.1,
            )
        })
    }

    /// 3-D convolution. kernel [KW, KH, KD, IC*OC], input [W, H, D, IC*N] -> [OW, OH, OD, OC*N].
    /// Strides, padding and dilation are (w, h, d).
    pub fn conv_3d<'c>(
        &'c self,
        kernel: Tensor<'c>,
        input: Tensor<'c>,
        in_channels: i64,
        stride: [i32; 3],
        pad: [i32; 3],
        dilation: [i32; 3],
    ) -> Tensor<'c> {
        assert!(
            kernel.ne()[3] % in_channels == 0 && input.ne()[3] % in_channels == 0,
            "conv_3d: channel mismatch"
        );
        // SAFETY: same context; channel counts divide.
        self.wrap(unsafe {
            sys::ggml_conv_3d(
                self.as_ptr(),
                kernel.as_ptr(),
                input.as_ptr(),
                in_channels,
                stride[0],
                stride[1],
                stride[2],
                pad[0],
                pad[1],
                pad[2],
                dilation[0],
                dilation[1],
                dilation[2],
            )
        })
    }

    /// Fused attention. q [D, Nq, H, B], k [D, Nkv, H, B], v [D, Nkv, H, B] (K/V usually F16)
    /// -> [D, H, Nq, B] (note the permuted result). Accumulates in F32.
    pub fn flash_attn_ext<'c>(
        &'c self,
        q: Tensor<'c>,
        k: Tensor<'c>,
        v: Tensor<'c>,
        mask: Option<Tensor<'c>>,
        scale: f32,
    ) -> Tensor<'c> {
        let (nq, nk, nv) = (q.ne(), k.ne(), v.ne());
        assert!(
            nq[0] == nk[0] && nk[1] == nv[1],
            "flash_attn_ext: {nq:?} {nk:?} {nv:?}"
        );
        assert!(nq[2] % nk[2] == 0, "flash_attn_ext: heads do not broadcast");
        let m = mask.map_or(std::ptr::null_mut(), |m| m.as_ptr());
        // SAFETY: same context; shapes checked; a null mask means none.
        let r = unsafe {
            sys::ggml_flash_attn_ext(
                self.as_ptr(),
                q.as_ptr(),
                k.as_ptr(),
                v.as_ptr(),
                m,
                scale,
                0.0,
                0.0,
            )
        };
        // SAFETY: r is a fresh op node; request F32 accumulation.
        unsafe { sys::ggml_prec_set_acc(r, sys::GGML_PREC_F32) };
        self.wrap(r)
    }

    /// Reshape (contiguous tensors only) to `ne` with the same element count.
    pub fn reshape<'c>(&'c self, a: Tensor<'c>, ne: &[i64]) -> Tensor<'c> {
        assert_eq!(
            ne.iter().product::<i64>(),
            a.n_elements(),
            "reshape: {:?} -> {ne:?}",
            a.ne()
        );
        // SAFETY: a belongs to this context; element count checked; ggml asserts contiguity.
        let t = unsafe {
            match ne.len() {
                1 => sys::ggml_reshape_1d(self.as_ptr(), a.as_ptr(), ne[0]),
                2 => sys::ggml_reshape_2d(self.as_ptr(), a.as_ptr(), ne[0], ne[1]),
                3 => sys::ggml_reshape_3d(self.as_ptr(), a.as_ptr(), ne[0], ne[1], ne[2]),
                4 => sys::ggml_reshape_4d(self.as_ptr(), a.as_ptr(), ne[0], ne[1], ne[2], ne[3]),
                n => panic!("reshape to {n} dims"),
            }
        };
        self.wrap(t)
    }

    /// Permute: dim i of `a` goes to position `axes[i]` (ggml semantics).
    pub fn permute<'c>(&'c self, a: Tensor<'c>, axes: [i32; 4]) -> Tensor<'c> {
        // SAFETY: a belongs to this context; ggml asserts axes form a permutation.
        self.wrap(unsafe {
            sys::ggml_permute(
                self.as_ptr(),
                a.as_ptr(),
                axes[0],
                axes[1],
                axes[2],
                axes[3],
            )
        })
    }

    /// Rows of a 2-D `a` picked by `ids`: a [K, R], ids I32 [N] -> [K, N] (F32 for float `a`).
    pub fn get_rows<'c>(&'c self, a: Tensor<'c>, ids: Tensor<'c>) -> Tensor<'c> {
        let (na, ni) = (a.ne(), ids.ne());
        assert!(
            na[2] == 1 && na[3] == 1,
            "get_rows: table must be 2-D, got {na:?}"
        );
        assert!(
            ids.ty() == GgmlType::I32 && ni[1] == 1 && ni[2] == 1 && ni[3] == 1,
            "get_rows: ids must be a 1-D I32 tensor, got {} {ni:?}",
            ids.ty()
        );
        // SAFETY: both tensors belong to this context (or a live weight context); shapes and
        // the index type checked above. ggml checks the index values at compute time.
        self.wrap(unsafe { sys::ggml_get_rows(self.as_ptr(), a.as_ptr(), ids.as_ptr()) })
    }

    /// A view of `a`: `ne` (1 to 4 dims), byte strides `nb` of dims 1.. (`ne.len() - 1` of
    /// them), starting `offset` bytes into `a`'s data. Panics if the view reaches past `a`.
    pub fn view<'c>(
        &'c self,
        a: Tensor<'c>,
        ne: &[i64],
        nb: &[usize],
        offset: usize,
    ) -> Tensor<'c> {
        assert!(
            (1..=MAX_DIMS).contains(&ne.len()) && nb.len() + 1 == ne.len(),
            "view: {} dims need {} strides, got {ne:?} {nb:?}",
            ne.len(),
            ne.len().saturating_sub(1)
        );
        assert!(
            ne.iter().all(|&n| n > 0),
            "view: non-positive dim in {ne:?}"
        );
        let ty = a.ty();
        assert!(
            ne[0] % ty.block_size() as i64 == 0,
            "view: row of {} is not a multiple of the {ty} block size",
            ne[0]
        );
        let row = (ne[0] as usize / ty.block_size() as usize) * ty.type_size() as usize;
        let end = offset
            + row
            + ne[1..]
                .iter()
                .zip(nb)
                .map(|(&n, &s)| (n as usize - 1) * s)
                .sum::<usize>();
        assert!(
            end <= a.nbytes(),
            "view: {ne:?} with strides {nb:?} at offset {offset} reaches byte {end} of a {}-byte tensor {:?}",
            a.nbytes(),
            a.ne()
        );
        // SAFETY: a belongs to a live context; the view stays inside a's data (checked above).
        let t = unsafe {
            let (c, p) = (self.as_ptr(), a.as_ptr());
            match ne.len() {
                1 => sys::ggml_view_1d(c, p, ne[0], offset),
                2 => sys::ggml_view_2d(c, p, ne[0], ne[1], nb[0], offset),
                3 => sys::ggml_view_3d(c, p, ne[0], ne[1], ne[2], nb[0], nb[1], offset),
                _ => sys::ggml_view_4d(
                    c, p, ne[0], ne[1], ne[2], ne[3], nb[0], nb[1], nb[2], offset,
                ),
            }
        };
        self.wrap(t)
    }

    /// Converts to `ty` (a copy).
    pub fn cast<'c>(&'c self, a: Tensor<'c>, ty: GgmlType) -> Tensor<'c> {
        // SAFETY: a belongs to this context.
        self.wrap(unsafe { sys::ggml_cast(self.as_ptr(), a.as_ptr(), ty as sys::ggml_type) })
    }
}

impl Context {
    /// Copies `a` into `b` (same number of elements; converts the type) and returns `b`'s
    /// node: a graph that ends in this writes its result into `b`'s memory, which may belong to
    /// a buffer that outlives the graph (activations carried from one graph to the next).
    pub fn cpy<'c>(&'c self, a: Tensor<'c>, b: Tensor<'c>) -> Tensor<'c> {
        assert_eq!(a.n_elements(), b.n_elements(), "cpy: element counts differ");
        // SAFETY: both tensors are live (the lifetimes tie them to this context's borrow).
        self.wrap(unsafe { sys::ggml_cpy(self.as_ptr(), a.as_ptr(), b.as_ptr()) })
    }
}

impl Context {
    /// `a` and `b` joined along `dim` (0..4); all other dims must match, and so must the types.
    pub fn concat<'c>(&'c self, a: Tensor<'c>, b: Tensor<'c>, dim: usize) -> Tensor<'c> {
        let (na, nb) = (a.ne(), b.ne());
        assert!(dim < MAX_DIMS, "concat: dim {dim} out of range");
        assert!(
            (0..MAX_DIMS).all(|i| i == dim || na[i] == nb[i]),
            "concat: {na:?} and {nb:?} differ outside dim {dim}"
        );
        assert_eq!(a.ty(), b.ty(), "concat: types differ");
        // SAFETY: same context; shapes and types checked above.
        self.wrap(unsafe { sys::ggml_concat(self.as_ptr(), a.as_ptr(), b.as_ptr(), dim as i32) })
    }
}

// Ops for convolutional decoders (SDXL VAE): padding, nearest upsampling, clamping.
impl Context {
    /// Zero padding appended at the end of each dim: `pad[i]` elements after dim i
    /// (e.g. `[1, 1, 0, 0]` pads the right column and the bottom row of a [W, H, C, N] image).
    pub fn pad<'c>(&'c self, a: Tensor<'c>, pad: [i32; 4]) -> Tensor<'c> {
        assert!(pad.iter().all(|&p| p >= 0), "pad: negative padding {pad:?}");
        // SAFETY: a belongs to this context; paddings are non-negative.
        self.wrap(unsafe {
            sys::ggml_pad(self.as_ptr(), a.as_ptr(), pad[0], pad[1], pad[2], pad[3])
        })
    }

    /// Nearest-neighbour upsampling of dims 0 and 1 by an integer `factor`
    /// ([W, H, C, N] -> [W*f, H*f, C, N]), as PyTorch's `interpolate(mode="nearest")`.
    pub fn upscale_nearest<'c>(&'c self, a: Tensor<'c>, factor: i64) -> Tensor<'c> {
        assert!(factor >= 1, "upscale_nearest: factor {factor}");
        let ne = a.ne();
        // The C enum's Rust type differs by platform (u32 on Linux, i32 on MSVC).
        #[allow(clippy::unnecessary_cast)]
        let mode = sys::GGML_SCALE_MODE_NEAREST as u32;
        // SAFETY: a belongs to this context; the target dims are positive multiples of a's.
        self.wrap(unsafe {
            sys::ggml_interpolate(
                self.as_ptr(),
                a.as_ptr(),
                ne[0] * factor,
                ne[1] * factor,
                ne[2],
                ne[3],
                mode,
            )
        })
    }

    /// 2-D convolution without an im2col tensor (ggml's direct kernel: patches are gathered
    /// in small batches in the work buffer, in the kernel's type). kernel [KW, KH, IC, OC]
    /// (F32 or F16), input [W, H, IC, N] F32 -> [OW, OH, OC, N]. With an F32 kernel the whole
    /// computation is F32, unlike [`Context::conv_2d`], whose im2col is F16.
    pub fn conv_2d_direct<'c>(
        &'c self,
        kernel: Tensor<'c>,
        input: Tensor<'c>,
        stride: (i32, i32),
        pad: (i32, i32),
        dilation: (i32, i32),
    ) -> Tensor<'c> {
        assert_eq!(
            kernel.ne()[2],
            input.ne()[2],
            "conv_2d_direct: channel mismatch: kernel {:?}, input {:?}",
            kernel.ne(),
            input.ne()
        );
        assert!(
            matches!(kernel.ty(), GgmlType::F32 | GgmlType::F16) && input.ty() == GgmlType::F32,
            "conv_2d_direct: kernel {} / input {}: needs an F32 or F16 kernel and F32 input",
            kernel.ty(),
            input.ty()
        );
        // SAFETY: same context; channels and types checked (ggml asserts the kernel is
        // contiguous at compute time).
        self.wrap(unsafe {
            sys::ggml_conv_2d_direct(
                self.as_ptr(),
                kernel.as_ptr(),
                input.as_ptr(),
                stride.0,
                stride.1,
                pad.0,
                pad.1,
                dilation.0,
                dilation.1,
            )
        })
    }

    /// Elementwise clamp to [min, max].
    pub fn clamp<'c>(&'c self, a: Tensor<'c>, min: f32, max: f32) -> Tensor<'c> {
        assert!(min <= max, "clamp: min {min} > max {max}");
        // SAFETY: a belongs to this context.
        self.wrap(unsafe { sys::ggml_clamp(self.as_ptr(), a.as_ptr(), min, max) })
    }
}

/// A metadata context and one graph built in it, kept together so that the graph can be
/// allocated once and computed many times (e.g. one UNet graph per latent size, reused for
/// every sampling step). The graph's nodes may point at tensors of other contexts (weights)
/// that live for `'w`: [`OwnedGraph::build`] only lets the builder use tensors that outlive
/// `'w`, as `std::thread::scope` does for borrowed data.
pub struct OwnedGraph<'w> {
    graph: NonNull<sys::ggml_cgraph>,
    /// The tensors the builder returned (inputs, outputs), in its order.
    tensors: Vec<NonNull<sys::ggml_tensor>>,
    ctx: Context,
    _weights: PhantomData<&'w ()>,
}

impl<'w> OwnedGraph<'w> {
    /// Builds a graph of up to `graph_size` nodes in a fresh metadata context for
    /// `max_tensors` tensors: `f` creates the nodes and returns the tensors the caller needs
    /// later; the graph is the expansion of `outputs`.
    pub fn build<E>(
        max_tensors: usize,
        graph_size: usize,
        f: impl for<'c> FnOnce(
            &'c Context,
            PhantomData<&'c &'w ()>,
        ) -> Result<(Vec<Tensor<'c>>, Vec<Tensor<'c>>), E>,
    ) -> Result<OwnedGraph<'w>, E>
    where
        E: From<GgmlError>,
    {
        let ctx = Context::new_meta(max_tensors, graph_size)?;
        let (graph, tensors) = {
            let (keep, outputs) = f(&ctx, PhantomData)?;
            let mut graph = ctx.new_graph(graph_size);
            for &o in &outputs {
                graph.expand(o);
            }
            (graph.ptr, keep.iter().map(|t| t.ptr).collect())
        };
        Ok(OwnedGraph {
            graph,
            tensors,
            ctx,
            _weights: PhantomData,
        })
    }

    /// The graph, borrowed from this owner.
    pub fn graph(&self) -> Graph<'_> {
        Graph {
            ptr: self.graph,
            _ctx: PhantomData,
        }
    }

    /// The `i`-th tensor the builder returned, or `None` past the end.
    pub fn tensor(&self, i: usize) -> Option<Tensor<'_>> {
        self.tensors.get(i).map(|&ptr| Tensor {
            ptr,
            _ctx: PhantomData,
        })
    }

    /// The context the graph lives in.
    pub fn context(&self) -> &Context {
        &self.ctx
    }
}

/// What a [`GraphSet`] builder returns: the tensors the caller needs later, the outputs of
/// each graph (one graph per entry, in order), and the state tensors, which get memory in the
/// set's own state buffer (activations carried from one graph to the next).
pub struct GraphSetParts<'c> {
    pub keep: Vec<Tensor<'c>>,
    pub graphs: Vec<Vec<Tensor<'c>>>,
    pub state: Vec<Tensor<'c>>,
}

/// Several graphs built in one metadata context, with the state tensors they share placed in
/// one buffer: a model run as a sequence of stages (embeddings, blocks, head), each stage a
/// graph, built once per input shape and computed many times. Like [`OwnedGraph`], nodes may
/// point at tensors of other contexts that live for `'w` (weights).
pub struct GraphSet<'w> {
    graphs: Vec<NonNull<sys::ggml_cgraph>>,
    tensors: Vec<NonNull<sys::ggml_tensor>>,
    state_bytes: usize,
    // Drop order: graphs and tensors live in the context, placed in the state buffer.
    ctx: Context,
    state: Option<super::Buffer<'static>>,
    _weights: PhantomData<&'w ()>,
}

impl<'w> GraphSet<'w> {
    /// Builds up to `max_graphs` graphs of at most `graph_size` nodes each in a context for
    /// `max_tensors` tensors. `state_buffer(bytes)` supplies the memory for the state tensors
    /// (called once, with their total size at `align`; not called when there are none).
    pub fn build<E>(
        max_tensors: usize,
        graph_size: usize,
        max_graphs: usize,
        align: usize,
        state_buffer: impl FnOnce(usize) -> Result<super::Buffer<'static>, E>,
        f: impl for<'c> FnOnce(&'c Context, PhantomData<&'c &'w ()>) -> Result<GraphSetParts<'c>, E>,
    ) -> Result<GraphSet<'w>, E>
    where
        E: From<GgmlError>,
    {
        let ctx = Self::new_context(max_tensors, graph_size, max_graphs)?;
        let (graphs, tensors, state, state_bytes) = {
            let parts = f(&ctx, PhantomData)?;
            let align = align.max(1);
            let mut offsets = Vec::with_capacity(parts.state.len());
            let mut end = 0usize;
            for t in &parts.state {
                offsets.push(end);
                end += t.nbytes().div_ceil(align) * align;
            }
            let state = if end > 0 {
                let buf = state_buffer(end)?;
                for (t, &off) in parts.state.iter().zip(&offsets) {
                    buf.place(*t, off)?;
                }
                Some(buf)
            } else {
                None
            };
            let (graphs, tensors) = Self::expand(&ctx, graph_size, max_graphs, &parts)?;
            (graphs, tensors, state, end)
        };
        Ok(GraphSet {
            graphs,
            tensors,
            state_bytes,
            ctx,
            state,
            _weights: PhantomData,
        })
    }

    /// As [`GraphSet::build`] over a state buffer given up front, in which the builder places
    /// the tensors that carry state itself, at offsets it chooses (several tensors may share
    /// memory: one graph reads a cache that another writes). `parts.state` must be empty.
    pub fn build_over<E>(
        max_tensors: usize,
        graph_size: usize,
        max_graphs: usize,
        state: super::Buffer<'static>,
        f: impl for<'c> FnOnce(
            &'c Context,
            &'c super::Buffer<'c>,
            PhantomData<&'c &'w ()>,
        ) -> Result<GraphSetParts<'c>, E>,
    ) -> Result<GraphSet<'w>, E>
    where
        E: From<GgmlError>,
    {
        let ctx = Self::new_context(max_tensors, graph_size, max_graphs)?;
        let (graphs, tensors) = {
            let parts = f(&ctx, &state, PhantomData)?;
            if !parts.state.is_empty() {
                return Err(GgmlError::Backend(
                    "a graph set over a given state buffer places its state itself".into(),
                )
                .into());
            }
            Self::expand(&ctx, graph_size, max_graphs, &parts)?
        };
        Ok(GraphSet {
            graphs,
            tensors,
            state_bytes: state.size(),
            ctx,
            state: Some(state),
            _weights: PhantomData,
        })
    }

    /// A metadata context with room for `max_graphs` graphs of `graph_size` nodes.
    fn new_context(
        max_tensors: usize,
        graph_size: usize,
        max_graphs: usize,
    ) -> Result<Context, GgmlError> {
        // SAFETY: pure size computations on ggml's side.
        let mem = unsafe {
            sys::ggml_tensor_overhead() * max_tensors
                + sys::ggml_graph_overhead_custom(graph_size, false) * max_graphs.max(1)
                + 1024
        };
        Context::create(mem, true)
    }

    /// The graphs of `parts` (each the expansion of its outputs, in order) and the kept
    /// tensors.
    #[allow(clippy::type_complexity)]
    fn expand<'c>(
        ctx: &'c Context,
        graph_size: usize,
        max_graphs: usize,
        parts: &GraphSetParts<'c>,
    ) -> Result<
        (
            Vec<NonNull<sys::ggml_cgraph>>,
            Vec<NonNull<sys::ggml_tensor>>,
        ),
        GgmlError,
    > {
        if parts.graphs.len() > max_graphs {
            return Err(GgmlError::Backend(format!(
                "{} graphs built for room of {max_graphs}",
                parts.graphs.len()
            )));
        }
        let graphs = parts
            .graphs
            .iter()
            .map(|outs| {
                let mut g = ctx.new_graph(graph_size);
                for &o in outs {
                    g.expand(o);
                }
                g.ptr
            })
            .collect();
        Ok((graphs, parts.keep.iter().map(|t| t.ptr).collect()))
    }

    /// The state buffer (from [`GraphSet::build`]'s `state_buffer` or given to
    /// [`GraphSet::build_over`]), if there is one.
    pub fn state_buffer(&self) -> Option<&super::Buffer<'static>> {
        self.state.as_ref()
    }

    pub fn len(&self) -> usize {
        self.graphs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.graphs.is_empty()
    }

    /// Graph `i`, borrowed from this owner.
    pub fn graph(&self, i: usize) -> Graph<'_> {
        Graph {
            ptr: self.graphs[i],
            _ctx: PhantomData,
        }
    }

    /// The `i`-th kept tensor, or `None` past the end.
    pub fn tensor(&self, i: usize) -> Option<Tensor<'_>> {
        self.tensors.get(i).map(|&ptr| Tensor {
            ptr,
            _ctx: PhantomData,
        })
    }

    /// Bytes of the state buffer.
    pub fn state_bytes(&self) -> usize {
        self.state_bytes
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }
}

#[cfg(test)]
mod owned_graph_tests {
    use super::*;
    use crate::ggml::{tensor_get_f32, tensor_set_f32, Backend};

    #[test]
    fn an_owned_graph_is_allocated_once_and_computed_many_times() {
        // A weight from another context that outlives the graph.
        let mut set = crate::ggml::TensorSet::new(1).unwrap();
        let vals = [1f32, 2.0, 3.0, 4.0];
        set.add_owned("w", GgmlType::F32, &[4], bytemuck::cast_slice(&vals))
            .unwrap();
        let w = set.get("w").unwrap();
        let owned = OwnedGraph::build(16, 16, |ctx, _| {
            let x = ctx.new_f32(&[4]).set_input();
            let y = ctx.add(ctx.scale(x, 2.0), w).set_output();
            Ok::<_, GgmlError>((vec![x, y], vec![y]))
        })
        .unwrap();
        let mut backend = Backend::cpu(1).unwrap();
        let mut alloc = backend.graph_allocator().unwrap();
        alloc.alloc_graph(&owned.graph()).unwrap();
        let (x, y) = (owned.tensor(0).unwrap(), owned.tensor(1).unwrap());
        assert!(owned.tensor(2).is_none());
        for k in 0..3 {
            let v = k as f32;
            tensor_set_f32(x, &[v; 4]).unwrap();
            backend.compute(&owned.graph()).unwrap();
            let got = tensor_get_f32(y).unwrap();
            assert_eq!(
                got,
                vec![2.0 * v + 1.0, 2.0 * v + 2.0, 2.0 * v + 3.0, 2.0 * v + 4.0]
            );
        }
        assert_eq!(owned.graph().n_nodes(), 2);
    }

    /// A graph allocated again after a larger graph made the shared allocator's buffer grow
    /// (and free the old one) gets fresh memory: its inputs are written into the new buffer,
    /// not the freed one (64 MiB buffers are unmapped when freed: a stale pointer faults).
    #[test]
    fn graphs_sharing_an_allocator_survive_its_buffer_growing() {
        let small = 1 << 16;
        let large = 16 << 20;
        let set = GraphSet::build(
            16,
            8,
            2,
            32,
            |_| Err(GgmlError::Backend("no state".into())),
            |ctx, _| {
                let x = ctx.new_f32(&[small]).set_input();
                let y = ctx.scale(x, 2.0).set_output();
                let z = ctx.new_f32(&[large]).set_input();
                let w = ctx.scale(z, 3.0).set_output();
                Ok::<_, GgmlError>(GraphSetParts {
                    keep: vec![x, y, z, w],
                    graphs: vec![vec![y], vec![w]],
                    state: vec![],
                })
            },
        )
        .unwrap();
        let mut backend = Backend::cpu(1).unwrap();
        let mut alloc = backend.graph_allocator().unwrap();
        let t = |i| set.tensor(i).unwrap();
        for round in 0..3 {
            let v = round as f32 + 1.0;
            alloc.alloc_graph(&set.graph(0)).unwrap();
            tensor_set_f32(t(0), &vec![v; small as usize]).unwrap();
            backend.compute(&set.graph(0)).unwrap();
            assert!(tensor_get_f32(t(1)).unwrap().iter().all(|&y| y == 2.0 * v));
            alloc.alloc_graph(&set.graph(1)).unwrap();
            tensor_set_f32(t(2), &vec![v; large as usize]).unwrap();
            backend.compute(&set.graph(1)).unwrap();
            assert!(tensor_get_f32(t(3)).unwrap().iter().all(|&w| w == 3.0 * v));
        }
    }

    #[test]
    fn a_graph_set_carries_state_from_one_graph_to_the_next() {
        let backend = Backend::cpu(1).unwrap();
        let set = GraphSet::build(
            32,
            16,
            3,
            32,
            |n| backend.alloc_buffer(n),
            |ctx, _| {
                let x = ctx.new_f32(&[4]).set_input();
                let s = ctx.new_f32(&[4]);
                // graph 0: s = x + 1; graph 1: s = 2 s; graph 2: y = s + x
                let g0 = ctx.cpy(ctx.add(x, ctx.scale(ctx.exp(ctx.scale(x, 0.0)), 1.0)), s);
                let g1 = ctx.cpy(ctx.scale(s, 2.0), s);
                let y = ctx.add(s, x).set_output();
                Ok::<_, GgmlError>(GraphSetParts {
                    keep: vec![x, y],
                    graphs: vec![vec![g0], vec![g1], vec![y]],
                    state: vec![s],
                })
            },
        )
        .unwrap();
        assert_eq!((set.len(), set.state_bytes()), (3, 32));
        let mut backend = backend;
        let mut alloc = backend.graph_allocator().unwrap();
        let (x, y) = (set.tensor(0).unwrap(), set.tensor(1).unwrap());
        for round in 0..2 {
            let v = round as f32;
            for i in 0..3 {
                alloc.alloc_graph(&set.graph(i)).unwrap();
                if i == 0 || i == 2 {
                    tensor_set_f32(x, &[v, v + 1.0, v + 2.0, v + 3.0]).unwrap();
                }
                backend.compute(&set.graph(i)).unwrap();
            }
            let got = tensor_get_f32(y).unwrap();
            let want: Vec<f32> = (0..4)
                .map(|k| 2.0 * (v + k as f32 + 1.0) + v + k as f32)
                .collect();
            assert_eq!(got, want);
        }
    }
}
