//! The node types nijigen accepts, with their inputs in ComfyUI's order.
//!
//! The order matters for the UI format: a node there stores its widget values as a positional
//! array (`widgets_values`), one entry per widget in the order ComfyUI declares the node's inputs
//! (required first, then optional), skipping inputs that can only be links (MODEL, IMAGE, ...).
//! The frontend also stores values of widgets that the backend never sees:
//! `control_after_generate` ("fixed"/"randomize"/...) right after every seed-like INT, and the
//! `upload` button right after LoadImage's `image`. They take a slot in the array and are skipped.
//!
//! Types follow ComfyUI: `INT`, `FLOAT`, `STRING`, `BOOLEAN` and `COMBO` (a choice, stored as a
//! string) can be constants or links; everything else (`MODEL`, `CLIP`, `LATENT`, ...) only a link.
//! `*` accepts anything; `A,B` accepts either.

use serde_json::{json, Value};

/// How an input shows up among the UI's widgets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Widget {
    /// Link only; no widget slot.
    No,
    /// One widget slot.
    Yes,
    /// One slot for the value, then one for the frontend-only `control_after_generate`.
    Seed,
    /// One slot for the value, then one for the frontend-only `upload` button.
    Upload,
}

/// A default the frontend gives a widget when an older file has fewer widget values than the
/// node now declares.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Dflt {
    None,
    Int(i64),
    Float(f64),
    Str(&'static str),
    Bool(bool),
}

impl Dflt {
    pub(crate) fn value(self) -> Option<Value> {
        match self {
            Dflt::None => None,
            Dflt::Int(i) => Some(json!(i)),
            Dflt::Float(f) => Some(json!(f)),
            Dflt::Str(s) => Some(json!(s)),
            Dflt::Bool(b) => Some(json!(b)),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct InputSpec {
    pub name: &'static str,
    pub ty: &'static str,
    pub required: bool,
    pub widget: Widget,
    pub default: Dflt,
    /// For COMBO inputs nijigen restricts: the accepted values. Empty: anything.
    pub choices: &'static [&'static str],
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct NodeSpec {
    pub class_type: &'static str,
    pub inputs: &'static [InputSpec],
    pub outputs: &'static [&'static str],
    pub output_node: bool,
    /// Accepts any input whose name starts with this (ComfyMathExpression's `values.a`, ...).
    pub dynamic_prefix: Option<(&'static str, &'static str)>,
    /// VHS_VideoCombine: widgets_values is a dict and holds format-specific extras.
    pub vhs: bool,
}

const fn link(name: &'static str, ty: &'static str) -> InputSpec {
    InputSpec {
        name,
        ty,
        required: true,
        widget: Widget::No,
        default: Dflt::None,
        choices: &[],
    }
}

const fn opt_link(name: &'static str, ty: &'static str) -> InputSpec {
    InputSpec {
        required: false,
        ..link(name, ty)
    }
}

const fn w(name: &'static str, ty: &'static str, default: Dflt) -> InputSpec {
    InputSpec {
        name,
        ty,
        required: true,
        widget: Widget::Yes,
        default,
        choices: &[],
    }
}

const fn opt_w(name: &'static str, ty: &'static str, default: Dflt) -> InputSpec {
    InputSpec {
        required: false,
        ..w(name, ty, default)
    }
}

const fn seed(name: &'static str) -> InputSpec {
    InputSpec {
        widget: Widget::Seed,
        ..w(name, "INT", Dflt::Int(0))
    }
}

const fn choice(name: &'static str, default: Dflt, choices: &'static [&'static str]) -> InputSpec {
    InputSpec {
        choices,
        ..w(name, "COMBO", default)
    }
}

const fn node(
    class_type: &'static str,
    inputs: &'static [InputSpec],
    outputs: &'static [&'static str],
) -> NodeSpec {
    NodeSpec {
        class_type,
        inputs,
        outputs,
        output_node: false,
        dynamic_prefix: None,
        vhs: false,
    }
}

const fn output(class_type: &'static str, inputs: &'static [InputSpec]) -> NodeSpec {
    NodeSpec {
        output_node: true,
        ..node(class_type, inputs, &[])
    }
}

use Dflt as D;

/// CLIPLoader `type`s nijigen can run: SD1.x/SDXL text encoders and Wan's UMT5.
const CLIP_TYPES: &[&str] = &["stable_diffusion", "sd", "sdxl", "wan"];
const NONE: Dflt = D::None;

pub(crate) static SPECS: &[NodeSpec] = &[
    // Loaders.
    node(
        "CheckpointLoaderSimple",
        &[w("ckpt_name", "COMBO", NONE)],
        &["MODEL", "CLIP", "VAE"],
    ),
    node(
        "UNETLoader",
        &[
            w("unet_name", "COMBO", NONE),
            w("weight_dtype", "COMBO", D::Str("default")),
        ],
        &["MODEL"],
    ),
    node(
        "UnetLoaderGGUF",
        &[w("unet_name", "COMBO", NONE)],
        &["MODEL", "STRING", "STRING"],
    ),
    node(
        "UnetLoaderGGUFAdvanced",
        &[
            w("unet_name", "COMBO", NONE),
            w("dequant_dtype", "COMBO", D::Str("default")),
            w("patch_dtype", "COMBO", D::Str("default")),
            w("patch_on_device", "BOOLEAN", D::Bool(false)),
        ],
        &["MODEL", "STRING", "STRING"],
    ),
    node(
        "CLIPLoader",
        &[
            w("clip_name", "COMBO", NONE),
            choice("type", D::Str("stable_diffusion"), CLIP_TYPES),
            opt_w("device", "COMBO", D::Str("default")),
        ],
        &["CLIP"],
    ),
    node(
        "CLIPLoaderGGUF",
        &[
            w("clip_name", "COMBO", NONE),
            choice("type", D::Str("stable_diffusion"), CLIP_TYPES),
        ],
        &["CLIP"],
    ),
    node(
        "DualCLIPLoader",
        &[
            w("clip_name1", "COMBO", NONE),
            w("clip_name2", "COMBO", NONE),
            choice("type", D::Str("sdxl"), &["sdxl"]),
            opt_w("device", "COMBO", D::Str("default")),
        ],
        &["CLIP"],
    ),
    node("VAELoader", &[w("vae_name", "COMBO", NONE)], &["VAE"]),
    node(
        "CLIPVisionLoader",
        &[w("clip_name", "COMBO", NONE)],
        &["CLIP_VISION"],
    ),
    node(
        "LoraLoader",
        &[
            link("model", "MODEL"),
            link("clip", "CLIP"),
            w("lora_name", "COMBO", NONE),
            w("strength_model", "FLOAT", D::Float(1.0)),
            w("strength_clip", "FLOAT", D::Float(1.0)),
        ],
        &["MODEL", "CLIP"],
    ),
    node(
        "LoraLoaderModelOnly",
        &[
            link("model", "MODEL"),
            w("lora_name", "COMBO", NONE),
            w("strength_model", "FLOAT", D::Float(1.0)),
        ],
        &["MODEL"],
    ),
    // Conditioning and latents.
    node(
        "CLIPSetLastLayer",
        &[
            link("clip", "CLIP"),
            w("stop_at_clip_layer", "INT", D::Int(-1)),
        ],
        &["CLIP"],
    ),
    node(
        "CLIPTextEncode",
        &[w("text", "STRING", NONE), link("clip", "CLIP")],
        &["CONDITIONING"],
    ),
    node(
        "EmptyLatentImage",
        &[
            w("width", "INT", D::Int(512)),
            w("height", "INT", D::Int(512)),
            w("batch_size", "INT", D::Int(1)),
        ],
        &["LATENT"],
    ),
    node(
        "KSampler",
        &[
            link("model", "MODEL"),
            seed("seed"),
            w("steps", "INT", D::Int(20)),
            w("cfg", "FLOAT", D::Float(8.0)),
            w("sampler_name", "COMBO", NONE),
            w("scheduler", "COMBO", NONE),
            link("positive", "CONDITIONING"),
            link("negative", "CONDITIONING"),
            link("latent_image", "LATENT"),
            w("denoise", "FLOAT", D::Float(1.0)),
        ],
        &["LATENT"],
    ),
    node(
        "KSamplerAdvanced",
        &[
            link("model", "MODEL"),
            choice("add_noise", D::Str("enable"), &["enable", "disable"]),
            seed("noise_seed"),
            w("steps", "INT", D::Int(20)),
            w("cfg", "FLOAT", D::Float(8.0)),
            w("sampler_name", "COMBO", NONE),
            w("scheduler", "COMBO", NONE),
            link("positive", "CONDITIONING"),
            link("negative", "CONDITIONING"),
            link("latent_image", "LATENT"),
            w("start_at_step", "INT", D::Int(0)),
            w("end_at_step", "INT", D::Int(10000)),
            choice(
                "return_with_leftover_noise",
                D::Str("disable"),
                &["enable", "disable"],
            ),
        ],
        &["LATENT"],
    ),
    node(
        "ModelSamplingSD3",
        &[link("model", "MODEL"), w("shift", "FLOAT", D::Float(3.0))],
        &["MODEL"],
    ),
    node(
        "EasyCache",
        &[
            link("model", "MODEL"),
            w("reuse_threshold", "FLOAT", D::Float(0.2)),
            w("start_percent", "FLOAT", D::Float(0.15)),
            w("end_percent", "FLOAT", D::Float(0.95)),
            w("verbose", "BOOLEAN", D::Bool(false)),
        ],
        &["MODEL"],
    ),
    node(
        "WanImageToVideo",
        &[
            link("positive", "CONDITIONING"),
            link("negative", "CONDITIONING"),
            link("vae", "VAE"),
            w("width", "INT", D::Int(832)),
            w("height", "INT", D::Int(480)),
            w("length", "INT", D::Int(81)),
            w("batch_size", "INT", D::Int(1)),
            opt_link("clip_vision_output", "CLIP_VISION_OUTPUT"),
            opt_link("start_image", "IMAGE"),
        ],
        &["CONDITIONING", "CONDITIONING", "LATENT"],
    ),
    node(
        "CLIPVisionEncode",
        &[
            link("clip_vision", "CLIP_VISION"),
            link("image", "IMAGE"),
            w("crop", "COMBO", D::Str("center")),
        ],
        &["CLIP_VISION_OUTPUT"],
    ),
    // Images and video.
    node(
        "LoadImage",
        &[InputSpec {
            widget: Widget::Upload,
            ..w("image", "COMBO", NONE)
        }],
        &["IMAGE", "MASK"],
    ),
    node(
        "ImageScale",
        &[
            link("image", "IMAGE"),
            w("upscale_method", "COMBO", D::Str("nearest-exact")),
            w("width", "INT", D::Int(512)),
            w("height", "INT", D::Int(512)),
            w("crop", "COMBO", D::Str("disabled")),
        ],
        &["IMAGE"],
    ),
    node(
        "VAEEncode",
        &[link("pixels", "IMAGE"), link("vae", "VAE")],
        &["LATENT"],
    ),
    node(
        "VAEDecode",
        &[link("samples", "LATENT"), link("vae", "VAE")],
        &["IMAGE"],
    ),
    node(
        "VAEDecodeTiled",
        &[
            link("samples", "LATENT"),
            link("vae", "VAE"),
            w("tile_size", "INT", D::Int(512)),
            w("overlap", "INT", D::Int(64)),
            w("temporal_size", "INT", D::Int(64)),
            w("temporal_overlap", "INT", D::Int(8)),
        ],
        &["IMAGE"],
    ),
    node(
        "CreateVideo",
        &[
            link("images", "IMAGE"),
            w("fps", "FLOAT", D::Float(30.0)),
            opt_link("audio", "AUDIO"),
            opt_w("bit_depth", "COMBO", D::Str("auto")),
            opt_w("color_space", "COMBO", D::Str("sRGB")),
            opt_w("codec", "COMBO", D::Str("none")),
        ],
        &["VIDEO"],
    ),
    NodeSpec {
        outputs: &["VIDEO"],
        ..output(
            "SaveVideo",
            &[
                link("video", "VIDEO"),
                w("filename_prefix", "STRING", D::Str("video/ComfyUI")),
                w("format", "COMBO", D::Str("auto")),
                opt_w("codec", "COMBO", D::Str("auto")),
            ],
        )
    },
    output(
        "SaveImage",
        &[
            link("images", "IMAGE"),
            w("filename_prefix", "STRING", D::Str("ComfyUI")),
        ],
    ),
    output(
        "SaveAnimatedWEBP",
        &[
            link("images", "IMAGE"),
            w("filename_prefix", "STRING", D::Str("ComfyUI")),
            w("fps", "FLOAT", D::Float(6.0)),
            w("lossless", "BOOLEAN", D::Bool(true)),
            w("quality", "INT", D::Int(80)),
            w("method", "COMBO", D::Str("default")),
        ],
    ),
    output("PreviewImage", &[link("images", "IMAGE")]),
    NodeSpec {
        outputs: &["VHS_FILENAMES"],
        vhs: true,
        ..output(
            "VHS_VideoCombine",
            &[
                link("images", "IMAGE,LATENT"),
                w("frame_rate", "FLOAT,INT", D::Int(8)),
                w("loop_count", "INT", D::Int(0)),
                w("filename_prefix", "STRING", D::Str("AnimateDiff")),
                w("format", "COMBO", D::Str("image/gif")),
                w("pingpong", "BOOLEAN", D::Bool(false)),
                w("save_output", "BOOLEAN", D::Bool(true)),
                opt_link("audio", "AUDIO"),
                opt_link("meta_batch", "VHS_BatchManager"),
                opt_link("vae", "VAE"),
            ],
        )
    },
    // Constants and logic (folded away when their inputs are constants).
    node(
        "PrimitiveInt",
        &[InputSpec {
            widget: Widget::Seed,
            ..w("value", "INT", NONE)
        }],
        &["INT"],
    ),
    node("PrimitiveFloat", &[w("value", "FLOAT", NONE)], &["FLOAT"]),
    node(
        "PrimitiveString",
        &[w("value", "STRING", NONE)],
        &["STRING"],
    ),
    node(
        "PrimitiveStringMultiline",
        &[w("value", "STRING", NONE)],
        &["STRING"],
    ),
    node(
        "PrimitiveBoolean",
        &[w("value", "BOOLEAN", NONE)],
        &["BOOLEAN"],
    ),
    node(
        "ComfySwitchNode",
        &[
            w("switch", "BOOLEAN", D::Bool(false)),
            opt_link("on_false", "*"),
            opt_link("on_true", "*"),
        ],
        &["*"],
    ),
    NodeSpec {
        dynamic_prefix: Some(("values.", "FLOAT,INT,BOOLEAN")),
        ..node(
            "ComfyMathExpression",
            &[w("expression", "STRING", D::Str("a + b"))],
            &["FLOAT", "INT", "BOOLEAN"],
        )
    },
];

/// Nodes that exist only in the UI; they never reach the executable graph. Besides ComfyUI's
/// own, KJNodes' SetNode/GetNode (a named wire: GetNode gives what the SetNode of the same name
/// is fed) and rgthree's purely cosmetic or canvas-control nodes, common in shared workflows.
pub(crate) const FRONTEND_ONLY: &[&str] = &[
    "Reroute",
    "PrimitiveNode",
    "Note",
    "MarkdownNote",
    "SetNode",
    "GetNode",
    "Label (rgthree)",
    "Bookmark (rgthree)",
    "Fast Groups Bypasser (rgthree)",
    "Fast Groups Muter (rgthree)",
];

pub(crate) fn spec(class_type: &str) -> Option<&'static NodeSpec> {
    SPECS.iter().find(|s| s.class_type == class_type)
}

pub(crate) fn is_output_node(class_type: &str) -> bool {
    spec(class_type).is_some_and(|s| s.output_node)
}

/// The list printed in "not supported" errors.
pub(crate) fn supported_list() -> String {
    supported_node_types().join(", ")
}

/// The class_types nijigen accepts, the UI-only ones (Reroute, PrimitiveNode, Note,
/// MarkdownNote) included.
pub fn supported_node_types() -> Vec<&'static str> {
    let mut names: Vec<&str> = SPECS.iter().map(|s| s.class_type).collect();
    names.extend(FRONTEND_ONLY);
    names
}

impl NodeSpec {
    pub(crate) fn input(&self, name: &str) -> Option<InputSpec> {
        if let Some(i) = self.inputs.iter().find(|i| i.name == name) {
            return Some(*i);
        }
        match self.dynamic_prefix {
            Some((prefix, ty)) if name.starts_with(prefix) => Some(opt_link(prefix, ty)),
            _ => None,
        }
    }

    /// The names of the widget slots of a positional `widgets_values`, `None` for the slots of
    /// frontend-only widgets.
    pub(crate) fn widget_slots(&self) -> Vec<Option<&'static str>> {
        let mut slots = Vec::new();
        for i in self.inputs {
            match i.widget {
                Widget::No => {}
                Widget::Yes => slots.push(Some(i.name)),
                Widget::Seed | Widget::Upload => {
                    slots.push(Some(i.name));
                    slots.push(None);
                }
            }
        }
        slots
    }

    /// Maps a node's `widgets_values` (array, dict or null) to input names.
    pub(crate) fn map_widgets(&self, values: &Value) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        match values {
            Value::Array(items) if self.vhs => {
                // VHS's older list form: frame_rate, loop_count, filename_prefix, format, then
                // the chosen format's own widgets, then pingpong and save_output.
                let names = ["frame_rate", "loop_count", "filename_prefix", "format"];
                for (name, v) in names.iter().zip(items) {
                    out.push((name.to_string(), v.clone()));
                }
                let n = items.len();
                if n >= 6 && items[n - 2].is_boolean() && items[n - 1].is_boolean() {
                    out.push(("pingpong".into(), items[n - 2].clone()));
                    out.push(("save_output".into(), items[n - 1].clone()));
                }
            }
            Value::Array(items) => {
                for (slot, v) in self.widget_slots().into_iter().zip(items) {
                    if let Some(name) = slot {
                        out.push((name.to_string(), v.clone()));
                    }
                }
            }
            Value::Object(map) => {
                for (k, v) in map {
                    let known = self
                        .inputs
                        .iter()
                        .any(|i| i.name == k && i.widget != Widget::No);
                    // VHS keeps the chosen format's extra options (pix_fmt, crf, ...) by name;
                    // `videopreview` is its UI preview state.
                    if known || (self.vhs && k != "videopreview") {
                        out.push((k.clone(), v.clone()));
                    }
                }
            }
            _ => {}
        }
        out
    }
}

/// LiteGraph's rule for whether an output of type `a` may feed an input of type `b`: equal,
/// either side `*` or empty, or (for comma-separated lists) any pair equal. nijigen adds one
/// leniency: `COMBO` and `STRING` are interchangeable (a COMBO is a string on the wire).
pub(crate) fn types_compatible(a: &str, b: &str) -> bool {
    let norm = |t: &str| t.trim().to_ascii_uppercase();
    let is_any = |t: &str| t.is_empty() || t == "*";
    if is_any(a.trim()) || is_any(b.trim()) {
        return true;
    }
    a.split(',').any(|x| {
        b.split(',').any(|y| {
            let (x, y) = (norm(x), norm(y));
            x == y
                || is_any(&x)
                || is_any(&y)
                || matches!(
                    (x.as_str(), y.as_str()),
                    ("COMBO", "STRING") | ("STRING", "COMBO")
                )
        })
    })
}

/// Whether a type can be given as a constant (widget types).
pub(crate) fn is_widget_type(ty: &str) -> bool {
    ty == "*"
        || ty
            .split(',')
            .any(|t| matches!(t.trim(), "INT" | "FLOAT" | "STRING" | "BOOLEAN" | "COMBO"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ksampler_widget_slots_skip_control_after_generate() {
        let s = spec("KSampler").unwrap();
        let m = s.map_widgets(&json!([42, "randomize", 20, 6, "uni_pc", "simple", 1]));
        let names: Vec<&str> = m.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "seed",
                "steps",
                "cfg",
                "sampler_name",
                "scheduler",
                "denoise"
            ]
        );
        assert_eq!(m[1].1, json!(20));
    }

    #[test]
    fn vhs_dict_widgets_keep_format_options() {
        let s = spec("VHS_VideoCombine").unwrap();
        let m = s.map_widgets(&json!({
            "frame_rate": 16, "loop_count": 0, "filename_prefix": "wan", "format": "video/h264-mp4",
            "pix_fmt": "yuv420p", "crf": 19, "save_metadata": true, "pingpong": false,
            "save_output": true, "videopreview": {"hidden": false}
        }));
        let names: Vec<&str> = m.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"crf"));
        assert!(names.contains(&"filename_prefix"));
        assert!(!names.contains(&"videopreview"));
    }

    #[test]
    fn type_rules() {
        assert!(types_compatible("MODEL", "MODEL"));
        assert!(types_compatible("*", "MODEL"));
        assert!(types_compatible("INT", "FLOAT,INT,BOOLEAN"));
        assert!(types_compatible("STRING", "COMBO"));
        assert!(!types_compatible("INT", "FLOAT"));
        assert!(!types_compatible("CLIP", "MODEL"));
    }

    #[test]
    fn every_spec_is_unique() {
        for (i, a) in SPECS.iter().enumerate() {
            for b in &SPECS[i + 1..] {
                assert_ne!(a.class_type, b.class_type);
            }
        }
    }
}
