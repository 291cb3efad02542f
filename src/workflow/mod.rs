//! Reading ComfyUI workflows into a normalized, validated, executable node graph.
//!
//! This is the parsing layer behind `nijigen workflow run FILE` and `nijigen workflow show FILE`.
//! It runs no model: it reads the file, turns it into a [`Graph`] of ComfyUI nodes with every
//! input either a constant or a link to another node's output, and refuses, before any work is
//! done, anything nijigen cannot run.
//!
//! # Inputs
//!
//! The file's kind is found from its content, never its extension:
//! - **UI JSON**: what ComfyUI's "Save"/"Export" writes (`{"nodes": [...], "links": [...], ...}`),
//!   subgraphs included. See the `ui` module for how it is flattened.
//! - **API JSON**: what "Export (API)" writes (`{"3": {"class_type": ..., "inputs": ...}}`).
//!   Also accepted: `{"prompt": <api>}` and `{"workflow": <ui>}` wrappers, as `POST /prompt`
//!   bodies and some tools have them.
//! - **PNG**, **WebP**, **MP4/MOV** written by ComfyUI: they embed both the API `prompt` and the
//!   UI `workflow` (see the `container` module for where each format keeps them).
//!
//! When a file has both, the graph is built from the API **`prompt`**: it is exactly what ran
//! (widgets, links, bypasses and subgraphs already resolved by the frontend that queued it). The
//! UI `workflow` is kept in [`Workflow::ui`] and [`Workflow::ui_graph`] normalizes it on demand,
//! so `workflow show` can mention both. If the `prompt` is not valid JSON the `workflow` is used.
//!
//! # Normalization
//!
//! UI files are flattened the way the frontend queues them: widget values mapped to input names
//! (frontend-only widgets such as `control_after_generate` skipped), links overriding stale
//! widget values, reroutes and frontend PrimitiveNodes resolved away, bypassed nodes (mode 4)
//! replaced by a pass-through of their matching input, muted nodes (mode 2) left out with what
//! depends on them, notes and groups ignored, subgraphs expanded inline with ids `instance:inner`.
//! Then, for both formats, constant primitives, switches and math expressions are folded, nodes
//! no output needs are dropped, and the result is validated. See `normalize` for the exact steps.
//!
//! # Supported nodes
//!
//! [`supported_node_types`] lists them. Any other node that would run is an error naming the
//! node, even when nothing seems to use it: nijigen cannot tell whether an unknown node is itself
//! an output. Mute or delete such nodes in ComfyUI first.

mod api;
pub mod command;
mod container;
mod error;
pub mod expr;
mod graph;
mod nodes;
mod normalize;
mod ui;

use std::path::Path;

use serde_json::Value;

pub use command::{
    commands, commands_with, shell_line, BuiltinVocabulary, CommandOptions, DateTime, Vocabulary,
    WorkflowCommand,
};
pub use error::WorkflowError;
pub use expr::{MathResult, Number};
pub use graph::{value_as_i64, Graph, Input, Node, NodeId};
pub use nodes::supported_node_types;

/// Which of ComfyUI's two JSON shapes the graph was built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The UI (LiteGraph canvas) format, `{"nodes": [...], "links": [...]}`.
    Ui,
    /// The API (prompt) format, `{"id": {"class_type", "inputs"}}`.
    Api,
}

/// The kind of file the workflow came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Container {
    Json,
    Png,
    Webp,
    Mp4,
}

/// A loaded workflow.
#[derive(Clone, Debug)]
pub struct Workflow {
    /// The normalized, validated graph.
    pub graph: Graph,
    /// What [`Workflow::graph`] was built from.
    pub source: Format,
    /// The file kind.
    pub container: Container,
    /// The UI-format JSON, when the file has one.
    pub ui: Option<Value>,
    /// The API-format JSON, when the file has one.
    pub api: Option<Value>,
    /// Things worth telling the user that are not errors (nodes skipped because of a muted
    /// node, promoted widget values that did not line up, ...).
    pub notes: Vec<String>,
}

/// Normalizes a UI-format workflow.
pub fn graph_from_ui(ui: &Value) -> Result<(Graph, Vec<String>), WorkflowError> {
    normalize::finish(ui::flatten(ui)?)
}

/// Normalizes an API-format prompt.
pub fn graph_from_api(api: &Value) -> Result<(Graph, Vec<String>), WorkflowError> {
    normalize::finish(api::parse(api)?)
}

fn is_ui(v: &Value) -> bool {
    v.get("nodes").is_some_and(Value::is_array)
}

/// Reads a workflow file of any supported kind.
pub fn load(path: impl AsRef<Path>) -> Result<Workflow, WorkflowError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| WorkflowError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Workflow::from_bytes(&bytes)
}

impl Workflow {
    /// Reads a workflow from a file's bytes, recognizing JSON, PNG, WebP and MP4 by content.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, WorkflowError> {
        match container::sniff(bytes) {
            Some(container::Kind::Json) => {
                let text = std::str::from_utf8(bytes).map_err(|e| WorkflowError::Json {
                    what: "the workflow file".into(),
                    message: format!("not UTF-8: {e}"),
                })?;
                Self::from_json(text)
            }
            Some(container::Kind::Png) => Self::from_png_bytes(bytes),
            Some(container::Kind::Webp) => Self::from_webp_bytes(bytes),
            Some(container::Kind::Mp4) => Self::from_mp4_bytes(bytes),
            None => Err(WorkflowError::UnknownFormat(
                "expected a JSON workflow or a PNG, WebP or MP4 saved by ComfyUI".into(),
            )),
        }
    }

    /// Reads a UI- or API-format workflow from JSON text.
    pub fn from_json(text: &str) -> Result<Self, WorkflowError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let v: Value =
            serde_json::from_str(text).map_err(|e| WorkflowError::json("the workflow file", e))?;
        Self::from_value(v)
    }

    /// Reads a UI- or API-format workflow from parsed JSON.
    pub fn from_value(v: Value) -> Result<Self, WorkflowError> {
        if is_ui(&v) {
            return Self::build(None, Some(v), Container::Json);
        }
        if api::is_api(&v) {
            return Self::build(Some(v), None, Container::Json);
        }
        // Wrappers: {"prompt": api, "workflow": ui} or a /prompt body with extra_data.
        let prompt = v.get("prompt").filter(|p| api::is_api(p)).cloned();
        let workflow = v
            .get("workflow")
            .or_else(|| v.pointer("/extra_data/extra_pnginfo/workflow"))
            .filter(|w| is_ui(w))
            .cloned();
        if prompt.is_some() || workflow.is_some() {
            return Self::build(prompt, workflow, Container::Json);
        }
        Err(WorkflowError::Malformed(
            "this JSON is neither a ComfyUI UI workflow (no `nodes` list) nor an API prompt \
             (no nodes with a `class_type`)"
                .into(),
        ))
    }

    /// Reads the workflow a PNG saved by ComfyUI carries.
    pub fn from_png_bytes(bytes: &[u8]) -> Result<Self, WorkflowError> {
        Self::from_embedded(container::png(bytes)?, Container::Png)
    }

    /// Reads the workflow a WebP saved by ComfyUI carries.
    pub fn from_webp_bytes(bytes: &[u8]) -> Result<Self, WorkflowError> {
        Self::from_embedded(container::webp(bytes)?, Container::Webp)
    }

    /// Reads the workflow an MP4/MOV saved by ComfyUI carries.
    pub fn from_mp4_bytes(bytes: &[u8]) -> Result<Self, WorkflowError> {
        Self::from_embedded(container::mp4(bytes)?, Container::Mp4)
    }

    fn from_embedded(e: container::Embedded, kind: Container) -> Result<Self, WorkflowError> {
        let parse = |what: &str, text: Option<String>| -> Result<Option<Value>, WorkflowError> {
            match text {
                None => Ok(None),
                Some(t) => serde_json::from_str::<Value>(&t)
                    .map(Some)
                    .map_err(|err| WorkflowError::json(what, err)),
            }
        };
        let prompt = parse("the embedded `prompt`", e.prompt);
        let workflow = parse("the embedded `workflow`", e.workflow);
        let (prompt, workflow) = match (prompt, workflow) {
            (Ok(p), Ok(w)) => (p, w),
            // One damaged: use the other.
            (Ok(p @ Some(_)), Err(_)) => (p, None),
            (Err(_), Ok(w @ Some(_))) => (None, w),
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        let prompt = prompt.filter(api::is_api);
        let workflow = workflow.filter(is_ui);
        if prompt.is_none() && workflow.is_none() {
            return Err(WorkflowError::Metadata(
                "the embedded metadata holds no usable ComfyUI prompt or workflow".into(),
            ));
        }
        Self::build(prompt, workflow, kind)
    }

    fn build(
        api: Option<Value>,
        ui: Option<Value>,
        container: Container,
    ) -> Result<Self, WorkflowError> {
        let (graph, notes, source) = match (&api, &ui) {
            (Some(a), _) => {
                let (g, n) = graph_from_api(a)?;
                (g, n, Format::Api)
            }
            (None, Some(u)) => {
                let (g, n) = graph_from_ui(u)?;
                (g, n, Format::Ui)
            }
            (None, None) => {
                return Err(WorkflowError::Malformed("no workflow found".into()));
            }
        };
        Ok(Workflow {
            graph,
            source,
            container,
            ui,
            api,
            notes,
        })
    }

    /// The graph the UI `workflow` normalizes to, when the file has one (for `workflow show`
    /// when the main graph came from the API `prompt`).
    pub fn ui_graph(&self) -> Option<Result<Graph, WorkflowError>> {
        self.ui.as_ref().map(|u| graph_from_ui(u).map(|(g, _)| g))
    }

    /// The graph the API `prompt` normalizes to, when the file has one.
    pub fn api_graph(&self) -> Option<Result<Graph, WorkflowError>> {
        self.api.as_ref().map(|a| graph_from_api(a).map(|(g, _)| g))
    }
}
