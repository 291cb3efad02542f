//! One description per network, registered once in [`NETWORKS`]: the planner, the runtime and
//! the pipelines iterate over these instead of matching on network names.
//!
//! A [`Network`] says:
//! - what the planner calls it and how it runs ([`Component`]: name, role, stage, order, uses);
//! - how its file is recognised: [`Network::architectures`], the architectures
//!   [`crate::formats::names::detect`] reports for a file or a checkpoint component that carries
//!   it, and [`Network::recognitions`], the kinds of file detection looks for (name patterns,
//!   each architecture's description, roots and name map: [`crate::formats::names::Recognition`],
//!   [`crate::formats::names::Naming`]), declared next to the network; and which flag names the
//!   file;
//! - its memory figures for a request ([`Network::memory`]): the compute-buffer bytes (and, for
//!   a VAE, per tile size) from its config inferred from the weights, the tensor table only
//!   (a set from [`crate::runtime::WeightStore::load_meta`]: no weights read). The denoisers and
//!   the Wan VAE size their own graphs with ggml's allocator; the encoders and the SDXL VAE use
//!   the documented formulas next to their model;
//! - its description ([`Network::describe`]): a one-line summary and the config as JSON, from
//!   the same model config (what `nijigen info` prints, through `crate::pipeline::inspect`).
//!
//! Each model file declares its network(s) (`pub static NETWORK`) with its recognition
//! (`pub static RECOGNITION`, `NAMES`); adding a network is one model file plus one line in
//! [`NETWORKS`] (and `pub mod` in `models/mod.rs`). Detection, the name maps and
//! [`Architecture::description`] / [`Architecture::from_name`] find its recognition through
//! [`recognitions`]. A new architecture is a const in its model file
//! (`Architecture::new("wan22-dit")`); [`Architecture`]'s associated consts only name the ones
//! the code refers to.

use crate::formats::names::{Architecture, Recognition};
use crate::ggml::TensorSet;
use crate::runtime::plan::{Component, TileOption};

/// What a network's memory depends on in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Output size in pixels.
    pub width: u32,
    pub height: u32,
    /// Video frames (1 for a still).
    pub frames: usize,
    /// A VAE tile asked for (`--vae-tile`), offered besides [`VAE_TILES`].
    pub vae_tile: Option<u32>,
}

/// A network's device memory besides its weights, for a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    /// Compute-buffer bytes (encoders, denoisers; for a streamed denoiser also the activations
    /// carried between its block graphs).
    pub compute_bytes: u64,
    /// VAEs: the tile sizes on offer, untiled first, with their compute bytes.
    pub tiles: Vec<TileOption>,
}

/// Why a network's figures could not be computed: its model's error.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Clip(#[from] super::ClipError),
    #[error(transparent)]
    ClipVision(#[from] super::ClipVisionError),
    #[error(transparent)]
    Umt5(#[from] super::Umt5Error),
    #[error(transparent)]
    Unet(#[from] super::UnetError),
    #[error(transparent)]
    Vae(#[from] super::VaeError),
    #[error(transparent)]
    WanDit(#[from] super::WanDitError),
    #[error(transparent)]
    WanVae(#[from] super::WanVaeError),
}

/// The figures of a network for a request, from its tensor table (`set`, names under `prefix`).
pub type MemoryFn = fn(&TensorSet<'_>, &str, &Request) -> Result<Memory, ModelError>;

/// A network's config for people and for `--json`: what `nijigen info` prints.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Description {
    /// One line, e.g. "Wan2.1 I2V DiT, dim 5120, 40 blocks, 40 heads, ffn 13824".
    pub summary: String,
    /// The model config inferred from the weights (plus what the summary adds to it).
    pub config: serde_json::Value,
}

/// The description of a network from its tensor table (`set`, names under `prefix`).
pub type DescribeFn = fn(&TensorSet<'_>, &str) -> Result<Description, ModelError>;

/// One network: see the module docs.
pub struct Network {
    pub component: Component,
    /// What the user calls it in messages: "umT5 encoder", "CLIP-L", "a Wan2.1 DiT" ...
    pub label: &'static str,
    /// The flag that names its file ("--t5"); for the main model of a stage, "--model".
    pub flag: &'static str,
    /// Architectures of the files (or checkpoint components) that carry it.
    pub architectures: &'static [Architecture],
    /// How [`crate::formats::names::detect`] recognises its files: the kinds of file that may
    /// be one of [`Network::architectures`] (a kind may be shared: HF-named CLIP text files are
    /// CLIP-L or bigG), each with its name patterns, its architectures' name maps and
    /// descriptions ([`crate::formats::names::Naming`]).
    pub recognitions: &'static [&'static Recognition],
    /// Whether its blocks can stream through device slots (the planner gets its block list).
    pub streams: bool,
    pub memory: MemoryFn,
    /// Its config in one line and as JSON, from the same model config that runs it.
    pub describe: DescribeFn,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("component", &self.component.name)
            .field("label", &self.label)
            .finish()
    }
}

/// Every network, in execution order.
pub static NETWORKS: [&Network; 8] = [
    &super::clip_text::CLIP_L,
    &super::clip_text::CLIP_G,
    &super::unet_sdxl::NETWORK,
    &super::vae_sdxl::NETWORK,
    &super::umt5::NETWORK,
    &super::clip_vision::NETWORK,
    &super::wan_vae::NETWORK,
    &super::wan_dit::NETWORK,
];
// Not listed: `wan_dit::HIGH_NOISE_NETWORK`, a second instance of the DiT's network for the
// planner (Wan2.2's high-noise expert); its files are recognised and described as the DiT's.

/// The registered network a component belongs to.
pub fn of(component: Component) -> Option<&'static Network> {
    NETWORKS.iter().copied().find(|n| n.component == component)
}

/// The registered network that files (or checkpoint components) of `arch` carry; `None` for
/// checkpoints (several networks), LoRAs and unknown files.
pub fn for_architecture(arch: Architecture) -> Option<&'static Network> {
    NETWORKS
        .iter()
        .copied()
        .find(|n| n.architectures.contains(&arch))
}

/// Every registered network's recognitions, each once, in registration order: what
/// [`crate::formats::names::detect`] looks for.
pub fn recognitions() -> Vec<&'static Recognition> {
    let mut out: Vec<&'static Recognition> = Vec::new();
    for net in NETWORKS {
        for &r in net.recognitions {
            if !out.iter().any(|o| std::ptr::eq(*o, r)) {
                out.push(r);
            }
        }
    }
    out
}

/// A [`Description`] of `config`, with `extra` fields merged into its JSON object.
pub(crate) fn description(
    summary: String,
    config: &impl serde::Serialize,
    extra: &[(&str, serde_json::Value)],
) -> Description {
    let mut config = serde_json::to_value(config).unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(map) = &mut config {
        for (k, v) in extra {
            map.insert((*k).to_string(), v.clone());
        }
    }
    Description { summary, config }
}

/// `[1,2,4]`: a list in a summary.
pub(crate) fn list<T: std::fmt::Display>(v: &[T]) -> String {
    let items: Vec<String> = v.iter().map(ToString::to_string).collect();
    format!("[{}]", items.join(","))
}

/// Each width over `base` (`None` where one is not a whole multiple).
pub(crate) fn multipliers(widths: &[usize], base: usize) -> Option<Vec<usize>> {
    widths
        .iter()
        .map(|&w| (base != 0 && w % base == 0).then(|| w / base))
        .collect()
}

/// A multiplier list for a summary, `?` when unknown.
pub(crate) fn mult_list(m: &Option<Vec<usize>>) -> String {
    match m {
        Some(m) if !m.is_empty() => list(m),
        _ => "?".to_string(),
    }
}

/// VAE tile edges offered to the planner (pixels), after "untiled".
pub const VAE_TILES: [u32; 4] = [512, 384, 256, 128];

/// The tile edges offered for a request: [`VAE_TILES`] plus the one asked for, largest first.
pub fn vae_tiles(asked: Option<u32>) -> Vec<u32> {
    let mut sizes = VAE_TILES.to_vec();
    if let Some(t) = asked.filter(|t| !sizes.contains(t)) {
        sizes.push(t);
        sizes.sort_unstable_by(|a, b| b.cmp(a));
    }
    sizes
}

/// The area one tile of `tile` px covers in an `h` x `w` image, with 1/8 overlap on each side
/// (clamped to the image).
pub fn tile_area(tile: u32, h: u64, w: u64) -> (u64, u64) {
    let t = tile as u64 + 2 * (tile as u64 / 8);
    (t.min(h), t.min(w))
}

/// Untiled and each of [`VAE_TILES`], with the compute bytes `area` gives for the pixel area
/// the tile covers.
pub fn area_tiles(area: impl Fn(u64, u64) -> u64, h: u64, w: u64) -> Vec<TileOption> {
    let mut v = vec![TileOption {
        tile: None,
        compute_bytes: area(h, w),
    }];
    for t in VAE_TILES {
        let (th, tw) = tile_area(t, h, w);
        v.push(TileOption {
            tile: Some(t),
            compute_bytes: area(th, tw),
        });
    }
    v
}

/// f32 activation bytes.
pub(crate) const F32: u64 = 4;

/// The formulas' margin for alignment and allocator fragmentation: 25 %.
pub(crate) fn margin(bytes: u64) -> u64 {
    bytes + bytes / 4
}

/// One pre-norm transformer layer's peak over `n` tokens of width `d` with an FFN of `f` and
/// `heads` materialised attention score matrices (n x n each, mul-mat attention): the formula
/// the encoders' figures use (f32 activations, one evaluation at batch 1, the tensors alive at
/// the busiest point after ggml-alloc's reuse).
pub(crate) fn transformer_layer(n: u64, d: u64, f: u64, heads: u64) -> u64 {
    F32 * (8 * n * d + 2 * n * f + 2 * heads * n * n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::plan::{Role, Stage};

    #[test]
    fn every_network_is_registered_once_in_execution_order() {
        for (i, a) in NETWORKS.iter().enumerate() {
            for b in &NETWORKS[i + 1..] {
                assert_ne!(a.component.name, b.component.name);
                assert!(
                    (a.component.stage, a.component.order) < (b.component.stage, b.component.order),
                    "{} before {}",
                    a.component.name,
                    b.component.name
                );
            }
            assert!(!a.architectures.is_empty(), "{}", a.component.name);
            assert!(!a.component.uses.is_empty(), "{}", a.component.name);
            assert_eq!(of(a.component).unwrap().label, a.label);
            for arch in a.architectures {
                assert_eq!(for_architecture(*arch).unwrap().label, a.label);
            }
        }
        let count = |r: Role, s: Stage| {
            NETWORKS
                .iter()
                .filter(|n| n.component.role == r && n.component.stage == s)
                .count()
        };
        assert_eq!(count(Role::Denoiser, Stage::Image), 1);
        assert_eq!(count(Role::Denoiser, Stage::Video), 1);
        assert_eq!(count(Role::Vae, Stage::Video), 1);
    }

    #[test]
    fn every_network_declares_how_its_files_are_recognised() {
        let all = recognitions();
        for net in NETWORKS {
            assert!(!net.recognitions.is_empty(), "{}", net.component.name);
            for arch in net.architectures {
                assert!(
                    net.recognitions.iter().any(|r| r.may_be(*arch)),
                    "{}: nothing recognises {arch}",
                    net.component.name
                );
                assert_eq!(Architecture::from_name(arch.name()), Some(*arch));
                assert_ne!(arch.description(), Architecture::UNKNOWN.description());
            }
        }
        for (i, a) in all.iter().enumerate() {
            assert!(!a.signatures.is_empty(), "{}", a.name());
            assert!(!a.architectures.is_empty(), "{}", a.name());
            for b in &all[i + 1..] {
                assert_ne!(a.name(), b.name());
                assert_ne!(a.priority, b.priority, "{} {}", a.name(), b.name());
                assert_ne!(a.listing, b.listing, "{} {}", a.name(), b.name());
            }
            // One naming per architecture, whichever recognition lists it; every architecture
            // a recognition may find is run by a network.
            for n in a.architectures {
                assert!(!n.roots.is_empty(), "{}", n.architecture);
                assert!(
                    for_architecture(n.architecture).is_some(),
                    "{}",
                    n.architecture
                );
                for b in &all {
                    for m in b.architectures {
                        if m.architecture == n.architecture {
                            assert!(std::ptr::eq(*m, *n), "{}", n.architecture);
                        }
                    }
                }
            }
        }
        for a in Architecture::ALL {
            for b in Architecture::ALL {
                assert_eq!(a == b, a.name() == b.name());
            }
        }
    }

    #[test]
    fn tiles_cover_their_overlap_clamped_to_the_image() {
        assert_eq!(tile_area(512, 1024, 1024), (640, 640));
        assert_eq!(tile_area(512, 480, 832), (480, 640));
        assert_eq!(vae_tiles(Some(320)), vec![512, 384, 320, 256, 128]);
        assert_eq!(vae_tiles(Some(256)), VAE_TILES.to_vec());
        let t = area_tiles(|h, w| h * w, 480, 832);
        assert_eq!(t[0].compute_bytes, 480 * 832);
        assert_eq!(t[1].tile, Some(512));
        assert_eq!(t[1].compute_bytes, 480 * 640);
    }
}
