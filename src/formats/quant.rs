//! ComfyUI's scaled fp8 files: which stored weights carry a scale, and the scale tensors and
//! markers that are not weights themselves.
//!
//! Two layouts exist (ComfyUI `comfy/utils.py` `convert_old_quants`, `comfy/ops.py`
//! `mixed_precision_ops`, `comfy/quant_ops.py`):
//! - **`scaled_fp8`** (Comfy-Org's `*_fp8_scaled.safetensors`, the umT5 `fp8_e4m3fn_scaled`):
//!   a marker tensor `<prefix>scaled_fp8` (shape [0], or 2 elements for "full precision matrix
//!   multiply"), and for every Linear `<layer>.weight` in F8_E4M3 with an F32 scalar
//!   `<layer>.scale_weight`. `<layer>.scale_input` is the activation scale of fp8 matmuls and
//!   never multiplies the weight.
//! - **per-layer** (newer files): `<layer>.comfy_quant`, a U8 tensor holding JSON such as
//!   `{"format": "float8_e4m3fn"}` (optionally `"full_precision_matrix_mult": true`), with
//!   `<layer>.weight_scale` (weight = q x weight_scale) and an optional `<layer>.input_scale`;
//!   or the same table in the header, `__metadata__["_quantization_metadata"]` =
//!   `{"layers": {"<layer>": {"format": ...}}}`.
//!
//! In both the true weight is `float(q) * scale`. A scale is one value (per tensor), one per
//! output row (`[out]` or `[out, 1]`: per channel), or a 2-D grid `[a, b]` over a `[out, in]`
//! weight that divides it into equal blocks. [`apply_scale`] multiplies; [`Fp8Scaled::read`]
//! finds the tables. Nothing here reads weight data except the scales and the small JSON
//! tensors.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::weights::WeightFile;
use super::{DType, FormatError, MetaValue, TensorInfo};

/// Which of the two layouts a file uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fp8Layout {
    /// The `scaled_fp8` marker with `<layer>.scale_weight` scales.
    ScaledFp8,
    /// Per-layer `<layer>.comfy_quant` JSON (or `_quantization_metadata`) with
    /// `<layer>.weight_scale` scales.
    ComfyQuant,
}

impl Fp8Layout {
    /// How `nijigen info` names it.
    pub fn describe(self) -> &'static str {
        match self {
            Fp8Layout::ScaledFp8 => "scaled_fp8 marker, <layer>.scale_weight",
            Fp8Layout::ComfyQuant => "per-layer comfy_quant, <layer>.weight_scale",
        }
    }
}

/// The scaled fp8 layers of a file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fp8Scaled {
    pub layout: Fp8Layout,
    /// Stored weight name -> stored name of its scale tensor.
    #[serde(skip)]
    pub scales: BTreeMap<String, String>,
    /// Number of scaled layers.
    pub layers: usize,
    /// The file asks for fp8 weights to be multiplied in full precision (ComfyUI's
    /// `full_precision_matrix_mult`); nijigen always does.
    pub full_precision_matrix_mult: bool,
    /// Stored names that are part of the quantization, not weights: scales, input scales,
    /// `comfy_quant` tensors, the `scaled_fp8` marker.
    #[serde(skip)]
    pub aux: BTreeSet<String>,
    /// Layers in a per-layer format nijigen cannot load (ComfyUI's `nvfp4`, int8 variants):
    /// format -> number of layers. Such a file can be described, not loaded
    /// ([`Fp8Scaled::check_loadable`]).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub unsupported: BTreeMap<String, usize>,
    /// The first such layer (name, format), for the error.
    #[serde(skip)]
    first_unsupported: Option<(String, String)>,
}

/// The suffixes of a layer's quantization tensors besides its weight.
const AUX_SUFFIXES: [&str; 6] = [
    ".scale_weight",
    ".scale_input",
    ".weight_scale",
    ".weight_scale_2",
    ".input_scale",
    ".comfy_quant",
];

/// Whether `name` is a quantization tensor (a scale, a marker, a `comfy_quant`), not a weight.
pub fn is_aux_name(name: &str) -> bool {
    name == "scaled_fp8"
        || name.ends_with(".scaled_fp8")
        || AUX_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// The fp8 formats a `comfy_quant` entry may name.
fn fp8_format(format: &str) -> Option<DType> {
    match format {
        "float8_e4m3fn" => Some(DType::F8E4M3),
        "float8_e5m2" => Some(DType::F8E5M2),
        _ => None,
    }
}

impl Fp8Scaled {
    /// The scaled fp8 layers of `file`; `None` for a file of neither layout. Layers in another
    /// per-layer format are counted in [`Fp8Scaled::unsupported`], not refused here, so that
    /// the file can still be described; loading checks [`Fp8Scaled::check_loadable`].
    pub fn read(file: &WeightFile) -> Result<Option<Fp8Scaled>, FormatError> {
        let path = file.paths().first().cloned().unwrap_or_default();
        let bad = |what: String| FormatError::malformed(&path, what);
        let names: BTreeSet<&str> = file.tensors().iter().map(|t| t.name.as_str()).collect();
        let aux: BTreeSet<String> = names
            .iter()
            .filter(|n| is_aux_name(n))
            .map(|n| n.to_string())
            .collect();

        // The per-layer table: header metadata first, then `comfy_quant` tensors.
        let mut layers: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        if let Some(MetaValue::String(s)) = file.meta("_quantization_metadata") {
            let v: serde_json::Value = serde_json::from_str(s)
                .map_err(|e| bad(format!("__metadata__._quantization_metadata: {e}")))?;
            let table = v.get("layers").and_then(|l| l.as_object()).ok_or_else(|| {
                bad("__metadata__._quantization_metadata has no \"layers\" object".into())
            })?;
            for (k, conf) in table {
                // A bare format string is shorthand for {"format": ...}.
                let conf = match conf {
                    serde_json::Value::String(f) => serde_json::json!({ "format": f }),
                    c => c.clone(),
                };
                layers.insert(k.clone(), conf);
            }
        }
        for t in file.tensors() {
            let Some(layer) = t.name.strip_suffix(".comfy_quant") else {
                continue;
            };
            if layers.contains_key(layer) {
                continue;
            }
            if t.dtype != DType::U8 {
                return Err(bad(format!(
                    "tensor \"{}\": a comfy_quant tensor must be U8 JSON, found {}",
                    t.name, t.dtype
                )));
            }
            let conf: serde_json::Value = serde_json::from_slice(file.data(t))
                .map_err(|e| bad(format!("tensor \"{}\": not JSON: {e}", t.name)))?;
            layers.insert(layer.to_string(), conf);
        }

        if !layers.is_empty() {
            let mut scales = BTreeMap::new();
            let mut fpmm = false;
            let mut unsupported: BTreeMap<String, usize> = BTreeMap::new();
            let mut first_unsupported = None;
            for (layer, conf) in &layers {
                let format = conf.get("format").and_then(|f| f.as_str()).unwrap_or("");
                if fp8_format(format).is_none() {
                    *unsupported.entry(format.to_string()).or_default() += 1;
                    first_unsupported.get_or_insert_with(|| (layer.clone(), format.to_string()));
                    continue;
                }
                fpmm |= conf
                    .get("full_precision_matrix_mult")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false);
                let weight = format!("{layer}.weight");
                let scale = format!("{layer}.weight_scale");
                if !names.contains(weight.as_str()) {
                    return Err(bad(format!(
                        "layer \"{layer}\" is marked {format} but the file has no \"{weight}\""
                    )));
                }
                if !names.contains(scale.as_str()) {
                    return Err(bad(format!(
                        "layer \"{layer}\" is marked {format} but the file has no \"{scale}\""
                    )));
                }
                scales.insert(weight, scale);
            }
            return Ok(Some(Fp8Scaled {
                layout: Fp8Layout::ComfyQuant,
                layers: scales.len(),
                scales,
                full_precision_matrix_mult: fpmm,
                aux,
                unsupported,
                first_unsupported,
            }));
        }

        let marker = file
            .tensors()
            .iter()
            .find(|t| t.name == "scaled_fp8" || t.name.ends_with(".scaled_fp8"));
        let Some(marker) = marker else {
            return Ok(None);
        };
        let mut scales = BTreeMap::new();
        for n in &names {
            if let Some(layer) = n.strip_suffix(".scale_weight") {
                let weight = format!("{layer}.weight");
                if !names.contains(weight.as_str()) {
                    return Err(bad(format!(
                        "tensor \"{n}\" scales a weight the file does not have (\"{weight}\")"
                    )));
                }
                scales.insert(weight, n.to_string());
            }
        }
        Ok(Some(Fp8Scaled {
            layout: Fp8Layout::ScaledFp8,
            layers: scales.len(),
            scales,
            full_precision_matrix_mult: marker.numel() == 2,
            aux,
            unsupported: BTreeMap::new(),
            first_unsupported: None,
        }))
    }

    /// Refuses `file` (the file this was read from) if it has layers in a format nijigen
    /// cannot load.
    pub fn check_loadable(&self, file: &WeightFile) -> Result<(), FormatError> {
        match &self.first_unsupported {
            None => Ok(()),
            Some((layer, format)) => Err(FormatError::unsupported(
                &file.paths().first().cloned().unwrap_or_default(),
                format!(
                    "layer \"{layer}\": quantization format \"{format}\" is not supported \
                     (float8_e4m3fn and float8_e5m2 are); use an fp16, fp8 or GGUF file of this \
                     model"
                ),
            )),
        }
    }

    /// The stored name of the scale of stored weight `name`, if it has one.
    pub fn scale_of(&self, name: &str) -> Option<&str> {
        self.scales.get(name).map(String::as_str)
    }
}

/// How a scale tensor spreads over its weight.
enum ScaleLayout {
    /// One value for the whole tensor.
    Tensor,
    /// One value per output row of `per` values.
    Rows { per: usize },
    /// A 2-D grid of `a x b` blocks of `bo x bi` values over an `[o, i]` weight.
    Blocks {
        i: usize,
        b: usize,
        bo: usize,
        bi: usize,
    },
}

/// How a scale of `scale_len` values and shape `scale_shape` applies to weight `w`, or why it
/// cannot: one value, one per output row (`[out]`, `[out, 1]`), or a 2-D block grid over a 2-D
/// weight.
fn scale_layout(
    w: &TensorInfo,
    scale_len: usize,
    scale_shape: &[u64],
) -> Result<ScaleLayout, String> {
    let n = w.numel() as usize;
    let rows = w.shape.first().copied().unwrap_or(1) as usize;
    let bad = || {
        format!(
            "scale of shape {scale_shape:?} does not fit weight of shape {:?} (one value, one per \
             output row, or a block grid are supported)",
            w.shape
        )
    };
    match scale_len {
        1 => Ok(ScaleLayout::Tensor),
        k if k == rows
            && rows > 0
            && n % rows == 0
            && scale_shape.len() <= 2
            && scale_shape.iter().skip(1).all(|&d| d == 1) =>
        {
            Ok(ScaleLayout::Rows { per: n / rows })
        }
        _ => {
            let [o, i] = w.shape[..] else {
                return Err(bad());
            };
            let [a, b] = scale_shape[..] else {
                return Err(bad());
            };
            let (o, i, a, b) = (o as usize, i as usize, a as usize, b as usize);
            if a == 0 || b == 0 || o % a != 0 || i % b != 0 || a * b != scale_len {
                return Err(bad());
            }
            Ok(ScaleLayout::Blocks {
                i,
                b,
                bo: o / a,
                bi: i / b,
            })
        }
    }
}

/// A weight's scale, checked against the weight, ready to apply to any run of its values.
pub struct Scale {
    layout: ScaleLayout,
    values: Vec<f32>,
}

impl Scale {
    /// The scale `values` (shape `shape`) of weight `w`, or why it does not fit.
    pub fn new(w: &TensorInfo, values: Vec<f32>, shape: &[u64]) -> Result<Scale, String> {
        if values.iter().any(|s| !s.is_finite()) {
            return Err("scale is not finite".into());
        }
        Ok(Scale {
            layout: scale_layout(w, values.len(), shape)?,
            values,
        })
    }

    /// Multiplies `values`, the weight's elements `start..start + values.len()` (row-major),
    /// by their scales.
    pub fn apply_from(&self, start: usize, values: &mut [f32]) {
        match self.layout {
            ScaleLayout::Tensor => values.iter_mut().for_each(|v| *v *= self.values[0]),
            ScaleLayout::Rows { per } => {
                for (k, v) in values.iter_mut().enumerate() {
                    *v *= self.values[(start + k) / per];
                }
            }
            ScaleLayout::Blocks { i, b, bo, bi } => {
                for (k, v) in values.iter_mut().enumerate() {
                    let (r, c) = ((start + k) / i, (start + k) % i);
                    *v *= self.values[(r / bo) * b + c / bi];
                }
            }
        }
    }
}

/// Multiplies `values` (the weight `w`, PyTorch order, row-major) by `scale` in place: one
/// value, one per output row (`[out]`, `[out, 1]`), or a 2-D block grid over a 2-D weight.
pub fn apply_scale(
    w: &TensorInfo,
    values: &mut [f32],
    scale: &[f32],
    scale_shape: &[u64],
) -> Result<(), String> {
    if values.len() as u64 != w.numel() {
        return Err(format!(
            "{} values for a weight of shape {:?}",
            values.len(),
            w.shape
        ));
    }
    Scale::new(w, scale.to_vec(), scale_shape)?.apply_from(0, values);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(shape: &[u64]) -> TensorInfo {
        TensorInfo {
            name: "w".into(),
            dtype: DType::F8E4M3,
            shape: shape.to_vec(),
            shard: 0,
            offset: 0,
            size: shape.iter().product(),
        }
    }

    #[test]
    fn scales_broadcast_per_tensor_per_row_and_per_block() {
        let w = info(&[2, 4]);
        let base: Vec<f32> = (1..=8).map(|v| v as f32).collect();
        let mut v = base.clone();
        apply_scale(&w, &mut v, &[0.5], &[]).unwrap();
        assert_eq!(v, base.iter().map(|x| x * 0.5).collect::<Vec<_>>());
        let mut v = base.clone();
        apply_scale(&w, &mut v, &[2.0, 10.0], &[2, 1]).unwrap();
        assert_eq!(v, vec![2., 4., 6., 8., 50., 60., 70., 80.]);
        let mut v = base.clone();
        apply_scale(&w, &mut v, &[2.0, 10.0], &[2]).unwrap();
        assert_eq!(v, vec![2., 4., 6., 8., 50., 60., 70., 80.]);
        // 2 x 2 blocks of [1 x 2]: columns 0-1 and 2-3 of each row.
        let mut v = base.clone();
        apply_scale(&w, &mut v, &[1.0, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
        assert_eq!(v, vec![1., 2., 6., 8., 15., 18., 28., 32.]);
        let e = apply_scale(&w, &mut base.clone(), &[1.0, 2.0, 3.0], &[3]).unwrap_err();
        assert!(e.contains("does not fit"), "{e}");
        let e = apply_scale(&w, &mut base.clone(), &[f32::NAN], &[]).unwrap_err();
        assert!(e.contains("not finite"), "{e}");
    }

    #[test]
    fn quantization_tensors_are_not_weights() {
        for n in [
            "scaled_fp8",
            "model.diffusion_model.scaled_fp8",
            "blocks.0.ffn.0.scale_weight",
            "blocks.0.ffn.0.scale_input",
            "blocks.0.ffn.0.weight_scale",
            "blocks.0.ffn.0.input_scale",
            "blocks.0.ffn.0.weight_scale_2",
            "blocks.0.ffn.0.comfy_quant",
        ] {
            assert!(is_aux_name(n), "{n}");
        }
        for n in ["blocks.0.ffn.0.weight", "spiece_model", "scale_shift_table"] {
            assert!(!is_aux_name(n), "{n}");
        }
    }
}
