//! From a normalized [`Graph`] to the nijigen command lines that do the same work.
//!
//! `nijigen workflow show FILE` prints what [`commands`] returns (with [`shell_line`]) and
//! `nijigen workflow run FILE` runs those argument lists through the normal CLI, so a workflow
//! run is the plain command, bit for bit.
//!
//! # What is translated
//!
//! Each output node (SaveImage, SaveVideo, SaveAnimatedWEBP, VHS_VideoCombine, PreviewImage) is
//! walked upstream and becomes one command. Every node on the way must be one of these patterns;
//! anything else is a [`WorkflowError`] naming the node, its class_type and why:
//!
//! - **SDXL** (`nijigen image`): CheckpointLoaderSimple (or UNETLoader / UnetLoaderGGUF(Advanced)
//!   with DualCLIPLoader and VAELoader), LoraLoader / LoraLoaderModelOnly chains,
//!   CLIPSetLastLayer -2 (SDXL's own layer), CLIPTextEncode for both prompts, EmptyLatentImage
//!   (txt2img) or LoadImage (-> ImageScale) -> VAEEncode (img2img, KSampler `denoise` ->
//!   `--strength`), one KSampler or one KSamplerAdvanced covering every step, VAEDecode or
//!   VAEDecodeTiled (`--vae-tile`), SaveImage or PreviewImage.
//! - **Wan I2V** (`nijigen video`): UNETLoader / UnetLoaderGGUF(Advanced) -> LoraLoaderModelOnly
//!   chain -> ModelSamplingSD3 (`--shift`) [-> EasyCache (`--cache easycache:T`)] -> KSampler;
//!   CLIPLoader / CLIPLoaderGGUF of type `wan` (`--t5`) -> CLIPTextEncode for both prompts;
//!   LoadImage -> WanImageToVideo `start_image` (`--image`), CLIPVisionLoader + CLIPVisionEncode
//!   of the same image (`--clip-vision`), VAELoader (`--vae`); VAEDecode -> CreateVideo ->
//!   SaveVideo, SaveAnimatedWEBP or VHS_VideoCombine (`--fps`, the extension of `-o`).
//! - **Wan2.2 A14B** (`nijigen video` with two experts): two model chains into two
//!   KSamplerAdvanced nodes, the first (high-noise expert) adding the noise and returning its
//!   leftover noise after `end_at_step` N, the second (low-noise expert) continuing from step N
//!   without adding noise: `--high-noise-model`, `--high-noise-lora`, `--high-noise-steps N`,
//!   `--high-noise-cfg`, `--high-noise-sampler`, and `--model`, `--lora`, `--cfg`, `--sampler`.
//!   Steps and scheduler must agree; the first sampler's `noise_seed` is `--seed`. A stochastic
//!   second sampler draws noise from its own `noise_seed` in ComfyUI, nijigen from `--seed`: it
//!   is refused unless the two seeds are equal.
//!
//! Refused: an SDXL base + refiner (nijigen has no refiner stage) or any other chain of
//! samplers, a KSampler `denoise` below 1 on an empty latent, an SDXL image feeding
//! WanImageToVideo (run `nijigen image`, then `nijigen video -i`), audio, and every setting that
//! no nijigen flag expresses and that changes the result (named in the message).
//!
//! # Several outputs
//!
//! Each output node gets its own command, in node id order; commands are independent, so two
//! outputs of the same frames (SaveVideo and SaveAnimatedWEBP of one VAEDecode) compute them
//! twice (same seed, same frames; a note says so). A PreviewImage is skipped when the workflow
//! saves anything. `-o FILE` ([`CommandOptions::output_override`]) needs a single command.
//!
//! # Output names
//!
//! As ComfyUI names them in its output folder ([`CommandOptions::output_dir`]):
//! `<prefix>_00001_.png` (SaveImage, PreviewImage with prefix `ComfyUI_temp`), `.mp4`
//! (SaveVideo), `.webp` (SaveAnimatedWEBP), and VHS_VideoCombine's `<prefix>_00001.<ext>`. The
//! prefix may hold subfolders (`video/ComfyUI`) and ComfyUI's variables (`%width%`, `%height%`,
//! `%year%` ... `%second%`, and the frontend's `%date:yyyy-MM-dd%`). The counter follows
//! ComfyUI's rule (`folder_paths.get_save_image_path`: one more than the highest counter of the
//! files in that folder named `<name>_<digits>...`; VHS: its own regex), unless
//! [`CommandOptions::counter_start`] gives it. Outputs of earlier commands of the same run count
//! as existing files. The folder may not exist yet: the runner creates it.
//!
//! # Arguments
//!
//! Every value the workflow gives is on the command line, so that nijigen's own defaults (and
//! Wan2.2's official settings, which fill in what is not given) never apply: prompts exactly as
//! written (SDXL square brackets escaped, see the notes), numbers in their shortest exact form
//! (`3.5`, `5.000000000000001`), model names as the workflow has them (bare names, resolved by
//! nijigen against `--comfyui` / `--models-dir`, which the runner adds), the LoadImage file
//! joined to [`CommandOptions::input_dir`].
//!
//! Sampler and scheduler names are ComfyUI's; which ones nijigen runs comes from a
//! [`Vocabulary`] ([`commands`] uses [`BuiltinVocabulary`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::error::WorkflowError;
use super::graph::{Graph, Input, Node, NodeId};

// ---------------------------------------------------------------------------------------------
// API.

/// How to translate.
#[derive(Clone, Debug, Default)]
pub struct CommandOptions {
    /// Where LoadImage names are looked up (ComfyUI's `input` folder); the joined path goes on
    /// the command line. `None`: the name as it is (relative to the working directory).
    pub input_dir: Option<PathBuf>,
    /// ComfyUI's `output` folder: outputs are named in it as ComfyUI would.
    pub output_dir: PathBuf,
    /// `-o FILE`: this path instead of ComfyUI's name (one output only).
    pub output_override: Option<PathBuf>,
    /// `--seed` instead of the workflow's.
    pub seed_override: Option<u64>,
    /// The counter of the first output file of each name instead of ComfyUI's scan of the
    /// output folder (tests; `show` without reading the folder). Later outputs of the same
    /// name count up from it.
    pub counter_start: Option<u64>,
    /// The local date and time for `%year%` ... `%second%` and `%date:...%` in filename
    /// prefixes. `None`: now, in UTC (a note says so when a prefix uses it).
    pub now: Option<DateTime>,
}

/// A calendar date and time (for filename prefixes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

/// One nijigen invocation.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkflowCommand {
    /// The arguments after `nijigen`: `["video", "--model", ...]`.
    pub args: Vec<String>,
    /// The file it writes (also in `args` after `-o`). Its folder may not exist yet.
    pub output: PathBuf,
    /// The output node it stands for.
    pub output_node: NodeId,
    /// What the user should know: settings ignored, semantics nijigen approximates.
    pub notes: Vec<String>,
}

/// The sampler and scheduler names nijigen runs (ComfyUI's names).
pub trait Vocabulary {
    /// ComfyUI sampler names nijigen has.
    fn samplers(&self) -> Vec<&'static str>;
    /// ComfyUI scheduler names nijigen has.
    fn schedulers(&self) -> Vec<&'static str>;
    /// Whether the sampler draws noise while it samples (so its seed matters on every step).
    fn is_stochastic(&self, sampler: &str) -> bool;
}

/// nijigen's samplers and schedulers as of this writing.
///
/// The sampler and scheduler names of `crate::sampling` (ComfyUI's names; `unipc_wan`, which
/// is not one of ComfyUI's, is left out).
#[derive(Clone, Copy, Debug, Default)]
pub struct BuiltinVocabulary;

impl Vocabulary for BuiltinVocabulary {
    fn samplers(&self) -> Vec<&'static str> {
        crate::sampling::SamplerKind::ALL
            .into_iter()
            .filter(|k| *k != crate::sampling::SamplerKind::UniPcWan)
            .map(crate::sampling::SamplerKind::name)
            .collect()
    }

    fn schedulers(&self) -> Vec<&'static str> {
        crate::sampling::Scheduler::ALL
            .into_iter()
            .map(crate::sampling::Scheduler::name)
            .collect()
    }

    fn is_stochastic(&self, sampler: &str) -> bool {
        sampler
            .parse::<crate::sampling::SamplerKind>()
            .is_ok_and(|k| k.is_stochastic())
    }
}

/// The nijigen commands that do what `graph` does, one per output node (see the module docs).
pub fn commands(
    graph: &Graph,
    opts: &CommandOptions,
) -> Result<Vec<WorkflowCommand>, WorkflowError> {
    commands_with(graph, opts, &BuiltinVocabulary)
}

/// [`commands`] with the sampler and scheduler names of `names`.
pub fn commands_with(
    graph: &Graph,
    opts: &CommandOptions,
    names: &dyn Vocabulary,
) -> Result<Vec<WorkflowCommand>, WorkflowError> {
    let outputs = graph.outputs();
    if outputs.is_empty() {
        return Err(WorkflowError::NoOutput { why: String::new() });
    }
    let saves = outputs.iter().any(|n| n.class_type != "PreviewImage");
    let mut namer = Namer::new(opts);
    let mut done: Vec<(WorkflowCommand, ImageKey)> = Vec::new();
    let mut skipped_previews = Vec::new();
    for out in outputs {
        if saves && out.class_type == "PreviewImage" {
            skipped_previews.push(out.id.to_string());
            continue;
        }
        let mut t = Translator::new(graph, opts, names);
        let plan = t.output(out)?;
        t.check_all_understood(out)?;
        let mut notes = std::mem::take(&mut t.notes);
        let output = match &opts.output_override {
            Some(path) => path.clone(),
            None => namer.name(&plan.sink, plan.width, plan.height, plan.batch, &mut notes)?,
        };
        let mut args = plan.args;
        args.push("-o".into());
        args.push(path_arg(&output));
        let args = join_hyphen_values(args);
        if let Some((first, _)) = done.iter().find(|(_, k)| *k == plan.images) {
            notes.push(format!(
                "computes the same {} as the command of node {} (a separate nijigen run); delete \
                 one of the two output nodes to save the time",
                if plan.video { "frames" } else { "image" },
                first.output_node
            ));
        }
        done.push((
            WorkflowCommand {
                args,
                output,
                output_node: out.id.clone(),
                notes,
            },
            plan.images,
        ));
    }
    let mut cmds: Vec<WorkflowCommand> = done.into_iter().map(|(c, _)| c).collect();
    if opts.output_override.is_some() && cmds.len() > 1 {
        let ids: Vec<String> = cmds.iter().map(|c| c.output_node.to_string()).collect();
        let n = graph.node(ids[1].as_str()).expect("an output node");
        return Err(refuse(
            n,
            format!(
                "-o names one file, but this workflow has {} outputs (nodes {}); leave out -o \
                 or delete all output nodes but one",
                cmds.len(),
                ids.join(", ")
            ),
        ));
    }
    if !skipped_previews.is_empty() {
        if let Some(first) = cmds.first_mut() {
            first.notes.push(format!(
                "PreviewImage node{} {} skipped: ComfyUI only shows {} in its window; the \
                 workflow's saved outputs are written",
                if skipped_previews.len() > 1 { "s" } else { "" },
                skipped_previews.join(", "),
                if skipped_previews.len() > 1 {
                    "them"
                } else {
                    "it"
                }
            ));
        }
    }
    Ok(cmds)
}

/// `args` quoted for a POSIX shell: `nijigen` and each argument, single-quoted where needed.
pub fn shell_line(args: &[String]) -> String {
    let mut out = String::from("nijigen");
    for a in args {
        out.push(' ');
        out.push_str(&shell_quote(a));
    }
    out
}

/// `["image", "--flag", "value", ...]` with each value that starts with `-` joined to its flag
/// (`--prompt=-x`), so that clap does not read it as a flag. Every flag here takes a value.
fn join_hyphen_values(args: Vec<String>) -> Vec<String> {
    let mut it = args.into_iter();
    let mut out: Vec<String> = it.next().into_iter().collect();
    while let Some(flag) = it.next() {
        match it.next() {
            Some(v) if v.starts_with('-') => {
                let flag = if flag == "-o" {
                    "--output".into()
                } else {
                    flag
                };
                out.push(format!("{flag}={v}"));
            }
            Some(v) => {
                out.push(flag);
                out.push(v);
            }
            None => out.push(flag),
        }
    }
    out
}

/// One word quoted for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./:,+=@%".contains(c);
    // A leading `=` or `%` means something to some shells (zsh's `=cmd`, job specs): quote it.
    let plain = !s.is_empty() && s.chars().all(safe) && !s.starts_with(['=', '%']);
    if plain {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

// ---------------------------------------------------------------------------------------------
// Errors and reading inputs.

fn refuse(n: &Node, message: impl Into<String>) -> WorkflowError {
    WorkflowError::Untranslatable {
        id: n.id.to_string(),
        class_type: n.class_type.clone(),
        message: message.into(),
    }
}

fn invalid(n: &Node, input: &str, message: impl Into<String>) -> WorkflowError {
    WorkflowError::InvalidValue {
        id: n.id.to_string(),
        class_type: n.class_type.clone(),
        input: input.to_string(),
        message: message.into(),
    }
}

fn missing(n: &Node, input: &str) -> WorkflowError {
    WorkflowError::MissingInput {
        id: n.id.to_string(),
        class_type: n.class_type.clone(),
        input: input.to_string(),
        why: String::new(),
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(57).collect::<String>())
    } else {
        s
    }
}

/// The shortest text that reads back as exactly `v` (`3.5`, `1`, `5.000000000000001`), for
/// the flags nijigen reads as 64-bit floats (`--shift`).
fn num(v: f64) -> String {
    format!("{v}")
}

/// The shortest text of `v` as the 32-bit float nijigen reads it into (`--cfg`, `--strength`,
/// LoRA weights, the cache threshold): the value nijigen uses, exactly (`1.0000000000000002`
/// becomes `1`, which is what both ComfyUI's float32 arithmetic and nijigen use).
fn num32(v: f64) -> String {
    format!("{}", v as f32)
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A node's constant input (not a link).
fn constant<'a>(g: &Graph, n: &'a Node, input: &str) -> Result<&'a Value, WorkflowError> {
    match n.input(input) {
        Some(Input::Value(v)) => Ok(v),
        Some(Input::Link { node, output }) => {
            let what = g
                .nodes
                .get(node)
                .map_or_else(String::new, |s| format!(" ({})", s.class_type));
            Err(refuse(
                n,
                format!(
                    "input `{input}` comes from output {output} of node {node}{what}, which \
                     nijigen cannot compute before running; it needs a constant there"
                ),
            ))
        }
        None => Err(missing(n, input)),
    }
}

fn get_str<'a>(g: &Graph, n: &'a Node, input: &str) -> Result<&'a str, WorkflowError> {
    let v = constant(g, n, input)?;
    v.as_str()
        .ok_or_else(|| invalid(n, input, format!("expected a string, got {}", short(v))))
}

fn get_f64(g: &Graph, n: &Node, input: &str) -> Result<f64, WorkflowError> {
    let v = constant(g, n, input)?;
    v.as_f64()
        .filter(|f| f.is_finite())
        .ok_or_else(|| invalid(n, input, format!("expected a number, got {}", short(v))))
}

fn get_i64(g: &Graph, n: &Node, input: &str) -> Result<i64, WorkflowError> {
    let v = constant(g, n, input)?;
    super::graph::value_as_i64(v)
        .ok_or_else(|| invalid(n, input, format!("expected an integer, got {}", short(v))))
}

fn get_u64(g: &Graph, n: &Node, input: &str) -> Result<u64, WorkflowError> {
    let v = constant(g, n, input)?;
    n.value_u64(input).ok_or_else(|| {
        invalid(
            n,
            input,
            format!("expected a non-negative integer, got {}", short(v)),
        )
    })
}

fn get_bool(g: &Graph, n: &Node, input: &str) -> Result<bool, WorkflowError> {
    let v = constant(g, n, input)?;
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Number(x) => Ok(x.as_f64().is_some_and(|f| f != 0.0)),
        _ => Err(invalid(
            n,
            input,
            format!("expected a boolean, got {}", short(v)),
        )),
    }
}

/// An optional constant (the node's default when absent).
fn opt_value<'a>(g: &Graph, n: &'a Node, input: &str) -> Result<Option<&'a Value>, WorkflowError> {
    match n.input(input) {
        None => Ok(None),
        Some(_) => constant(g, n, input).map(Some),
    }
}

/// `enable` / `disable` (KSamplerAdvanced).
fn get_switch(g: &Graph, n: &Node, input: &str) -> Result<bool, WorkflowError> {
    match get_str(g, n, input)? {
        "enable" => Ok(true),
        "disable" => Ok(false),
        other => Err(invalid(
            n,
            input,
            format!("\"{other}\": expected \"enable\" or \"disable\""),
        )),
    }
}

/// A positive whole number that fits the flags (u32 / usize).
fn get_count(g: &Graph, n: &Node, input: &str, min: i64) -> Result<i64, WorkflowError> {
    let v = get_i64(g, n, input)?;
    if v < min || v > i64::from(u32::MAX) {
        return Err(invalid(n, input, format!("{v} is out of range")));
    }
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// The walk.

/// What a translated output reads, to tell two outputs of the same work apart.
type ImageKey = (NodeId, usize);

/// Where the files go and how they are named.
#[derive(Clone, Debug)]
enum SinkKind {
    /// SaveImage / PreviewImage.
    Png,
    /// SaveVideo (mp4), SaveAnimatedWEBP (webp).
    Comfy(&'static str),
    /// VHS_VideoCombine: `<name>_00001.<ext>`, its own counter.
    Vhs(&'static str),
}

#[derive(Clone, Debug)]
struct Sink {
    node: NodeId,
    class_type: String,
    kind: SinkKind,
    prefix: String,
}

/// One translated output, before its file name is chosen.
struct Plan {
    args: Vec<String>,
    sink: Sink,
    /// For `%width%` / `%height%` (0 for VHS, as VHS passes none).
    width: i64,
    height: i64,
    /// Images a SaveImage writes (ComfyUI counts one file per image).
    batch: i64,
    images: ImageKey,
    video: bool,
}

struct Translator<'g, 'o> {
    g: &'g Graph,
    opts: &'o CommandOptions,
    names: &'o dyn Vocabulary,
    /// Nodes the translation understood (used).
    seen: BTreeSet<NodeId>,
    notes: Vec<String>,
}

/// The output node's reading of its images, and the decode before it.
struct Decoded<'g> {
    decode: &'g Node,
    samples: &'g Node,
    vae: (&'g Node, usize),
    tile: Option<i64>,
}

/// KSampler / KSamplerAdvanced settings.
#[derive(Clone)]
struct Sampling<'g> {
    node: &'g Node,
    advanced: bool,
    seed: u64,
    steps: i64,
    cfg: f64,
    sampler: String,
    scheduler: String,
    /// KSampler only (1 for KSamplerAdvanced).
    denoise: f64,
    /// KSamplerAdvanced only (KSampler: enable, 0, steps, disable).
    add_noise: bool,
    start: i64,
    end: i64,
    leftover: bool,
}

/// What a MODEL input is made of, loader first.
struct ModelChain<'g> {
    loader: &'g Node,
    /// (node, lora_name, strength_model), in the order ComfyUI applies them.
    loras: Vec<(&'g Node, String, f64)>,
    shift: Option<(&'g Node, f64)>,
    cache: Option<&'g Node>,
}

/// What a CLIP input is made of.
struct ClipChain<'g> {
    loader: &'g Node,
    /// (node, lora_name, strength_clip).
    loras: Vec<(&'g Node, String, f64)>,
    skip: Option<(&'g Node, i64)>,
}

impl ClipChain<'_> {
    /// Equal keys: the same text encoding.
    fn key(&self) -> String {
        let mut k = loader_key(self.loader);
        for (_, name, w) in &self.loras {
            k.push_str(&format!("|lora {name}:{w}"));
        }
        if let Some((_, s)) = self.skip {
            k.push_str(&format!("|skip {s}"));
        }
        k
    }
}

/// A loader's class and file names (two loaders of the same files load the same thing).
fn loader_key(n: &Node) -> String {
    let mut k = n.class_type.clone();
    for (name, input) in &n.inputs {
        if let Input::Value(v) = input {
            k.push_str(&format!("|{name}={v}"));
        }
    }
    k
}

const UNET_LOADERS: &[&str] = &["UNETLoader", "UnetLoaderGGUF", "UnetLoaderGGUFAdvanced"];

impl<'g, 'o> Translator<'g, 'o> {
    fn new(g: &'g Graph, opts: &'o CommandOptions, names: &'o dyn Vocabulary) -> Self {
        Translator {
            g,
            opts,
            names,
            seen: BTreeSet::new(),
            notes: Vec::new(),
        }
    }

    fn visit(&mut self, n: &Node) {
        self.seen.insert(n.id.clone());
    }

    /// The node and slot feeding `input` of `n` (a link is required).
    fn source(&self, n: &Node, input: &str) -> Result<(&'g Node, usize), WorkflowError> {
        match n.input(input) {
            Some(Input::Link { node, output }) => {
                let src = self
                    .g
                    .nodes
                    .get(node)
                    .ok_or_else(|| WorkflowError::MissingNode {
                        id: n.id.to_string(),
                        class_type: n.class_type.clone(),
                        input: input.to_string(),
                        target: node.to_string(),
                    })?;
                Ok((src, *output))
            }
            Some(Input::Value(v)) => Err(invalid(
                n,
                input,
                format!("needs a link, got the constant {}", short(v)),
            )),
            None => Err(missing(n, input)),
        }
    }

    fn opt_source(
        &self,
        n: &Node,
        input: &str,
    ) -> Result<Option<(&'g Node, usize)>, WorkflowError> {
        match n.input(input) {
            None => Ok(None),
            Some(_) => self.source(n, input).map(Some),
        }
    }

    /// Refuses a link on an input nijigen has no equivalent for.
    fn no_link(&self, n: &Node, input: &str, why: &str) -> Result<(), WorkflowError> {
        if let Some((src, _)) = self.opt_source(n, input)? {
            return Err(refuse(
                n,
                format!(
                    "input `{input}` is connected (node {} {}); {why}",
                    src.id, src.class_type
                ),
            ));
        }
        Ok(())
    }

    /// Every node the output depends on was understood by the translation.
    fn check_all_understood(&self, out: &Node) -> Result<(), WorkflowError> {
        let mut stack = vec![out];
        let mut closure: BTreeSet<&NodeId> = BTreeSet::new();
        closure.insert(&out.id);
        while let Some(n) = stack.pop() {
            for (name, input) in &n.inputs {
                if let Input::Link { node, .. } = input {
                    let Some(src) = self.g.nodes.get(node) else {
                        continue;
                    };
                    if !self.seen.contains(node) {
                        return Err(refuse(
                            src,
                            format!(
                                "feeds input `{name}` of node {} ({}), which nijigen's command \
                                 has no equivalent for",
                                n.id, n.class_type
                            ),
                        ));
                    }
                    if closure.insert(node) {
                        stack.push(src);
                    }
                }
            }
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Outputs.

    fn output(&mut self, out: &'g Node) -> Result<Plan, WorkflowError> {
        self.visit(out);
        let g = self.g;
        let (sink, images, fps) = match out.class_type.as_str() {
            "SaveImage" => {
                let prefix = get_str(g, out, "filename_prefix")?.to_string();
                (
                    self.sink(out, SinkKind::Png, prefix),
                    self.source(out, "images")?,
                    None,
                )
            }
            "PreviewImage" => {
                self.notes.push(format!(
                    "node {} (PreviewImage): ComfyUI writes previews to its temp folder; this \
                     command saves the image as ComfyUI_temp_NNNNN_.png in the output folder",
                    out.id
                ));
                let s = self.sink(out, SinkKind::Png, "ComfyUI_temp".into());
                (s, self.source(out, "images")?, None)
            }
            "SaveVideo" => self.save_video(out)?,
            "SaveAnimatedWEBP" => {
                let prefix = get_str(g, out, "filename_prefix")?.to_string();
                let fps = get_f64(g, out, "fps")?;
                let lossless = match opt_value(g, out, "lossless")? {
                    None => true,
                    Some(_) => get_bool(g, out, "lossless")?,
                };
                let quality = match opt_value(g, out, "quality")? {
                    None => 80,
                    Some(_) => get_i64(g, out, "quality")?,
                };
                let method = match opt_value(g, out, "method")? {
                    None => "default",
                    Some(_) => get_str(g, out, "method")?,
                };
                let mut differs = Vec::new();
                if lossless {
                    differs.push("lossless".to_string());
                }
                if !lossless && quality != 90 {
                    differs.push(format!("quality {quality}"));
                }
                if method != "default" {
                    differs.push(format!("method {method}"));
                }
                if !differs.is_empty() {
                    self.notes.push(format!(
                        "node {} (SaveAnimatedWEBP) asks for {}: nijigen writes lossy WebP at \
                         quality 90, method 4 (no flag for these)",
                        out.id,
                        differs.join(", ")
                    ));
                }
                self.webp_timing_note(out, fps);
                let s = self.sink(out, SinkKind::Comfy("webp"), prefix);
                (s, self.source(out, "images")?, Some(fps))
            }
            "VHS_VideoCombine" => self.vhs(out)?,
            other => {
                return Err(refuse(
                    out,
                    format!("{other} is not an output nijigen can write"),
                ))
            }
        };
        let (img_node, img_slot) = images;
        let decoded = self.decoded(out, img_node)?;
        let key: ImageKey = (img_node.id.clone(), img_slot);
        let sampler = decoded.samples;
        // Wan: the sampler's conditioning comes from WanImageToVideo.
        let wan = self
            .opt_source(sampler, "positive")?
            .is_some_and(|(n, _)| n.class_type == "WanImageToVideo");
        let video_sink = fps.is_some();
        if wan {
            if !video_sink {
                return Err(refuse(
                    out,
                    "saves the frames of a Wan video as images; nijigen writes a video (use \
                     SaveVideo, SaveAnimatedWEBP or VHS_VideoCombine; `nijigen video \
                     --frames-dir DIR` adds PNG frames)",
                ));
            }
            let fps = fps.expect("a video sink");
            let (args, w, h) = self.video(&decoded, out, fps)?;
            let vhs = matches!(sink.kind, SinkKind::Vhs(_));
            Ok(Plan {
                args,
                sink,
                width: if vhs { 0 } else { w },
                height: if vhs { 0 } else { h },
                batch: 1,
                images: key,
                video: true,
            })
        } else {
            if video_sink {
                return Err(refuse(
                    out,
                    "saves an SDXL image as a video; nijigen writes SDXL images as PNG (use \
                     SaveImage)",
                ));
            }
            let (args, w, h, batch) = self.image(&decoded)?;
            Ok(Plan {
                args,
                sink,
                width: w,
                height: h,
                batch,
                images: key,
                video: false,
            })
        }
    }

    fn sink(&self, out: &Node, kind: SinkKind, prefix: String) -> Sink {
        Sink {
            node: out.id.clone(),
            class_type: out.class_type.clone(),
            kind,
            prefix,
        }
    }

    /// SaveVideo <- CreateVideo.
    #[allow(clippy::type_complexity)]
    fn save_video(
        &mut self,
        out: &'g Node,
    ) -> Result<(Sink, (&'g Node, usize), Option<f64>), WorkflowError> {
        let g = self.g;
        let prefix = get_str(g, out, "filename_prefix")?.to_string();
        let format = match opt_value(g, out, "format")? {
            None => "auto",
            Some(_) => get_str(g, out, "format")?,
        };
        if !matches!(format, "auto" | "mp4") {
            return Err(invalid(
                out,
                "format",
                format!("\"{format}\": nijigen writes MP4 (auto, mp4), animated WebP or GIF"),
            ));
        }
        let codec = match opt_value(g, out, "codec")? {
            None => "auto",
            Some(_) => get_str(g, out, "codec")?,
        };
        if !matches!(codec, "auto" | "h264") {
            return Err(invalid(
                out,
                "codec",
                format!("\"{codec}\": nijigen encodes H.264 only (auto, h264)"),
            ));
        }
        let (cv, _) = self.source(out, "video")?;
        if cv.class_type != "CreateVideo" {
            return Err(refuse(
                cv,
                format!(
                    "feeds SaveVideo node {}; nijigen needs CreateVideo there",
                    out.id
                ),
            ));
        }
        self.visit(cv);
        self.no_link(cv, "audio", "nijigen writes no audio")?;
        let fps = get_f64(g, cv, "fps")?;
        if let Some(v) = opt_value(g, cv, "bit_depth")? {
            let ok = match v {
                Value::String(s) => matches!(s.as_str(), "auto" | "8" | "8-bit"),
                Value::Number(n) => n.as_f64() == Some(8.0),
                _ => false,
            };
            if !ok {
                return Err(invalid(
                    cv,
                    "bit_depth",
                    format!("{}: nijigen writes 8-bit video", short(v)),
                ));
            }
        }
        if let Some(v) = opt_value(g, cv, "color_space")? {
            if v.as_str() != Some("sRGB") {
                return Err(invalid(
                    cv,
                    "color_space",
                    format!("{}: nijigen writes sRGB (BT.709) video", short(v)),
                ));
            }
        }
        if let Some(v) = opt_value(g, cv, "codec")? {
            if !matches!(v.as_str(), Some("none" | "auto" | "h264")) {
                return Err(invalid(
                    cv,
                    "codec",
                    format!("{}: nijigen encodes H.264 only", short(v)),
                ));
            }
        }
        self.notes.push(format!(
            "node {} (SaveVideo): ComfyUI encodes with libx264 (PyAV defaults); nijigen with \
             OpenH264 at constant QP 20 (--qp): same frames, different bytes",
            out.id
        ));
        let s = self.sink(out, SinkKind::Comfy("mp4"), prefix);
        Ok((s, self.source(cv, "images")?, Some(fps)))
    }

    #[allow(clippy::type_complexity)]
    fn vhs(
        &mut self,
        out: &'g Node,
    ) -> Result<(Sink, (&'g Node, usize), Option<f64>), WorkflowError> {
        let g = self.g;
        let prefix = get_str(g, out, "filename_prefix")?.to_string();
        let format = get_str(g, out, "format")?;
        let ext = match format {
            "video/h264-mp4" => "mp4",
            "image/gif" => "gif",
            "image/webp" => "webp",
            other => {
                return Err(invalid(
                    out,
                    "format",
                    format!("\"{other}\": nijigen writes video/h264-mp4, image/webp and image/gif"),
                ))
            }
        };
        for input in ["audio", "meta_batch", "vae"] {
            self.no_link(out, input, "nijigen has no equivalent")?;
        }
        let fps = get_f64(g, out, "frame_rate")?;
        if get_bool(g, out, "pingpong")? {
            return Err(invalid(
                out,
                "pingpong",
                "true: nijigen cannot append the frames backwards (no flag)",
            ));
        }
        let loops = get_i64(g, out, "loop_count")?;
        if loops != 0 {
            if ext == "mp4" {
                return Err(invalid(
                    out,
                    "loop_count",
                    format!("{loops}: VHS repeats the clip in the MP4; nijigen cannot (no flag)"),
                ));
            }
            self.notes.push(format!(
                "node {} (VHS_VideoCombine) loop_count {loops}: nijigen's {ext} loops forever",
                out.id
            ));
        }
        if !get_bool(g, out, "save_output")? {
            self.notes.push(format!(
                "node {} (VHS_VideoCombine) has save_output off (ComfyUI writes to its temp \
                 folder); this command writes to the output folder",
                out.id
            ));
        }
        match ext {
            "mp4" => {
                let crf = out.value_f64("crf");
                self.notes.push(format!(
                    "node {} (VHS_VideoCombine): VHS encodes with ffmpeg libx264{}; nijigen with \
                     OpenH264 at constant QP 20 (--qp): same frames, different bytes",
                    out.id,
                    crf.map_or(String::new(), |c| format!(" crf {}", num(c)))
                ));
            }
            "webp" => {
                let lossless = out.value_bool("lossless").unwrap_or(true);
                self.notes.push(format!(
                    "node {} (VHS_VideoCombine): VHS writes {} WebP with Pillow; nijigen lossy \
                     at quality 90 (no flag)",
                    out.id,
                    if lossless { "lossless" } else { "lossy" }
                ));
            }
            _ => {
                self.notes.push(format!(
                    "node {} (VHS_VideoCombine): VHS writes the GIF with Pillow (frames of \
                     round(1000 / fps) ms); nijigen quantizes with NeuQuant and times frames in \
                     1/100 s",
                    out.id
                ));
            }
        }
        self.notes.push(format!(
            "node {} (VHS_VideoCombine): VHS also saves the first frame as a PNG beside the \
             video; nijigen does not",
            out.id
        ));
        let s = self.sink(out, SinkKind::Vhs(ext), prefix);
        Ok((s, self.source(out, "images")?, Some(fps)))
    }

    fn webp_timing_note(&mut self, out: &Node, fps: f64) {
        if fps > 0.0 && (1000.0 / fps).fract() != 0.0 {
            self.notes.push(format!(
                "node {} ({}): ComfyUI gives every frame int(1000 / fps) = {} ms; nijigen times \
                 frame i at round(i x 1000 / fps) ms",
                out.id,
                out.class_type,
                (1000.0 / fps).trunc()
            ));
        }
    }

    /// The VAEDecode(Tiled) feeding an output, and the sampler feeding it.
    fn decoded(&mut self, out: &Node, img: &'g Node) -> Result<Decoded<'g>, WorkflowError> {
        let g = self.g;
        match img.class_type.as_str() {
            "VAEDecode" | "VAEDecodeTiled" => {}
            "LoadImage" => {
                return Err(refuse(
                    out,
                    format!(
                        "saves the image of node {} (LoadImage) as it is; there is nothing for \
                         nijigen to generate",
                        img.id
                    ),
                ))
            }
            _ => {
                return Err(refuse(
                    img,
                    format!(
                        "feeds node {} ({}); nijigen needs the images of a VAEDecode there",
                        out.id, out.class_type
                    ),
                ))
            }
        }
        self.visit(img);
        let tile = if img.class_type == "VAEDecodeTiled" {
            let t = get_count(g, img, "tile_size", 1)?;
            let overlap = opt_value(g, img, "overlap")?
                .map(|_| get_i64(g, img, "overlap"))
                .transpose()?
                .unwrap_or(64);
            let ts = opt_value(g, img, "temporal_size")?
                .map(|_| get_i64(g, img, "temporal_size"))
                .transpose()?
                .unwrap_or(64);
            let to = opt_value(g, img, "temporal_overlap")?
                .map(|_| get_i64(g, img, "temporal_overlap"))
                .transpose()?
                .unwrap_or(8);
            self.notes.push(format!(
                "node {} (VAEDecodeTiled): tiles of {t} px as --vae-tile {t}, but ComfyUI \
                 blends a {overlap} px overlap (and temporal tiles of {ts} frames, {to} \
                 overlapping), nijigen an overlap of 1/8 of the tile and whole latent frames: \
                 results differ near the seams",
                img.id
            ));
            Some(t)
        } else {
            None
        };
        let (samples, sslot) = self.source(img, "samples")?;
        if !matches!(samples.class_type.as_str(), "KSampler" | "KSamplerAdvanced") || sslot != 0 {
            return Err(refuse(
                samples,
                format!(
                    "feeds node {} ({}) input `samples`; nijigen needs the latent of a KSampler \
                     or KSamplerAdvanced there",
                    img.id, img.class_type
                ),
            ));
        }
        let vae = self.source(img, "vae")?;
        Ok(Decoded {
            decode: img,
            samples,
            vae,
            tile,
        })
    }

    // -----------------------------------------------------------------------------------------
    // Samplers and chains.

    fn sampling(&mut self, n: &'g Node) -> Result<Sampling<'g>, WorkflowError> {
        let g = self.g;
        self.visit(n);
        let advanced = n.class_type == "KSamplerAdvanced";
        let seed_input = if advanced { "noise_seed" } else { "seed" };
        let seed = get_u64(g, n, seed_input)?;
        let steps = get_count(g, n, "steps", 1)?;
        let cfg = get_f64(g, n, "cfg")?;
        let sampler = get_str(g, n, "sampler_name")?.to_string();
        let scheduler = get_str(g, n, "scheduler")?.to_string();
        let samplers = self.names.samplers();
        if !samplers.contains(&sampler.as_str()) {
            let hint = match sampler.strip_suffix("_gpu") {
                Some(base) if samplers.contains(&base) => format!(
                    " ({sampler} draws its noise on the GPU; {base} is the same sampler with \
                     CPU noise)"
                ),
                _ => String::new(),
            };
            return Err(invalid(
                n,
                "sampler_name",
                format!(
                    "\"{sampler}\" is not a nijigen sampler{hint}; supported: {}",
                    samplers.join(", ")
                ),
            ));
        }
        let schedulers = self.names.schedulers();
        if !schedulers.contains(&scheduler.as_str()) {
            return Err(invalid(
                n,
                "scheduler",
                format!(
                    "\"{scheduler}\" is not a nijigen scheduler; supported: {}",
                    schedulers.join(", ")
                ),
            ));
        }
        let (denoise, add_noise, start, end, leftover) = if advanced {
            (
                1.0,
                get_switch(g, n, "add_noise")?,
                get_i64(g, n, "start_at_step")?,
                get_i64(g, n, "end_at_step")?,
                get_switch(g, n, "return_with_leftover_noise")?,
            )
        } else {
            (get_f64(g, n, "denoise")?, true, 0, steps, false)
        };
        Ok(Sampling {
            node: n,
            advanced,
            seed,
            steps,
            cfg,
            sampler,
            scheduler,
            denoise,
            add_noise,
            start,
            end,
            leftover,
        })
    }

    /// A KSamplerAdvanced that runs every step from noise, as a KSampler at denoise 1.
    fn require_full_advanced(&self, s: &Sampling) -> Result<(), WorkflowError> {
        if !s.advanced {
            return Ok(());
        }
        if !s.add_noise {
            return Err(invalid(
                s.node,
                "add_noise",
                "\"disable\" with no sampler before it: nijigen always starts from the seed's \
                 noise",
            ));
        }
        if s.start != 0 {
            return Err(invalid(
                s.node,
                "start_at_step",
                format!(
                    "{}: nijigen samples every step of the schedule (ComfyUI's start_at_step > 0 \
                     is not img2img's denoise; no flag)",
                    s.start
                ),
            ));
        }
        if s.end < s.steps {
            return Err(invalid(
                s.node,
                "end_at_step",
                format!(
                    "{} of {} steps: nijigen samples every step (no flag to stop early)",
                    s.end, s.steps
                ),
            ));
        }
        Ok(())
    }

    fn seed_of(&mut self, s: &Sampling) -> u64 {
        match self.opts.seed_override {
            Some(seed) => seed,
            None => {
                self.notes.push(format!(
                    "seed {} from node {} ({}); ComfyUI's control_after_generate does not apply \
                     here",
                    s.seed, s.node.id, s.node.class_type
                ));
                s.seed
            }
        }
    }

    /// Walks a MODEL input back to its loader.
    fn model_chain(&mut self, from: &'g Node) -> Result<ModelChain<'g>, WorkflowError> {
        let g = self.g;
        let (mut n, mut slot) = self.source(from, "model")?;
        let mut loras = Vec::new();
        let mut shift = None;
        let mut cache = None;
        loop {
            self.visit(n);
            match n.class_type.as_str() {
                "ModelSamplingSD3" => {
                    if shift.is_some() {
                        return Err(refuse(
                            n,
                            "a second ModelSamplingSD3 on the same model; keep one (nijigen has \
                             one --shift)",
                        ));
                    }
                    shift = Some((n, get_f64(g, n, "shift")?));
                }
                "EasyCache" => {
                    if cache.is_some() {
                        return Err(refuse(n, "a second EasyCache on the same model"));
                    }
                    cache = Some(n);
                }
                "LoraLoaderModelOnly" | "LoraLoader" => {
                    if n.class_type == "LoraLoader" && slot != 0 {
                        return Err(refuse(n, "its CLIP output is used as a model"));
                    }
                    let name = get_str(g, n, "lora_name")?.to_string();
                    loras.push((n, name, get_f64(g, n, "strength_model")?));
                }
                "CheckpointLoaderSimple"
                | "UNETLoader"
                | "UnetLoaderGGUF"
                | "UnetLoaderGGUFAdvanced" => {
                    if slot != 0 {
                        return Err(refuse(n, format!("output {slot} is used as a model")));
                    }
                    loras.reverse();
                    return Ok(ModelChain {
                        loader: n,
                        loras,
                        shift,
                        cache,
                    });
                }
                _ => {
                    return Err(refuse(
                        n,
                        format!(
                            "is on the model path of node {} ({}); nijigen knows only model \
                             loaders, LoRA loaders, ModelSamplingSD3 and EasyCache there",
                            from.id, from.class_type
                        ),
                    ))
                }
            }
            (n, slot) = self.source(n, "model")?;
        }
    }

    /// Walks a CLIP input back to its loader.
    fn clip_chain(&mut self, from: &'g Node) -> Result<ClipChain<'g>, WorkflowError> {
        let g = self.g;
        let (mut n, mut slot) = self.source(from, "clip")?;
        let mut loras = Vec::new();
        let mut skip = None;
        loop {
            self.visit(n);
            match n.class_type.as_str() {
                "LoraLoader" => {
                    if slot != 1 {
                        return Err(refuse(n, "its MODEL output is used as a CLIP"));
                    }
                    let name = get_str(g, n, "lora_name")?.to_string();
                    loras.push((n, name, get_f64(g, n, "strength_clip")?));
                }
                "CLIPSetLastLayer" => {
                    if skip.is_some() {
                        return Err(refuse(n, "a second CLIPSetLastLayer on the same CLIP"));
                    }
                    skip = Some((n, get_i64(g, n, "stop_at_clip_layer")?));
                }
                "CheckpointLoaderSimple" | "CLIPLoader" | "CLIPLoaderGGUF" | "DualCLIPLoader" => {
                    let want = usize::from(n.class_type == "CheckpointLoaderSimple");
                    if slot != want {
                        return Err(refuse(n, format!("output {slot} is used as a CLIP")));
                    }
                    loras.reverse();
                    return Ok(ClipChain {
                        loader: n,
                        loras,
                        skip,
                    });
                }
                _ => {
                    return Err(refuse(
                        n,
                        format!(
                            "is on the CLIP path of node {} ({}); nijigen knows only CLIP \
                             loaders, LoraLoader and CLIPSetLastLayer there",
                            from.id, from.class_type
                        ),
                    ))
                }
            }
            (n, slot) = self.source(n, "clip")?;
        }
    }

    /// The CLIPTextEncode feeding `input` of `n`: its text and CLIP chain.
    fn prompt(
        &mut self,
        n: &'g Node,
        input: &str,
    ) -> Result<(&'g Node, String, ClipChain<'g>), WorkflowError> {
        let (enc, _) = self.source(n, input)?;
        if enc.class_type != "CLIPTextEncode" {
            return Err(refuse(
                enc,
                format!(
                    "feeds input `{input}` of node {} ({}); nijigen needs a CLIPTextEncode there",
                    n.id, n.class_type
                ),
            ));
        }
        self.visit(enc);
        let text = get_str(self.g, enc, "text")?.to_string();
        let chain = self.clip_chain(enc)?;
        Ok((enc, text, chain))
    }

    /// Both prompts of `n` (positive, negative), encoded the same way.
    #[allow(clippy::type_complexity)]
    fn prompts(&mut self, n: &'g Node) -> Result<(String, String, ClipChain<'g>), WorkflowError> {
        let (_, pos, chain) = self.prompt(n, "positive")?;
        let (neg_enc, neg, neg_chain) = self.prompt(n, "negative")?;
        if chain.key() != neg_chain.key() {
            return Err(refuse(
                neg_enc,
                format!(
                    "encodes the negative prompt with other text encoders, LoRAs or CLIP layer \
                     than the positive prompt's (node {} {}); nijigen encodes both the same way",
                    chain.loader.id, chain.loader.class_type
                ),
            ));
        }
        Ok((pos, neg, chain))
    }

    /// The LoadImage file feeding `input` of `n`, as a path.
    fn load_image(&mut self, li: &'g Node) -> Result<PathBuf, WorkflowError> {
        self.visit(li);
        let name = get_str(self.g, li, "image")?;
        let (name, base) = if let Some(s) = name.strip_suffix(" [output]") {
            (s, Some(self.opts.output_dir.clone()))
        } else if let Some(s) = name.strip_suffix(" [input]") {
            (s, self.opts.input_dir.clone())
        } else if name.ends_with(" [temp]") {
            return Err(invalid(
                li,
                "image",
                format!("\"{name}\" is in ComfyUI's temp folder, which nijigen does not know"),
            ));
        } else {
            (name, self.opts.input_dir.clone())
        };
        if name.is_empty() {
            return Err(invalid(li, "image", "no image chosen"));
        }
        Ok(match base {
            Some(dir) => dir.join(name),
            None => PathBuf::from(name),
        })
    }

    /// A VAE input's source: (key, VAELoader file name if any, the node).
    fn vae_source(
        &mut self,
        (n, slot): (&'g Node, usize),
    ) -> Result<(String, Option<String>), WorkflowError> {
        self.visit(n);
        match n.class_type.as_str() {
            "VAELoader" => {
                let name = get_str(self.g, n, "vae_name")?.to_string();
                Ok((format!("vae:{name}"), Some(name)))
            }
            "CheckpointLoaderSimple" if slot == 2 => {
                let name = get_str(self.g, n, "ckpt_name")?;
                Ok((format!("ckpt:{name}"), None))
            }
            _ => Err(refuse(
                n,
                "is used as a VAE; nijigen needs a VAELoader or a checkpoint's VAE there",
            )),
        }
    }

    fn model_notes(&mut self, loader: &Node) -> Result<(), WorkflowError> {
        let g = self.g;
        match loader.class_type.as_str() {
            "UNETLoader" => {
                let dtype = match opt_value(g, loader, "weight_dtype")? {
                    None => "default",
                    Some(_) => get_str(g, loader, "weight_dtype")?,
                };
                if dtype != "default" {
                    self.notes.push(format!(
                        "node {} (UNETLoader) weight_dtype {dtype}: ComfyUI rounds the weights \
                         to it; nijigen computes from the file's own precision (no flag)",
                        loader.id
                    ));
                }
            }
            "UnetLoaderGGUFAdvanced" => {
                let mut odd = Vec::new();
                for (input, default) in [("dequant_dtype", "default"), ("patch_dtype", "default")] {
                    if let Some(v) = opt_value(g, loader, input)? {
                        if v.as_str() != Some(default) {
                            odd.push(format!("{input} {}", short(v)));
                        }
                    }
                }
                if !odd.is_empty() {
                    self.notes.push(format!(
                        "node {} (UnetLoaderGGUFAdvanced) {}: nijigen dequantizes its own way \
                         (no flag)",
                        loader.id,
                        odd.join(", ")
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // SDXL.

    /// `nijigen image` for an SDXL sampler; returns (args, width, height, batch).
    fn image(&mut self, d: &Decoded<'g>) -> Result<(Vec<String>, i64, i64, i64), WorkflowError> {
        let g = self.g;
        let s = self.sampling(d.samples)?;
        let (latent, lslot) = self.source(s.node, "latent_image")?;
        self.visit(latent);
        if matches!(latent.class_type.as_str(), "KSampler" | "KSamplerAdvanced") {
            return Err(self.chained_refusal(&s, latent));
        }
        // A KSamplerAdvanced must run every step from the seed's noise (KSampler at denoise 1).
        self.require_full_advanced(&s)?;
        if lslot != 0 {
            return Err(refuse(
                latent,
                format!("its output {lslot} is used as a latent"),
            ));
        }
        let model = self.model_chain(s.node)?;
        if let Some((n, _)) = model.shift {
            return Err(refuse(
                n,
                "ModelSamplingSD3 on an SDXL model: nijigen samples SDXL with its own \
                 (discrete) schedule",
            ));
        }
        if let Some(n) = model.cache {
            return Err(refuse(
                n,
                "EasyCache on an SDXL model: nijigen image has no step cache",
            ));
        }
        self.model_notes(model.loader)?;
        let (mut pos, mut neg, clip) = self.prompts(s.node)?;
        if let Some((n, layer)) = clip.skip {
            if layer != -2 {
                return Err(invalid(
                    n,
                    "stop_at_clip_layer",
                    format!(
                        "{layer}: nijigen's SDXL text encoders always use the penultimate layer \
                         (-2, SDXL's own); it has no clip-skip flag"
                    ),
                ));
            }
        }

        let mut args: Vec<String> = vec!["image".into(), "--model".into()];
        // Model, text encoders and VAE: a checkpoint's own, or files given beside it.
        let loader = model.loader;
        let ckpt = match loader.class_type.as_str() {
            "CheckpointLoaderSimple" => {
                let name = get_str(g, loader, "ckpt_name")?.to_string();
                args.push(name.clone());
                Some(name)
            }
            _ => {
                args.push(get_str(g, loader, "unet_name")?.to_string());
                None
            }
        };
        match clip.loader.class_type.as_str() {
            "DualCLIPLoader" => {
                let (l, big_g) = self.dual_clip(clip.loader)?;
                args.extend(["--clip-l".into(), l, "--clip-g".into(), big_g]);
            }
            "CheckpointLoaderSimple"
                if ckpt.as_deref() == Some(get_str(g, clip.loader, "ckpt_name")?) => {}
            _ => {
                return Err(refuse(
                    clip.loader,
                    format!(
                        "gives the text encoders for the model of node {} ({}); nijigen takes \
                         them from the model's own checkpoint or from a DualCLIPLoader (CLIP-L \
                         and bigG files)",
                        loader.id, loader.class_type
                    ),
                ));
            }
        }
        let vae = self.vae_source(d.vae)?;
        match (&vae.1, &ckpt) {
            (Some(name), _) => {
                args.push("--vae".into());
                args.push(name.clone());
            }
            (None, Some(c)) if vae.0 == format!("ckpt:{c}") => {}
            (None, _) => {
                return Err(refuse(
                    d.vae.0,
                    format!(
                        "gives the VAE of another checkpoint than the model's (node {} {}); \
                         use a VAELoader",
                        loader.id, loader.class_type
                    ),
                ))
            }
        }
        // LoRAs.
        for spec in self.sdxl_loras(&model, &clip)? {
            args.push("--lora".into());
            args.push(spec);
        }
        // Prompts: nijigen reads [text] as a weight (A1111), ComfyUI as text.
        for (which, text) in [("positive", &mut pos), ("negative", &mut neg)] {
            if text.contains(['[', ']']) {
                *text = text.replace('[', r"\[").replace(']', r"\]");
                self.notes.push(format!(
                    "the {which} prompt's square brackets are escaped (\\[ \\]): nijigen reads \
                     [text] as a lower weight, ComfyUI as plain text"
                ));
            }
            if text.contains("embedding:") {
                self.notes.push(format!(
                    "the {which} prompt names a textual-inversion embedding (embedding:...); \
                     nijigen has none and reads it as plain text"
                ));
            }
        }
        args.extend(["--prompt".into(), pos, "--negative-prompt".into(), neg]);

        // Size and start.
        let (width, height, batch) = match latent.class_type.as_str() {
            "EmptyLatentImage" => {
                if s.denoise <= 0.9999 {
                    return Err(invalid(
                        s.node,
                        "denoise",
                        format!(
                            "{} on an empty latent: nijigen's txt2img always denoises fully (no \
                             flag)",
                            num(s.denoise)
                        ),
                    ));
                }
                let w = get_count(g, latent, "width", 8)?;
                let h = get_count(g, latent, "height", 8)?;
                let b = get_count(g, latent, "batch_size", 1)?;
                let (w8, h8) = (w / 8 * 8, h / 8 * 8);
                if (w8, h8) != (w, h) {
                    self.notes.push(format!(
                        "node {} (EmptyLatentImage) {w}x{h}: ComfyUI's latent is {w8}x{h8} \
                         pixels, which the command asks for",
                        latent.id
                    ));
                }
                args.extend([
                    "--width".into(),
                    w8.to_string(),
                    "--height".into(),
                    h8.to_string(),
                ]);
                if b > 1 {
                    args.extend(["--batch".into(), b.to_string()]);
                    self.notes.push(format!(
                        "batch of {b}: ComfyUI names the files NAME_00001_.png, NAME_00002_.png, \
                         ...; nijigen writes -o's name with _01, _02, ... before .png"
                    ));
                }
                (w8, h8, b)
            }
            "VAEEncode" => {
                let enc_vae = self.vae_source(self.source(latent, "vae")?)?;
                if enc_vae.0 != vae.0 {
                    return Err(refuse(
                        latent,
                        "encodes with another VAE than the one that decodes; nijigen uses one \
                         VAE for both",
                    ));
                }
                let (w, h, path) = self.init_image(latent)?;
                args.extend([
                    "--width".into(),
                    w.to_string(),
                    "--height".into(),
                    h.to_string(),
                    "--init-image".into(),
                    path_arg(&path),
                ]);
                if s.denoise <= 0.0 {
                    return Err(invalid(
                        s.node,
                        "denoise",
                        format!("{}: nothing would be sampled", num(s.denoise)),
                    ));
                }
                let strength = if s.denoise > 0.9999 { 1.0 } else { s.denoise };
                let as_f32 = f64::from(strength as f32);
                if strength < 1.0 {
                    let comfy = (s.steps as f64 / strength) as i64;
                    let ours = (s.steps as f64 / as_f32) as i64;
                    if comfy != ours {
                        self.notes.push(format!(
                            "denoise {}: ComfyUI schedules int({} / {}) = {comfy} steps, nijigen \
                             reads --strength as a 32-bit float and schedules {ours}",
                            num(strength),
                            s.steps,
                            num(strength)
                        ));
                    }
                }
                args.extend(["--strength".into(), num32(strength)]);
                (w, h, 1)
            }
            _ => {
                return Err(refuse(
                    latent,
                    format!(
                        "feeds node {} input `latent_image`; nijigen needs EmptyLatentImage or \
                         VAEEncode there",
                        s.node.id
                    ),
                ))
            }
        };
        let seed = self.seed_of(&s);
        args.extend([
            "--steps".into(),
            s.steps.to_string(),
            "--cfg".into(),
            num32(s.cfg),
            "--sampler".into(),
            s.sampler.clone(),
            "--scheduler".into(),
            s.scheduler.clone(),
            "--seed".into(),
            seed.to_string(),
        ]);
        if let Some(t) = d.tile {
            args.extend(["--vae-tile".into(), t.to_string()]);
        }
        self.visit(d.decode);
        Ok((args, width, height, batch))
    }

    /// The error for a sampler that continues another sampler's latent (SDXL refiner).
    fn chained_refusal(&mut self, s: &Sampling<'g>, first: &'g Node) -> WorkflowError {
        let base = self.model_chain(first).ok();
        let this = self.model_chain(s.node).ok();
        let refiner = match (base, this) {
            (Some(a), Some(b)) => loader_key(a.loader) != loader_key(b.loader),
            _ => false,
        };
        if refiner {
            refuse(
                s.node,
                format!(
                    "continues the latent of node {} ({}) with another model: an SDXL base + \
                     refiner workflow; nijigen has no refiner stage (delete the refiner sampler \
                     and decode the base sampler's latent)",
                    first.id, first.class_type
                ),
            )
        } else {
            refuse(
                s.node,
                format!(
                    "continues the latent of node {} ({}); nijigen image runs one sampler",
                    first.id, first.class_type
                ),
            )
        }
    }

    /// DualCLIPLoader (type sdxl): which file is CLIP-L and which bigG.
    fn dual_clip(&mut self, n: &'g Node) -> Result<(String, String), WorkflowError> {
        let g = self.g;
        let a = get_str(g, n, "clip_name1")?.to_string();
        let b = get_str(g, n, "clip_name2")?.to_string();
        let looks_g = |s: &str| {
            let l = s.to_ascii_lowercase();
            l.contains("clip_g")
                || l.contains("clip-g")
                || l.contains("bigg")
                || l.contains("vit-g")
        };
        // ComfyUI tells the two apart by their tensors; names are nijigen's only hint, and it
        // checks each file against its flag when it runs.
        if looks_g(&a) && !looks_g(&b) {
            Ok((b, a))
        } else {
            Ok((a, b))
        }
    }

    /// `--lora NAME:W` for each LoRA, checking that nijigen's one weight fits.
    fn sdxl_loras(
        &mut self,
        model: &ModelChain<'g>,
        clip: &ClipChain<'g>,
    ) -> Result<Vec<String>, WorkflowError> {
        // node id -> (node, name, model weight, clip weight)
        let mut order: Vec<NodeId> = Vec::new();
        #[allow(clippy::type_complexity)]
        let mut by: BTreeMap<NodeId, (&'g Node, String, Option<f64>, Option<f64>)> =
            BTreeMap::new();
        for (n, name, w) in &model.loras {
            order.push(n.id.clone());
            by.insert(n.id.clone(), (n, name.clone(), Some(*w), None));
        }
        for (n, name, w) in &clip.loras {
            match by.get_mut(&n.id) {
                Some(e) => e.3 = Some(*w),
                None => {
                    order.push(n.id.clone());
                    by.insert(n.id.clone(), (n, name.clone(), None, Some(*w)));
                }
            }
        }
        let mut out = Vec::new();
        for id in order {
            let (n, name, m, c) = by[&id].clone();
            let (m, c) = (m.unwrap_or(0.0), c.unwrap_or(0.0));
            if m == 0.0 && c == 0.0 {
                self.notes.push(format!(
                    "node {} ({}) {name}: strength 0, left out (ComfyUI skips it too)",
                    n.id, n.class_type
                ));
                continue;
            }
            if m == c {
                out.push(format!("{name}:{}", num32(m)));
                continue;
            }
            if c == 0.0 {
                self.notes.push(format!(
                    "node {} ({}) {name}: ComfyUI applies it to the UNet only; nijigen's --lora \
                     also applies the file's text-encoder weights, if it has any, at {} (no \
                     per-part weight flag)",
                    n.id,
                    n.class_type,
                    num(m)
                ));
                out.push(format!("{name}:{}", num32(m)));
                continue;
            }
            let what = if m == 0.0 {
                "to the text encoders only".to_string()
            } else {
                format!(
                    "with strength_model {} and strength_clip {}",
                    num(m),
                    num(c)
                )
            };
            return Err(refuse(
                n,
                format!(
                    "applies {name} {what}; nijigen's --lora FILE:W applies one weight to the \
                     UNet and the text encoders (set strength_clip equal to strength_model; it \
                     only matters if the LoRA has text-encoder weights)"
                ),
            ));
        }
        Ok(out)
    }

    /// img2img: the size and file of the image a VAEEncode encodes.
    fn init_image(&mut self, enc: &'g Node) -> Result<(i64, i64, PathBuf), WorkflowError> {
        let g = self.g;
        let (px, slot) = self.source(enc, "pixels")?;
        self.visit(px);
        match px.class_type.as_str() {
            "LoadImage" if slot == 0 => {
                let path = self.load_image(px)?;
                let (w, h) = image_size(&path).map_err(|e| {
                    refuse(
                        px,
                        format!(
                            "cannot read the size of {} ({e}); img2img needs it for --width and \
                             --height",
                            path.display()
                        ),
                    )
                })?;
                let (w, h) = (i64::from(w), i64::from(h));
                let (w8, h8) = (w / 8 * 8, h / 8 * 8);
                if w8 == 0 || h8 == 0 {
                    return Err(refuse(px, format!("{w}x{h} is too small for the VAE")));
                }
                if !crop_is_exact(w, h, w8, h8) {
                    self.notes.push(format!(
                        "the {w}x{h} init image: ComfyUI's VAEEncode crops it to {w8}x{h8}; \
                         nijigen crops it to that aspect and resizes (Lanczos), one pixel off \
                         in size"
                    ));
                }
                Ok((w8, h8, path))
            }
            "ImageScale" => {
                let (li, lslot) = self.source(px, "image")?;
                if li.class_type != "LoadImage" || lslot != 0 {
                    return Err(refuse(
                        li,
                        format!(
                            "feeds ImageScale node {}; nijigen needs a LoadImage there",
                            px.id
                        ),
                    ));
                }
                let path = self.load_image(li)?;
                let w = get_i64(g, px, "width")?;
                let h = get_i64(g, px, "height")?;
                if w <= 0 || h <= 0 || w % 8 != 0 || h % 8 != 0 {
                    return Err(refuse(
                        px,
                        format!(
                            "scales to {w}x{h}; nijigen needs a size in multiples of 8 (0 keeps \
                             the aspect in ComfyUI, which nijigen cannot know before loading)"
                        ),
                    ));
                }
                let method = get_str(g, px, "upscale_method")?;
                let crop = get_str(g, px, "crop")?;
                self.notes.push(format!(
                    "node {} (ImageScale) resizes with {method}, crop {crop}; nijigen's \
                     --init-image crops to the aspect at the center and resizes with Lanczos3",
                    px.id
                ));
                Ok((w, h, path))
            }
            _ => Err(refuse(
                px,
                format!(
                    "feeds VAEEncode node {}; nijigen needs LoadImage (or LoadImage -> \
                     ImageScale) there",
                    enc.id
                ),
            )),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Wan.

    /// `nijigen video`; returns (args, width, height).
    fn video(
        &mut self,
        d: &Decoded<'g>,
        out: &Node,
        fps: f64,
    ) -> Result<(Vec<String>, i64, i64), WorkflowError> {
        let g = self.g;
        let last = self.sampling(d.samples)?;
        let (lat, lslot) = self.source(last.node, "latent_image")?;
        // One sampler, or two KSamplerAdvanced (Wan2.2's experts).
        let (high, low) = if matches!(lat.class_type.as_str(), "KSampler" | "KSamplerAdvanced") {
            if lslot != 0 {
                return Err(refuse(
                    lat,
                    format!("its output {lslot} is used as a latent"),
                ));
            }
            let first = self.sampling(lat)?;
            (Some(first), last)
        } else {
            (None, last)
        };
        let head = high.as_ref().unwrap_or(&low);
        let (w2v, wslot) = self.source(head.node, "latent_image")?;
        if w2v.class_type != "WanImageToVideo" || wslot != 2 {
            let what = if matches!(w2v.class_type.as_str(), "KSampler" | "KSamplerAdvanced") {
                "a third sampler: nijigen runs one sampler, or two with Wan2.2's experts"
                    .to_string()
            } else {
                format!(
                    "feeds input `latent_image` of node {}; nijigen needs the latent of \
                     WanImageToVideo there",
                    head.node.id
                )
            };
            return Err(refuse(w2v, what));
        }
        self.visit(w2v);
        for s in [Some(&low), high.as_ref()].into_iter().flatten() {
            for (input, want) in [("positive", 0), ("negative", 1)] {
                let (src, slot) = self.source(s.node, input)?;
                if src.id != w2v.id || slot != want {
                    return Err(refuse(
                        src,
                        format!(
                            "feeds input `{input}` of node {} ({}); nijigen needs output {want} \
                             of WanImageToVideo node {} there",
                            s.node.id, s.node.class_type, w2v.id
                        ),
                    ));
                }
            }
        }

        // Prompts and umT5.
        let (pos, neg, clip) = self.prompts(w2v)?;
        if !matches!(
            clip.loader.class_type.as_str(),
            "CLIPLoader" | "CLIPLoaderGGUF"
        ) || get_str(g, clip.loader, "type")? != "wan"
        {
            return Err(refuse(
                clip.loader,
                "gives the text encoder of a Wan model; nijigen needs a CLIPLoader or \
                 CLIPLoaderGGUF of type wan (umT5) there",
            ));
        }
        if let Some((n, _)) = clip.skip {
            return Err(refuse(
                n,
                "CLIPSetLastLayer on umT5: nijigen has no such setting",
            ));
        }
        for (n, name, w) in &clip.loras {
            if *w != 0.0 {
                return Err(refuse(
                    n,
                    format!(
                        "applies {name} to umT5 (strength_clip {}); nijigen applies Wan LoRAs to \
                         the DiT only (use LoraLoaderModelOnly)",
                        num(*w)
                    ),
                ));
            }
        }
        let t5 = get_str(g, clip.loader, "clip_name")?.to_string();
        for (which, text) in [("positive", &pos), ("negative", &neg)] {
            if text.contains(['(', ')']) {
                self.notes.push(format!(
                    "the {which} prompt has parentheses: ComfyUI reads (text:w) as weights for \
                     umT5 too, nijigen's video prompt is plain text (no flag)"
                ));
            }
        }

        // WanImageToVideo.
        let width = get_count(g, w2v, "width", 16)?;
        let height = get_count(g, w2v, "height", 16)?;
        if width % 16 != 0 || height % 16 != 0 {
            return Err(refuse(
                w2v,
                format!("{width}x{height}: nijigen needs multiples of 16"),
            ));
        }
        let length = get_count(g, w2v, "length", 1)?;
        if (length - 1) % 4 != 0 {
            return Err(invalid(
                w2v,
                "length",
                format!(
                    "{length} frames: nijigen needs 4n + 1 (e.g. {} or {})",
                    (length - 1) / 4 * 4 + 1,
                    (length - 1) / 4 * 4 + 5
                ),
            ));
        }
        let batch = get_i64(g, w2v, "batch_size")?;
        if batch != 1 {
            return Err(invalid(
                w2v,
                "batch_size",
                format!("{batch}: nijigen video makes one clip per run"),
            ));
        }
        let Some((img, islot)) = self.opt_source(w2v, "start_image")? else {
            return Err(refuse(
                w2v,
                "has no start_image: nijigen runs Wan image-to-video from a LoadImage first frame",
            ));
        };
        if img.class_type != "LoadImage" || islot != 0 {
            let why = if matches!(img.class_type.as_str(), "VAEDecode" | "VAEDecodeTiled") {
                "an image generated in the same workflow: run `nijigen image` (or `nijigen \
                 i2v`), then `nijigen video -i` on the PNG"
            } else {
                "nijigen needs a LoadImage there (it resizes the image itself)"
            };
            return Err(refuse(
                img,
                format!(
                    "feeds input `start_image` of node {} (WanImageToVideo); {why}",
                    w2v.id
                ),
            ));
        }
        let image = self.load_image(img)?;
        self.notes.push(format!(
            "the first frame: ComfyUI fits it to {width}x{height} with a center crop and \
             bilinear resize (floats), nijigen with a center crop and Lanczos3 (8-bit) (no flag)"
        ));
        if image
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"))
        {
            self.notes.push(
                "the first frame is a JPEG: ComfyUI decodes it with Pillow (libjpeg), nijigen \
                 with the image crate; pixels may differ by a level"
                    .into(),
            );
        }
        let clip_vision = match self.opt_source(w2v, "clip_vision_output")? {
            None => None,
            Some((cve, _)) => Some(self.clip_vision(cve, img, w2v)?),
        };
        if clip_vision.is_none() && high.is_none() {
            self.notes.push(format!(
                "node {} (WanImageToVideo) has no clip_vision_output: right for Wan2.2 (no CLIP \
                 branch); a Wan2.1 I2V model runs without CLIP features in ComfyUI, which nijigen \
                 does not do (it asks for --clip-vision)",
                w2v.id
            ));
        }
        let w2v_vae = self.vae_source(self.source(w2v, "vae")?)?;
        let dec_vae = self.vae_source(d.vae)?;
        let vae = match (&w2v_vae.1, &dec_vae.1) {
            (Some(a), Some(b)) if a == b => a.clone(),
            _ => {
                return Err(refuse(
                    d.decode,
                    format!(
                        "decodes with another VAE than WanImageToVideo node {} encodes with, or \
                         not with a VAELoader; nijigen uses one Wan VAE file for both",
                        w2v.id
                    ),
                ))
            }
        };

        // Models.
        let low_chain = self.model_chain(low.node)?;
        let high_chain = match &high {
            Some(h) => Some(self.model_chain(h.node)?),
            None => None,
        };
        let mut shift = None;
        let mut cache_key = None;
        for (i, chain) in [Some(&low_chain), high_chain.as_ref()]
            .into_iter()
            .flatten()
            .enumerate()
        {
            if !UNET_LOADERS.contains(&chain.loader.class_type.as_str()) {
                return Err(refuse(
                    chain.loader,
                    "loads the Wan model; nijigen needs UNETLoader, UnetLoaderGGUF or \
                     UnetLoaderGGUFAdvanced (the diffusion model file) there",
                ));
            }
            self.model_notes(chain.loader)?;
            let s = chain.shift.map(|(_, v)| v);
            if i > 0 && s != shift {
                let n = chain.shift.map_or(chain.loader, |(n, _)| n);
                return Err(refuse(
                    n,
                    format!(
                        "gives the high-noise expert shift {} but the low-noise expert has {}; \
                         nijigen has one --shift",
                        s.map_or("none".into(), num),
                        shift.map_or("none".into(), num)
                    ),
                ));
            }
            shift = s;
            let key = match chain.cache {
                None => None,
                Some(n) => Some(self.easycache(n)?),
            };
            if i > 0 && key != cache_key {
                let n = chain.cache.unwrap_or(chain.loader);
                return Err(refuse(
                    n,
                    "the two experts have different EasyCache settings; nijigen has one --cache",
                ));
            }
            cache_key = key;
            for (n, name, w) in &chain.loras {
                if *w == 0.0 {
                    self.notes.push(format!(
                        "node {} ({}) {name}: strength 0, left out (ComfyUI skips it too)",
                        n.id, n.class_type
                    ));
                }
            }
        }
        let shift = match shift {
            Some(v) => v,
            None => {
                self.notes.push(
                    "no ModelSamplingSD3: ComfyUI samples Wan models at shift 8, which the \
                     command asks for"
                        .into(),
                );
                8.0
            }
        };

        // Samplers.
        let steps = low.steps;
        let mut expert_args: Vec<String> = Vec::new();
        match &high {
            None => {
                if low.advanced {
                    self.require_full_advanced(&low)?;
                } else if low.denoise <= 0.9999 {
                    return Err(invalid(
                        low.node,
                        "denoise",
                        format!(
                            "{}: nijigen video always denoises fully (no flag)",
                            num(low.denoise)
                        ),
                    ));
                }
            }
            Some(h) => {
                let n = self.expert_switch(h, &low)?;
                expert_args.extend([
                    "--high-noise-steps".into(),
                    n.to_string(),
                    "--high-noise-cfg".into(),
                    num32(h.cfg),
                    "--high-noise-sampler".into(),
                    h.sampler.clone(),
                ]);
            }
        }
        let seed_src = high.as_ref().unwrap_or(&low).clone();
        let seed = self.seed_of(&seed_src);
        if let Some(h) = &high {
            if self.names.is_stochastic(&low.sampler) {
                if self.opts.seed_override.is_none() && low.seed != h.seed {
                    return Err(invalid(
                        low.node,
                        "noise_seed",
                        format!(
                            "{} differs from the first sampler's {} and {} draws noise on every \
                             step: ComfyUI seeds it with its own noise_seed, nijigen with --seed \
                             (set both to the same seed, or use a sampler without noise)",
                            low.seed, h.seed, low.sampler
                        ),
                    ));
                }
            } else if low.seed != h.seed && self.opts.seed_override.is_none() {
                self.notes.push(format!(
                    "node {} noise_seed {} is unused: it adds no noise and {} draws none",
                    low.node.id, low.seed, low.sampler
                ));
            }
        }

        // Arguments.
        let mut args: Vec<String> = vec!["video".into(), "--model".into()];
        args.push(get_str(g, low_chain.loader, "unet_name")?.to_string());
        if let Some(hc) = &high_chain {
            args.push("--high-noise-model".into());
            args.push(get_str(g, hc.loader, "unet_name")?.to_string());
        }
        args.extend(["--t5".into(), t5]);
        if let Some(cv) = clip_vision {
            args.extend(["--clip-vision".into(), cv]);
        }
        args.extend(["--vae".into(), vae]);
        for (flag, chain) in [
            ("--lora", Some(&low_chain)),
            ("--high-noise-lora", high_chain.as_ref()),
        ] {
            let Some(chain) = chain else { continue };
            for (_, name, w) in &chain.loras {
                if *w != 0.0 {
                    args.push(flag.into());
                    args.push(format!("{name}:{}", num32(*w)));
                }
            }
        }
        if !fps.is_finite() || fps.fract() != 0.0 || !(1.0..=240.0).contains(&fps) {
            return Err(refuse(
                out,
                format!(
                    "{} fps: nijigen's --fps takes a whole number from 1 to 240",
                    num(fps)
                ),
            ));
        }
        args.extend([
            "--image".into(),
            path_arg(&image),
            "--prompt".into(),
            pos,
            "--negative-prompt".into(),
            neg,
            "--width".into(),
            width.to_string(),
            "--height".into(),
            height.to_string(),
            "--frames".into(),
            length.to_string(),
            "--fps".into(),
            num(fps),
            "--steps".into(),
            steps.to_string(),
            "--cfg".into(),
            num32(low.cfg),
            "--shift".into(),
            num(shift),
            "--sampler".into(),
            low.sampler.clone(),
            "--scheduler".into(),
            low.scheduler.clone(),
            "--seed".into(),
            seed.to_string(),
        ]);
        args.extend(expert_args);
        args.extend(["--cache".into(), cache_key.unwrap_or_else(|| "off".into())]);
        if let Some(t) = d.tile {
            if t % 16 != 0 {
                return Err(invalid(
                    d.decode,
                    "tile_size",
                    format!("{t}: nijigen's Wan VAE tiles are multiples of 16"),
                ));
            }
            args.extend(["--vae-tile".into(), t.to_string()]);
        }
        self.visit(d.decode);
        Ok((args, width, height))
    }

    /// CLIPVisionEncode of the first frame: the CLIP vision file.
    fn clip_vision(
        &mut self,
        cve: &'g Node,
        start: &'g Node,
        w2v: &Node,
    ) -> Result<String, WorkflowError> {
        let g = self.g;
        if cve.class_type != "CLIPVisionEncode" {
            return Err(refuse(
                cve,
                format!(
                    "feeds input `clip_vision_output` of node {}; nijigen needs CLIPVisionEncode \
                     there",
                    w2v.id
                ),
            ));
        }
        self.visit(cve);
        let (img, slot) = self.source(cve, "image")?;
        let same = img.id == start.id
            || (img.class_type == "LoadImage"
                && slot == 0
                && img.value_str("image").is_some()
                && img.value_str("image") == start.value_str("image"));
        if !same {
            return Err(refuse(
                cve,
                format!(
                    "encodes another image (node {} {}) than the first frame (node {}); nijigen \
                     encodes the first frame",
                    img.id, img.class_type, start.id
                ),
            ));
        }
        self.visit(img);
        let crop = match opt_value(g, cve, "crop")? {
            None => "center",
            Some(_) => get_str(g, cve, "crop")?,
        };
        let comfy = match crop {
            "none" => "squashes the whole loaded image to 224x224",
            "center" => "scales the loaded image's short side to 224 and crops the center",
            other => {
                return Err(invalid(
                    cve,
                    "crop",
                    format!("\"{other}\": expected center or none"),
                ))
            }
        };
        self.notes.push(format!(
            "CLIP vision (node {}, crop {crop}): ComfyUI {comfy} (antialiased bicubic, rounded \
             to 8 bits); nijigen squashes the first frame after fitting it to the video size \
             (bicubic, no antialias, Wan's official preprocessing) (no flag)",
            cve.id
        ));
        let (loader, _) = self.source(cve, "clip_vision")?;
        if loader.class_type != "CLIPVisionLoader" {
            return Err(refuse(
                loader,
                format!(
                    "feeds input `clip_vision` of node {}; nijigen needs a CLIPVisionLoader there",
                    cve.id
                ),
            ));
        }
        self.visit(loader);
        Ok(get_str(g, loader, "clip_name")?.to_string())
    }

    /// EasyCache as `--cache`: `easycache:T` or `off`.
    fn easycache(&mut self, n: &'g Node) -> Result<String, WorkflowError> {
        let g = self.g;
        let t = get_f64(g, n, "reuse_threshold")?;
        let start = get_f64(g, n, "start_percent")?;
        let end = get_f64(g, n, "end_percent")?;
        if t <= 0.0 || start >= end {
            self.notes.push(format!(
                "node {} (EasyCache) never skips a step (reuse_threshold {}, start_percent {}, \
                 end_percent {}): --cache off",
                n.id,
                num(t),
                num(start),
                num(end)
            ));
            return Ok("off".into());
        }
        if start != 0.15 || end != 0.95 {
            let mut odd = Vec::new();
            if start != 0.15 {
                odd.push(format!("start_percent {}", num(start)));
            }
            if end != 0.95 {
                odd.push(format!("end_percent {}", num(end)));
            }
            return Err(refuse(
                n,
                format!(
                    "{}: nijigen's easycache always computes the first 20 % of the steps and the \
                     last one, with no setting for the window (use start_percent 0.15 and \
                     end_percent 0.95, or delete the node)",
                    odd.join(", ")
                ),
            ));
        }
        self.notes.push(format!(
            "node {} (EasyCache): --cache easycache:{} follows EasyCache's published script \
             (first 20 % of steps and the last computed, change measured from the previous \
             step); ComfyUI's node (a sigma window of 15-95 %, change from the last computed \
             step, no forced last step) skips other steps, so the frames differ",
            n.id,
            num32(t)
        ));
        Ok(format!("easycache:{}", num32(t)))
    }

    /// The two KSamplerAdvanced of Wan2.2's experts; returns `--high-noise-steps`.
    fn expert_switch(
        &mut self,
        high: &Sampling<'g>,
        low: &Sampling<'g>,
    ) -> Result<i64, WorkflowError> {
        if !high.advanced {
            return Err(refuse(
                high.node,
                format!(
                    "is followed by node {} ({}); nijigen's two-expert run needs two \
                     KSamplerAdvanced nodes (the first returning its leftover noise)",
                    low.node.id, low.node.class_type
                ),
            ));
        }
        if !low.advanced {
            return Err(refuse(
                low.node,
                format!(
                    "continues the latent of node {}; nijigen's two-expert run needs a \
                     KSamplerAdvanced here (add_noise disable)",
                    high.node.id
                ),
            ));
        }
        if !high.add_noise {
            return Err(invalid(
                high.node,
                "add_noise",
                "\"disable\": nijigen starts from the seed's noise",
            ));
        }
        if high.start != 0 {
            return Err(invalid(
                high.node,
                "start_at_step",
                format!("{}: nijigen starts at step 0", high.start),
            ));
        }
        if !high.leftover {
            return Err(invalid(
                high.node,
                "return_with_leftover_noise",
                "\"disable\": the high-noise expert's last step would denoise fully before the \
                 low-noise expert starts; nijigen hands over the noisy latent (use enable)",
            ));
        }
        if high.steps != low.steps {
            return Err(invalid(
                low.node,
                "steps",
                format!(
                    "{} but node {} has {}: nijigen's experts share one schedule (--steps)",
                    low.steps, high.node.id, high.steps
                ),
            ));
        }
        if high.scheduler != low.scheduler {
            return Err(invalid(
                low.node,
                "scheduler",
                format!(
                    "{} but node {} has {}: nijigen's experts share one --scheduler",
                    low.scheduler, high.node.id, high.scheduler
                ),
            ));
        }
        let steps = low.steps;
        let n = high.end.min(steps);
        if n <= 0 {
            return Err(invalid(
                high.node,
                "end_at_step",
                format!("{}: the high-noise expert would sample nothing", high.end),
            ));
        }
        if low.add_noise {
            return Err(invalid(
                low.node,
                "add_noise",
                "\"enable\": fresh noise on the high-noise expert's latent; nijigen continues \
                 it without (use disable)",
            ));
        }
        if low.start.min(steps) != n {
            return Err(invalid(
                low.node,
                "start_at_step",
                format!(
                    "{} but the first sampler (node {}) stops at {n}: nijigen's low-noise expert \
                     continues where the high-noise one stops",
                    low.start, high.node.id
                ),
            ));
        }
        if low.end < steps {
            return Err(invalid(
                low.node,
                "end_at_step",
                format!("{} of {steps} steps: nijigen samples to the end", low.end),
            ));
        }
        Ok(n)
    }
}

/// Whether nijigen's fit (center crop to the aspect of `w8`x`h8`, then resize) of a `w`x`h`
/// image is exactly ComfyUI's VAEEncode crop to multiples of 8 (`(d % 8) / 2` off each start).
fn crop_is_exact(w: i64, h: i64, w8: i64, h8: i64) -> bool {
    // nijigen's center_crop_to_aspect: compare w*ah with h*aw.
    let (cw, ch) = if w * h8 > h * w8 {
        ((h * w8 / h8).max(1), h)
    } else {
        (w, (w * h8 / w8).max(1))
    };
    let (x0, y0) = ((w - cw) / 2, (h - ch) / 2);
    (cw, ch) == (w8, h8) && x0 == (w % 8) / 2 && y0 == (h % 8) / 2
}

// ---------------------------------------------------------------------------------------------
// Output names.

struct Namer<'o> {
    opts: &'o CommandOptions,
    /// Files earlier commands of this run will write, per folder.
    planned: BTreeMap<PathBuf, Vec<String>>,
}

impl<'o> Namer<'o> {
    fn new(opts: &'o CommandOptions) -> Self {
        Namer {
            opts,
            planned: BTreeMap::new(),
        }
    }

    /// The file names in `dir`: on disk (unless the counter is given) and planned.
    fn listing(&self, dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        if self.opts.counter_start.is_none() {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    names.push(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        if let Some(p) = self.planned.get(dir) {
            names.extend(p.iter().cloned());
        }
        names
    }

    fn name(
        &mut self,
        sink: &Sink,
        width: i64,
        height: i64,
        batch: i64,
        notes: &mut Vec<String>,
    ) -> Result<PathBuf, WorkflowError> {
        let bad = |message: String| WorkflowError::InvalidValue {
            id: sink.node.to_string(),
            class_type: sink.class_type.clone(),
            input: "filename_prefix".into(),
            message,
        };
        let now = match self.opts.now {
            Some(t) => t,
            None => utc_now(),
        };
        let (prefix, used_time) = expand_prefix(&sink.prefix, width, height, now).map_err(bad)?;
        if used_time && self.opts.now.is_none() {
            notes.push(format!(
                "the filename prefix \"{}\" uses the date: taken in UTC",
                sink.prefix
            ));
        }
        let norm = normpath(&prefix);
        if norm.starts_with('/') || norm == ".." || norm.starts_with("../") {
            return Err(bad(format!(
                "\"{prefix}\" leaves the output folder (ComfyUI refuses it too)"
            )));
        }
        let (sub, file) = match norm.rsplit_once('/') {
            Some((d, f)) => (d.to_string(), f.to_string()),
            None => (String::new(), norm.clone()),
        };
        let folder = if sub.is_empty() {
            self.opts.output_dir.clone()
        } else {
            self.opts.output_dir.join(&sub)
        };
        let listing = self.listing(&folder);
        let given = self.opts.counter_start.map(|c| c as i64);
        let (names, path) = match sink.kind {
            SinkKind::Png | SinkKind::Comfy(_) => {
                let ext = match sink.kind {
                    SinkKind::Comfy(e) => e,
                    _ => "png",
                };
                let prefix_len = prefix.rsplit('/').next().unwrap_or("").chars().count();
                let scanned = comfy_counter(&listing, prefix_len, &file);
                let counter = match given {
                    Some(c) => c.max(scanned.unwrap_or(0) + 1),
                    None => scanned.map_or(1, |m| m + 1),
                };
                let count = if matches!(sink.kind, SinkKind::Png) {
                    batch.max(1)
                } else {
                    1
                };
                let names: Vec<String> = (0..count)
                    .map(|i| {
                        let f = file.replace("%batch_num%", &i.to_string());
                        format!("{f}_{:05}_.{ext}", counter + i)
                    })
                    .collect();
                let path = folder.join(&names[0]);
                (names, path)
            }
            SinkKind::Vhs(ext) => {
                let scanned = vhs_counter(&listing, &file);
                let counter = match given {
                    Some(c) => c.max(scanned + 1),
                    None => scanned + 1,
                };
                let video = format!("{file}_{counter:05}.{ext}");
                let png = format!("{file}_{counter:05}.png");
                let path = folder.join(&video);
                (vec![png, video], path)
            }
        };
        self.planned.entry(folder).or_default().extend(names);
        Ok(path)
    }
}

/// ComfyUI's `get_save_image_path` counter scan: the highest counter among files named
/// `<file>_<digits>...` (`prefix_len`: the length of the prefix's last component), or `None`.
fn comfy_counter(listing: &[String], prefix_len: usize, file: &str) -> Option<i64> {
    let norm = |s: &str| {
        if cfg!(windows) {
            s.to_lowercase()
        } else {
            s.to_string()
        }
    };
    let want = norm(file);
    let mut best: Option<i64> = None;
    for name in listing {
        let chars: Vec<char> = name.chars().collect();
        let head: String = chars.iter().take(prefix_len + 1).collect();
        let rest: String = chars.iter().skip(prefix_len + 1).collect();
        let Some(stem) = head.strip_suffix('_') else {
            continue;
        };
        if norm(stem) != want {
            continue;
        }
        let digits = python_int(rest.split('_').next().unwrap_or("")).unwrap_or(0);
        best = Some(best.map_or(digits, |b: i64| b.max(digits)));
    }
    best
}

/// VHS_VideoCombine's counter scan: the highest N among files matching
/// `<file>_(\d+)\D*\..+` (case-insensitive), 0 if none.
fn vhs_counter(listing: &[String], file: &str) -> i64 {
    let want: Vec<char> = file.chars().flat_map(char::to_lowercase).collect();
    let mut best = 0;
    for name in listing {
        let chars: Vec<char> = name.chars().flat_map(char::to_lowercase).collect();
        if chars.len() <= want.len() || chars[..want.len()] != want[..] {
            continue;
        }
        let rest = &chars[want.len()..];
        if rest.first() != Some(&'_') {
            continue;
        }
        let rest = &rest[1..];
        let nd = rest.iter().take_while(|c| c.is_ascii_digit()).count();
        if nd == 0 {
            continue;
        }
        let tail = &rest[nd..];
        // \D*\..+ : non-digits up to a '.', then at least one character.
        let Some(dot) = tail.iter().position(|c| *c == '.') else {
            continue;
        };
        if tail[..dot].iter().any(char::is_ascii_digit) || dot + 1 >= tail.len() {
            continue;
        }
        let digits: String = rest[..nd].iter().collect();
        if let Ok(v) = digits.parse::<i64>() {
            best = best.max(v);
        }
    }
    best
}

/// Python's `int(s)` for what a file name holds (ASCII digits, sign, surrounding spaces).
fn python_int(s: &str) -> Option<i64> {
    let t = s.trim();
    let (neg, digits) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: i64 = digits.parse().ok()?;
    Some(if neg { -v } else { v })
}

/// Python's `posixpath.normpath`.
fn normpath(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let lead = p.chars().take_while(|c| *c == '/').count();
    let root = match lead {
        0 => "",
        2 => "//",
        _ => "/",
    };
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        if c.is_empty() || c == "." {
            continue;
        }
        if c == ".." {
            if parts.last().is_some_and(|l| *l != "..") {
                parts.pop();
                continue;
            }
            if !root.is_empty() {
                continue;
            }
        }
        parts.push(c);
    }
    let s = format!("{root}{}", parts.join("/"));
    if s.is_empty() {
        ".".into()
    } else {
        s
    }
}

/// ComfyUI's prefix variables: the frontend's `%date:FORMAT%` (and a refusal of its
/// `%Node.widget%`, which needs the UI), then the backend's `%width%`, `%height%`, `%year%`,
/// `%month%`, `%day%`, `%hour%`, `%minute%`, `%second%`. Returns the prefix and whether the
/// date was used.
fn expand_prefix(
    prefix: &str,
    width: i64,
    height: i64,
    now: DateTime,
) -> Result<(String, bool), String> {
    if !prefix.contains('%') {
        return Ok((prefix.to_string(), false));
    }
    let mut used = false;
    // Frontend: %...% groups.
    let mut out = String::new();
    let mut rest = prefix;
    while let Some(a) = rest.find('%') {
        let after = &rest[a + 1..];
        let Some(b) = after.find('%') else {
            break;
        };
        let inner = &after[..b];
        out.push_str(&rest[..a]);
        if let Some(fmt) = inner.strip_prefix("date:") {
            out.push_str(&format_date(fmt, now));
            used = true;
            rest = &after[b + 1..];
        } else if inner.split('.').count() == 2 && !inner.is_empty() {
            return Err(format!(
                "\"%{inner}%\" refers to a node's widget, which only ComfyUI's frontend fills \
                 in; put the value in the prefix"
            ));
        } else {
            // Left as is (the backend may know it); keep the closing % for the next group.
            out.push('%');
            out.push_str(inner);
            rest = &after[b..];
        }
    }
    out.push_str(rest);
    // Backend (folder_paths.compute_vars).
    let mut s = out
        .replace("%width%", &width.to_string())
        .replace("%height%", &height.to_string());
    for (var, value) in [
        ("%year%", now.year.to_string()),
        ("%month%", format!("{:02}", now.month)),
        ("%day%", format!("{:02}", now.day)),
        ("%hour%", format!("{:02}", now.hour)),
        ("%minute%", format!("{:02}", now.minute)),
        ("%second%", format!("{:02}", now.second)),
    ] {
        if s.contains(var) {
            used = true;
            s = s.replace(var, &value);
        }
    }
    Ok((s, used))
}

/// The frontend's `formatDate`: yyyy, yy, MM, M, dd, d, hh, h, mm, m, ss, s.
fn format_date(fmt: &str, t: DateTime) -> String {
    let tokens: [(&str, String); 12] = [
        ("yyyy", format!("{:04}", t.year)),
        ("yy", format!("{:02}", t.year.rem_euclid(100))),
        ("MM", format!("{:02}", t.month)),
        ("M", t.month.to_string()),
        ("dd", format!("{:02}", t.day)),
        ("d", t.day.to_string()),
        ("hh", format!("{:02}", t.hour)),
        ("h", t.hour.to_string()),
        ("mm", format!("{:02}", t.minute)),
        ("m", t.minute.to_string()),
        ("ss", format!("{:02}", t.second)),
        ("s", t.second.to_string()),
    ];
    let mut out = String::new();
    let mut rest = fmt;
    'outer: while !rest.is_empty() {
        for (tok, val) in &tokens {
            if let Some(r) = rest.strip_prefix(tok) {
                out.push_str(val);
                rest = r;
                continue 'outer;
            }
        }
        let c = rest.chars().next().expect("not empty");
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// The current time in UTC.
fn utc_now() -> DateTime {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    datetime_from_unix(secs)
}

/// A Unix time as a UTC calendar date (Howard Hinnant's civil_from_days).
fn datetime_from_unix(secs: i64) -> DateTime {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    DateTime {
        year,
        month,
        day,
        hour: (sod / 3600) as u32,
        minute: (sod % 3600 / 60) as u32,
        second: (sod % 60) as u32,
    }
}

// ---------------------------------------------------------------------------------------------
// Image sizes (img2img needs the init image's size for --width and --height).
//
/// Width and height from an image file's header.
pub fn image_size(path: &Path) -> Result<(u32, u32), String> {
    image::image_dimensions(path).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting() {
        let args: Vec<String> = [
            "image",
            "--prompt",
            "a cat's \"hat\"",
            "",
            "-o",
            "out/a_00001_.png",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            shell_line(&args),
            r#"nijigen image --prompt 'a cat'\''s "hat"' '' -o out/a_00001_.png"#
        );
        assert_eq!(shell_quote("easycache:0.2"), "easycache:0.2");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("色"), "'色'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
        assert_eq!(shell_quote("line\nbreak"), "'line\nbreak'");
    }

    #[test]
    fn numbers_round_trip() {
        assert_eq!(num(3.5), "3.5");
        assert_eq!(num(6.0), "6");
        assert_eq!(num(5.000000000000001), "5.000000000000001");
        assert_eq!(num(0.1), "0.1");
        for v in [3.5, 0.1, 1e-7, 123456.789, 5.000000000000001] {
            assert_eq!(num(v).parse::<f64>().unwrap(), v);
        }
    }

    #[test]
    fn python_normpath() {
        assert_eq!(normpath("video/ComfyUI"), "video/ComfyUI");
        assert_eq!(normpath("a//b/./c/"), "a/b/c");
        assert_eq!(normpath("a/../../b"), "../b");
        assert_eq!(normpath("/x/../y"), "/y");
        assert_eq!(normpath(""), ".");
    }

    #[test]
    fn comfy_counter_rule() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Extension does not matter; other prefixes and non-numbers do not count.
        let files = l(&[
            "ComfyUI_00001_.png",
            "ComfyUI_00007_.mp4",
            "ComfyUI_x_.png",
            "ComfyUIx_00009_.png",
            "Other_00010_.png",
            "ComfyUI_00003.png",
        ]);
        assert_eq!(comfy_counter(&files, 7, "ComfyUI"), Some(7));
        assert_eq!(comfy_counter(&l(&[]), 7, "ComfyUI"), None);
        // A name that only parses as 0 still counts as a match.
        assert_eq!(
            comfy_counter(&l(&["ComfyUI_abc_.png"]), 7, "ComfyUI"),
            Some(0)
        );
        assert_eq!(python_int(" 12 "), Some(12));
        assert_eq!(python_int("-3"), Some(-3));
        assert_eq!(python_int("1.png"), None);
    }

    #[test]
    fn vhs_counter_rule() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let files = l(&[
            "wan_00004.mp4",
            "WAN_00006-audio.mp4",
            "wan_00009",
            "wan_00012.",
            "wan_x00020.png",
            "wan_00002_.png",
        ]);
        assert_eq!(vhs_counter(&files, "wan"), 6);
        assert_eq!(vhs_counter(&l(&[]), "wan"), 0);
    }

    #[test]
    fn prefix_variables() {
        let t = DateTime {
            year: 2025,
            month: 3,
            day: 7,
            hour: 9,
            minute: 5,
            second: 1,
        };
        assert_eq!(
            expand_prefix("v/%date:yyyy-MM-dd%/x_%width%x%height%", 832, 480, t).unwrap(),
            ("v/2025-03-07/x_832x480".to_string(), true)
        );
        assert_eq!(
            expand_prefix("%year%%month%%day%-%hour%%minute%%second%", 0, 0, t).unwrap(),
            ("20250307-090501".to_string(), true)
        );
        assert_eq!(
            expand_prefix("50%_done", 0, 0, t).unwrap(),
            ("50%_done".to_string(), false)
        );
        assert!(expand_prefix("%KSampler.seed%", 0, 0, t).is_err());
        assert_eq!(
            datetime_from_unix(1_700_000_000),
            DateTime {
                year: 2023,
                month: 11,
                day: 14,
                hour: 22,
                minute: 13,
                second: 20
            }
        );
    }

    #[test]
    fn init_image_crop_exactness() {
        // One side off: nijigen's aspect crop is ComfyUI's crop.
        assert!(crop_is_exact(1000, 750, 1000, 744));
        assert!(crop_is_exact(1024, 1024, 1024, 1024));
        // Both sides off: nijigen resizes.
        assert!(!crop_is_exact(1001, 750, 1000, 744));
    }
}
