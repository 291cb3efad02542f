//! The one error type of the workflow module.
//!
//! Every message is a single line that names the node (its id as ComfyUI's frontend would print
//! it, e.g. `12` or `129:98` inside a subgraph) and its `class_type`, so `nijigen workflow run`
//! can print it as is.

use std::path::PathBuf;

/// Why a workflow file could not be read, normalized or accepted.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The bytes are neither JSON nor a PNG, WebP or MP4 file.
    #[error("not a ComfyUI workflow: {0}")]
    UnknownFormat(String),

    /// The JSON text does not parse.
    #[error("invalid JSON in {what}: {message}")]
    Json { what: String, message: String },

    /// The container (PNG, WebP, MP4) is fine but holds no ComfyUI `prompt`/`workflow`, or the
    /// container itself is damaged.
    #[error("{0}")]
    Metadata(String),

    /// The JSON parses but is not shaped like a ComfyUI workflow (UI or API format).
    #[error("malformed workflow: {0}")]
    Malformed(String),

    /// A node type nijigen does not implement.
    #[error(
        "node {id} ({class_type}) is not supported by nijigen; supported node types: {supported}. \
         Delete or mute it (Ctrl+M) in ComfyUI, or replace it with a supported node"
    )]
    UnsupportedNode {
        id: String,
        class_type: String,
        supported: String,
    },

    /// A node lacks an input it cannot run without.
    #[error("node {id} ({class_type}) is missing its required input `{input}`{why}")]
    MissingInput {
        id: String,
        class_type: String,
        input: String,
        /// Extra context, starting with "; " or empty.
        why: String,
    },

    /// An input is linked to a node that is not in the workflow.
    #[error(
        "node {id} ({class_type}) input `{input}` is linked to node {target}, which does not exist"
    )]
    MissingNode {
        id: String,
        class_type: String,
        input: String,
        target: String,
    },

    /// A link is broken in some other way (unknown link id, output slot out of range, type
    /// mismatch, circular reroutes).
    #[error("node {id} ({class_type}) input `{input}`: {message}")]
    BadLink {
        id: String,
        class_type: String,
        input: String,
        message: String,
    },

    /// A constant input has the wrong type or a value nijigen does not accept.
    #[error("node {id} ({class_type}) input `{input}`: {message}")]
    InvalidValue {
        id: String,
        class_type: String,
        input: String,
        message: String,
    },

    /// The graph is valid, but what a node does (or one of its settings) has no equivalent on
    /// nijigen's command line.
    #[error("node {id} ({class_type}): {message}")]
    Untranslatable {
        id: String,
        class_type: String,
        message: String,
    },

    /// The nodes reachable from the outputs form a cycle.
    #[error("the workflow has a cycle through nodes {}", nodes.join(", "))]
    Cycle { nodes: Vec<String> },

    /// Nothing to run: no SaveImage/SaveVideo/SaveAnimatedWEBP/VHS_VideoCombine/PreviewImage node
    /// is active.
    #[error("the workflow has no output node (SaveImage, SaveVideo, SaveAnimatedWEBP, VHS_VideoCombine or PreviewImage){why}")]
    NoOutput {
        /// Extra context, starting with "; " or empty.
        why: String,
    },

    /// A subgraph definition is missing, nested too deep or refers to itself.
    #[error("subgraph error at node {id}: {message}")]
    Subgraph { id: String, message: String },
}

impl WorkflowError {
    pub(crate) fn json(what: &str, e: serde_json::Error) -> Self {
        WorkflowError::Json {
            what: what.to_string(),
            message: e.to_string(),
        }
    }
}
