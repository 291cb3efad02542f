//! ComfyUI's API format: what "Export (API)" writes, what `POST /prompt` takes and what ComfyUI
//! stores as `prompt` in its outputs. It is already flat:
//! `{"<id>": {"class_type": "...", "inputs": {"<name>": <value> | ["<node id>", <slot>]}, "_meta": {"title": "..."}}}`.
//! An input that is a two-element array `[id, slot]` is a link; a constant that is an array is
//! wrapped as `{"__value__": [...]}`. There are no modes, widgets, reroutes or subgraphs: the
//! frontend resolved them when it queued the prompt (subgraph nodes keep ids like `"129:98"`).

use std::collections::BTreeMap;

use serde_json::Value;

use super::error::WorkflowError;
use super::graph::{Input, Node, NodeId};
use super::normalize::Raw;

/// Whether `v` looks like an API prompt: a non-empty object of objects with a `class_type`.
pub(crate) fn is_api(v: &Value) -> bool {
    match v.as_object() {
        Some(m) if !m.is_empty() => m
            .values()
            .all(|n| n.get("class_type").is_some_and(Value::is_string)),
        _ => false,
    }
}

fn link(v: &Value) -> Option<Input> {
    let a = v.as_array()?;
    if a.len() != 2 {
        return None;
    }
    let node = match &a[0] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.as_i64()?.to_string(),
        _ => return None,
    };
    let output = a[1].as_u64()? as usize;
    Some(Input::Link {
        node: NodeId::new(node),
        output,
    })
}

pub(crate) fn parse(v: &Value) -> Result<Raw, WorkflowError> {
    let map = v
        .as_object()
        .ok_or_else(|| WorkflowError::Malformed("an API prompt must be a JSON object".into()))?;
    let mut raw = Raw::default();
    for (id, n) in map {
        let class_type = n
            .get("class_type")
            .and_then(Value::as_str)
            .ok_or_else(|| WorkflowError::Malformed(format!("node {id} has no class_type")))?;
        let mut inputs = BTreeMap::new();
        if let Some(m) = n.get("inputs").and_then(Value::as_object) {
            for (name, v) in m {
                // Values of frontend-only widgets some frontend versions let through.
                if name == "control_after_generate" || name == "upload" {
                    continue;
                }
                let input = match link(v) {
                    Some(l) => l,
                    None => match v {
                        Value::Object(o) if o.len() == 1 && o.contains_key("__value__") => {
                            Input::Value(o["__value__"].clone())
                        }
                        _ => Input::Value(v.clone()),
                    },
                };
                inputs.insert(name.clone(), input);
            }
        }
        let title = n
            .get("_meta")
            .and_then(|m| m.get("title"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let id = NodeId::new(id.clone());
        raw.nodes.insert(
            id.clone(),
            Node {
                id,
                class_type: class_type.to_string(),
                inputs,
                title,
            },
        );
    }
    Ok(raw)
}
