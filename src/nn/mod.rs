//! Small graph-building blocks shared by the models: a prefix-scoped view of a weight set
//! ([`Weights`]), linear layers, layer norm, activations and multi-head attention; and the
//! helpers more than one model uses (timestep embeddings, tiled decoding).
//!
//! Shapes are ggml `ne` (innermost first): activations are [C, T, N] (channels, tokens, batch).

mod attention;
mod tiles;

pub use attention::{causal_mask, flash_attention, multi_head_attention};
pub(crate) use tiles::{blend_tiles, tile_starts};

use crate::ggml::{Backend, Context, GgmlError, GgmlType, Tensor, TensorSet};
use crate::lora::Adapters;

/// Why a graph could not be built from a weight set.
#[derive(Debug, thiserror::Error)]
pub enum NnError {
    #[error("missing tensor '{0}'")]
    MissingTensor(String),
    #[error("tensor '{tensor}': expected ggml shape {expected}, found {found:?}")]
    Shape {
        tensor: String,
        expected: String,
        found: [i64; 4],
    },
    #[error("LoRA adapters for {0} were built from another weight set than this model's")]
    ForeignAdapters(&'static str),
}

/// A weight set seen under a name prefix, like candle's `VarBuilder::pp`: `w.pp("mlp").pp("fc1")`
/// names `…mlp.fc1.*`. Optionally with LoRA [`Adapters`], whose terms [`linear`],
/// [`linear_with`] and [`conv2d`] add to the layers they adapt.
#[derive(Clone)]
pub struct Weights<'a> {
    set: &'a TensorSet<'a>,
    prefix: String,
    adapters: Option<&'a Adapters>,
    /// Convolution kernels stored in other types (BF16) are cast to F16 rather than F32: on a
    /// GPU, ggml's F16 convolution runs on tensor cores and its F32 one is a plain loop.
    half_convs: bool,
}

impl<'a> Weights<'a> {
    /// The whole set under `prefix` ("" for none; a trailing '.' is added when missing).
    pub fn new(set: &'a TensorSet<'a>, prefix: &str) -> Weights<'a> {
        let mut prefix = prefix.to_string();
        if !prefix.is_empty() && !prefix.ends_with('.') {
            prefix.push('.');
        }
        Weights {
            set,
            prefix,
            adapters: None,
            half_convs: false,
        }
    }

    /// The same view with LoRA adapters (`None` removes them). They must have been built from
    /// this weight set ([`Adapters::fits`]).
    pub fn with_adapters(self, adapters: Option<&'a Adapters>) -> Result<Weights<'a>, NnError> {
        if let Some(a) = adapters {
            if !a.fits(self.set) {
                return Err(NnError::ForeignAdapters(a.target().name()));
            }
        }
        Ok(Weights { adapters, ..self })
    }

    /// Checks that `backend` can compute with every tensor of the set and of its adapters
    /// where they are stored (a GPU backend cannot read mapped host memory).
    pub fn check_backend(&self, backend: &Backend) -> Result<(), GgmlError> {
        let bad = self
            .set
            .unusable_by(backend)
            .or_else(|| self.adapters.and_then(|a| a.tensors().unusable_by(backend)));
        match bad {
            None => Ok(()),
            Some(n) => Err(GgmlError::Unsupported(format!(
                "the {} backend cannot compute with '{n}' where it is stored: the weights must \
                 be copied to its device first",
                backend.name()
            ))),
        }
    }

    /// The same view for `backend`: checked that it can use every tensor, and with convolution
    /// kernels cast to F16 instead of F32 on a GPU (see [`conv_kernel`]).
    pub fn for_backend(self, backend: &Backend) -> Result<Weights<'a>, GgmlError> {
        self.check_backend(backend)?;
        Ok(Weights {
            half_convs: !backend.is_cpu(),
            ..self
        })
    }

    /// The view with F16 convolution kernels whatever the backend (tests run the GPU's graph
    /// on the CPU).
    #[cfg(test)]
    pub(crate) fn with_half_convs(self) -> Weights<'a> {
        Weights {
            half_convs: true,
            ..self
        }
    }

    /// The adapters attached, if any.
    pub fn adapters(&self) -> Option<&'a Adapters> {
        self.adapters
    }

    /// The same set one level down.
    pub fn pp(&self, sub: impl std::fmt::Display) -> Weights<'a> {
        Weights {
            set: self.set,
            prefix: format!("{}{sub}.", self.prefix),
            adapters: self.adapters,
            half_convs: self.half_convs,
        }
    }

    /// Full name of `name` under this prefix.
    pub fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.set.get(&self.name(name)).is_some()
    }

    /// The tensor `name` under this prefix (a LoRA-merged copy for the few vectors that
    /// `diff`/`diff_b` adapters change).
    pub fn get(&self, name: &str) -> Result<Tensor<'a>, NnError> {
        let full = self.name(name);
        if let Some(t) = self.adapters.and_then(|a| a.replacement(&full)) {
            return Ok(t);
        }
        self.set.get(&full).ok_or(NnError::MissingTensor(full))
    }

    /// The tensor `name`, checked to have ggml shape `ne` (missing trailing dims are 1).
    pub fn get_shaped(&self, name: &str, ne: &[i64]) -> Result<Tensor<'a>, NnError> {
        let t = self.get(name)?;
        let mut want = [1i64; 4];
        want[..ne.len()].copy_from_slice(ne);
        if t.ne() != want {
            return Err(NnError::Shape {
                tensor: self.name(name),
                expected: format!("{ne:?}"),
                found: t.ne(),
            });
        }
        Ok(t)
    }
}

/// `t` as F32 (a cast node when it is stored otherwise), for elementwise ops with activations.
pub fn to_f32<'c>(ctx: &'c Context, t: Tensor<'c>) -> Tensor<'c> {
    if t.ty() == GgmlType::F32 {
        t
    } else {
        ctx.cast(t, GgmlType::F32)
    }
}

/// PyTorch `nn.Linear` stored as `{prefix}weight` [out, in] (ggml ne [in, out]) and an optional
/// `{prefix}bias` [out]: x [in, ...] -> [out, ...].
pub fn linear<'c>(ctx: &'c Context, w: &Weights<'c>, x: Tensor<'c>) -> Result<Tensor<'c>, NnError> {
    let weight = w.get("weight")?;
    linear_with(ctx, w, weight, "bias", x)
}

/// A linear layer with an explicit weight tensor and bias name (for layouts such as open_clip's
/// `in_proj_weight` / `in_proj_bias`). The bias is optional.
pub fn linear_with<'c>(
    ctx: &'c Context,
    w: &Weights<'c>,
    weight: Tensor<'c>,
    bias_name: &str,
    x: Tensor<'c>,
) -> Result<Tensor<'c>, NnError> {
    let (wn, xn) = (weight.ne(), x.ne());
    if wn[0] != xn[0] || wn[2] != 1 || wn[3] != 1 {
        return Err(NnError::Shape {
            tensor: w.name("weight"),
            expected: format!("[{}, out] for input {xn:?}", xn[0]),
            found: wn,
        });
    }
    let y = ctx.mul_mat(weight, x);
    let y = match w.adapters {
        Some(a) => match w.set.name_of(weight) {
            Some(name) => a.apply_linear(ctx, name, x, y),
            None => y,
        },
        None => y,
    };
    if !w.contains(bias_name) {
        return Ok(y);
    }
    let b = w.get_shaped(bias_name, &[wn[1]])?;
    Ok(ctx.add(y, to_f32(ctx, b)))
}

/// PyTorch `nn.LayerNorm` over dim 0 with `{prefix}weight` and `{prefix}bias`.
pub fn layer_norm<'c>(
    ctx: &'c Context,
    w: &Weights<'c>,
    x: Tensor<'c>,
    eps: f32,
) -> Result<Tensor<'c>, NnError> {
    let c = x.ne()[0];
    let g = w.get_shaped("weight", &[c])?;
    let b = w.get_shaped("bias", &[c])?;
    let y = ctx.norm(x, eps);
    Ok(ctx.add(ctx.mul(y, to_f32(ctx, g)), to_f32(ctx, b)))
}

/// Activation functions by the names configs use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// x * sigmoid(1.702 x) (OpenAI CLIP, CLIP-L).
    QuickGelu,
    /// Exact (erf) GELU, PyTorch's default (OpenCLIP bigG).
    Gelu,
    /// GELU with the tanh approximation.
    GeluTanh,
}

impl Activation {
    pub fn apply<'c>(self, ctx: &'c Context, x: Tensor<'c>) -> Tensor<'c> {
        match self {
            // Composed rather than ggml_gelu_quick, whose CPU kernel may use an f16 table.
            Activation::QuickGelu => ctx.mul(x, ctx.sigmoid(ctx.scale(x, 1.702))),
            Activation::Gelu => ctx.gelu_erf(x),
            Activation::GeluTanh => ctx.gelu(x),
        }
    }
}

#[cfg(test)]
mod tests;

/// transformers' `gelu_new`: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), composed in F32
/// (ggml's CPU `gelu` reads an f16 table, about 1e-3 off).
pub fn gelu_tanh<'c>(ctx: &'c Context, x: Tensor<'c>) -> Tensor<'c> {
    let c = (2.0f64 / std::f64::consts::PI).sqrt() as f32;
    let x3 = ctx.mul(x, ctx.sqr(x));
    let inner = ctx.scale(ctx.add(x, ctx.scale(x3, 0.044715)), c);
    let half = ctx.scale(x, 0.5);
    ctx.add(half, ctx.mul(half, ctx.tanh(inner)))
}

/// The sinusoidal embedding of `t` with `dim` values as ldm `timestep_embedding` and diffusers
/// `get_timestep_embedding(flip_sin_to_cos=True, downscale_freq_shift=0)`: [cos(t f_i) ..,
/// sin(t f_i) ..] with f_i = exp(-ln(10000) i / (dim/2)), in F32 as PyTorch computes it.
pub fn timestep_embedding(t: f32, dim: usize) -> Vec<f32> {
    let half = dim / 2;
    let mut out = vec![0f32; dim];
    let ln = -(10000f64.ln() as f32);
    for i in 0..half {
        let f = (ln * i as f32 / half as f32).exp();
        let a = t * f;
        out[i] = a.cos();
        out[half + i] = a.sin();
    }
    out
}

/// PyTorch `nn.Conv2d` stored as `{prefix}weight` [OC, IC, KH, KW] (ggml ne [KW, KH, IC, OC])
/// and an optional `{prefix}bias` [OC]: x [W, H, IC, N] -> [OW, OH, OC, N]. Symmetric `pad`.
/// Uses ggml's direct convolution (F32 throughout for F32 weights, no im2col tensor); other
/// weight types (BF16) are cast first ([`conv_kernel`]).
pub fn conv2d<'c>(
    ctx: &'c Context,
    w: &Weights<'c>,
    x: Tensor<'c>,
    stride: i32,
    pad: i32,
) -> Result<Tensor<'c>, NnError> {
    let weight = w.get("weight")?;
    let (wn, xn) = (weight.ne(), x.ne());
    if wn[2] != xn[2] {
        return Err(NnError::Shape {
            tensor: w.name("weight"),
            expected: format!("[KW, KH, {}, OC] for input {xn:?}", xn[2]),
            found: wn,
        });
    }
    let stored = weight;
    let weight = conv_kernel(ctx, w, weight);
    let y = ctx.conv_2d_direct(weight, x, (stride, stride), (pad, pad), (1, 1));
    let y = match w.adapters {
        Some(a) => match w.set.name_of(stored) {
            Some(name) => a.apply_conv(ctx, name, x, y, stride, pad),
            None => y,
        },
        None => y,
    };
    if !w.contains("bias") {
        return Ok(y);
    }
    let b = w.get_shaped("bias", &[wn[3]])?;
    let b = ctx.reshape(to_f32(ctx, b), &[1, 1, wn[3], 1]);
    Ok(ctx.add(y, b))
}

/// A convolution kernel as ggml's direct convolution takes it: F32 and F16 as stored, other
/// types (BF16) cast to F32 (exact, the CPU's choice) or, for a GPU view
/// ([`Weights::for_backend`]), to F16 (BF16 values fit F16 except below 6e-5 in magnitude).
pub fn conv_kernel<'c>(ctx: &'c Context, w: &Weights<'c>, weight: Tensor<'c>) -> Tensor<'c> {
    match weight.ty() {
        GgmlType::F32 | GgmlType::F16 => weight,
        _ if w.half_convs => ctx.cast(weight, GgmlType::F16),
        _ => ctx.cast(weight, GgmlType::F32),
    }
}

/// PyTorch `nn.GroupNorm` over a [W, H, C, N] tensor with `{prefix}weight` and `{prefix}bias`
/// [C].
pub fn group_norm<'c>(
    ctx: &'c Context,
    w: &Weights<'c>,
    x: Tensor<'c>,
    groups: usize,
    eps: f32,
) -> Result<Tensor<'c>, NnError> {
    let c = x.ne()[2];
    let g = w.get_shaped("weight", &[c])?;
    let b = w.get_shaped("bias", &[c])?;
    let y = ctx.group_norm(x, groups, eps);
    let g = ctx.reshape(to_f32(ctx, g), &[1, 1, c, 1]);
    let b = ctx.reshape(to_f32(ctx, b), &[1, 1, c, 1]);
    Ok(ctx.add(ctx.mul(y, g), b))
}
