//! The normalized, executable graph: ComfyUI's API ("prompt") shape, validated.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{json, Map, Value};

use super::error::WorkflowError;
use super::nodes;

/// A node's id in the normalized graph.
///
/// Top-level nodes keep their ComfyUI id (`"12"`). Nodes that came out of a subgraph get the
/// frontend's execution id: the ids of the subgraph instances from the root down, then the inner
/// node's own id, joined by `:` (`"129:98"`, `"7:3:12"`). The same ids appear in the API
/// `prompt` ComfyUI stores in its outputs, so the two sources agree.
///
/// Ids order segment by segment, numbers numerically (`"9" < "10" < "10:2"`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeId(String);

impl NodeId {
    pub fn new(id: impl Into<String>) -> Self {
        NodeId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for NodeId {
    fn from(s: &str) -> Self {
        NodeId(s.to_string())
    }
}

impl From<String> for NodeId {
    fn from(s: String) -> Self {
        NodeId(s)
    }
}

fn cmp_segment(a: &str, b: &str) -> Ordering {
    match (a.parse::<i64>(), b.parse::<i64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y).then_with(|| a.cmp(b)),
        (Ok(_), Err(_)) => Ordering::Less,
        (Err(_), Ok(_)) => Ordering::Greater,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

impl Ord for NodeId {
    fn cmp(&self, other: &Self) -> Ordering {
        let mut a = self.0.split(':');
        let mut b = other.0.split(':');
        loop {
            match (a.next(), b.next()) {
                (None, None) => return Ordering::Equal,
                (None, Some(_)) => return Ordering::Less,
                (Some(_), None) => return Ordering::Greater,
                (Some(x), Some(y)) => match cmp_segment(x, y) {
                    Ordering::Equal => continue,
                    o => return o,
                },
            }
        }
    }
}

impl PartialOrd for NodeId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// One input of a node: a constant, or the output `output` (0-based slot) of node `node`.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    Value(Value),
    Link { node: NodeId, output: usize },
}

impl Input {
    pub fn as_value(&self) -> Option<&Value> {
        match self {
            Input::Value(v) => Some(v),
            Input::Link { .. } => None,
        }
    }

    pub fn as_link(&self) -> Option<(&NodeId, usize)> {
        match self {
            Input::Link { node, output } => Some((node, *output)),
            Input::Value(_) => None,
        }
    }
}

/// One executable node.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub id: NodeId,
    pub class_type: String,
    /// Inputs by ComfyUI input name (`seed`, `ckpt_name`, `model`, ...). Frontend-only widgets
    /// (`control_after_generate`, the image `upload` button, VHS's `videopreview`) are never here.
    pub inputs: BTreeMap<String, Input>,
    /// The title the user gave the node in the UI, if any.
    pub title: Option<String>,
}

impl Node {
    pub fn input(&self, name: &str) -> Option<&Input> {
        self.inputs.get(name)
    }

    pub fn value(&self, name: &str) -> Option<&Value> {
        self.inputs.get(name).and_then(Input::as_value)
    }

    pub fn value_str(&self, name: &str) -> Option<&str> {
        self.value(name).and_then(Value::as_str)
    }

    /// A number (integers included) as `f64`.
    pub fn value_f64(&self, name: &str) -> Option<f64> {
        self.value(name).and_then(Value::as_f64)
    }

    /// An integer; a float with no fractional part (`81.0`) is accepted too.
    pub fn value_i64(&self, name: &str) -> Option<i64> {
        self.value(name).and_then(value_as_i64)
    }

    /// A non-negative integer as `u64` (seeds go up to 2^64 - 1 in ComfyUI).
    pub fn value_u64(&self, name: &str) -> Option<u64> {
        let v = self.value(name)?;
        v.as_u64()
            .or_else(|| value_as_i64(v).and_then(|i| u64::try_from(i).ok()))
    }

    pub fn value_bool(&self, name: &str) -> Option<bool> {
        self.value(name).and_then(Value::as_bool)
    }

    /// Whether ComfyUI treats this node as an output (what a run is for).
    pub fn is_output(&self) -> bool {
        nodes::is_output_node(&self.class_type)
    }
}

/// An integer JSON value, or a float with no fractional part, as `i64`.
pub fn value_as_i64(v: &Value) -> Option<i64> {
    if let Some(i) = v.as_i64() {
        return Some(i);
    }
    if let Some(u) = v.as_u64() {
        return i64::try_from(u).ok();
    }
    let f = v.as_f64()?;
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        Some(f as i64)
    } else {
        None
    }
}

/// The normalized workflow: only executable nodes, every input a constant or a link to another
/// node of the graph, no cycles, at least one output node, every node reachable from an output.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Graph {
    pub nodes: BTreeMap<NodeId, Node>,
}

impl Graph {
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.get(&NodeId::from(id))
    }

    /// The output nodes (SaveImage, SaveVideo, SaveAnimatedWEBP, VHS_VideoCombine, PreviewImage),
    /// in id order.
    pub fn outputs(&self) -> Vec<&Node> {
        self.nodes.values().filter(|n| n.is_output()).collect()
    }

    /// Nodes of a given class_type, in id order.
    pub fn nodes_of_type<'a>(&'a self, class_type: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.nodes
            .values()
            .filter(move |n| n.class_type == class_type)
    }

    pub fn input(&self, id: &str, name: &str) -> Option<&Input> {
        self.node(id)?.input(name)
    }

    pub fn value_str(&self, id: &str, name: &str) -> Option<&str> {
        self.node(id)?.value_str(name)
    }

    pub fn value_f64(&self, id: &str, name: &str) -> Option<f64> {
        self.node(id)?.value_f64(name)
    }

    pub fn value_i64(&self, id: &str, name: &str) -> Option<i64> {
        self.node(id)?.value_i64(name)
    }

    pub fn value_u64(&self, id: &str, name: &str) -> Option<u64> {
        self.node(id)?.value_u64(name)
    }

    pub fn value_bool(&self, id: &str, name: &str) -> Option<bool> {
        self.node(id)?.value_bool(name)
    }

    /// The node that feeds input `input` of node `id`, if that input is a link.
    pub fn upstream(&self, id: &str, input: &str) -> Option<&Node> {
        let (src, _) = self.input(id, input)?.as_link()?;
        self.nodes.get(src)
    }

    /// Like [`Graph::upstream`], also giving the output slot used.
    pub fn upstream_slot(&self, id: &str, input: &str) -> Option<(&Node, usize)> {
        let (src, slot) = self.input(id, input)?.as_link()?;
        Some((self.nodes.get(src)?, slot))
    }

    /// The nodes in an order where every node comes after all the nodes it reads from. Among
    /// nodes that are ready at the same time, the smaller id comes first, so the order is stable.
    pub fn topological_order(&self) -> Result<Vec<&Node>, WorkflowError> {
        let mut indegree: BTreeMap<&NodeId, usize> = BTreeMap::new();
        let mut consumers: BTreeMap<&NodeId, Vec<&NodeId>> = BTreeMap::new();
        for (id, node) in &self.nodes {
            indegree.entry(id).or_insert(0);
            let srcs: BTreeSet<&NodeId> = node
                .inputs
                .values()
                .filter_map(|i| i.as_link().map(|(n, _)| n))
                .filter(|n| self.nodes.contains_key(*n))
                .collect();
            for src in srcs {
                *indegree.entry(id).or_insert(0) += 1;
                consumers.entry(src).or_default().push(id);
            }
        }
        let mut ready: BTreeSet<&NodeId> = indegree
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(id, _)| *id)
            .collect();
        let mut order = Vec::with_capacity(self.nodes.len());
        while let Some(id) = ready.pop_first() {
            order.push(&self.nodes[id]);
            if let Some(cs) = consumers.get(id) {
                for c in cs {
                    let d = indegree.get_mut(c).expect("consumer is a node");
                    *d -= 1;
                    if *d == 0 {
                        ready.insert(c);
                    }
                }
            }
        }
        if order.len() != self.nodes.len() {
            // What is left is the cycles plus whatever hangs below them; peel off the nodes that
            // feed nothing left, until only nodes on a cycle remain.
            let mut left: BTreeSet<&NodeId> = indegree
                .iter()
                .filter(|(_, d)| **d > 0)
                .map(|(id, _)| *id)
                .collect();
            loop {
                let sinks: Vec<&NodeId> = left
                    .iter()
                    .filter(|id| {
                        !consumers
                            .get(**id)
                            .is_some_and(|cs| cs.iter().any(|c| left.contains(c)))
                    })
                    .copied()
                    .collect();
                if sinks.is_empty() {
                    break;
                }
                for s in sinks {
                    left.remove(s);
                }
            }
            let nodes = left.iter().map(|id| id.to_string()).collect();
            return Err(WorkflowError::Cycle { nodes });
        }
        Ok(order)
    }

    /// The graph in ComfyUI's API format (what `POST /prompt` takes and what ComfyUI stores as
    /// `prompt` in its outputs): `{"id": {"class_type", "inputs", "_meta": {"title"}}}`, links as
    /// `["node_id", slot]`. A constant that is itself a JSON array is wrapped as
    /// `{"__value__": [...]}`, as the frontend does, so it cannot be mistaken for a link.
    pub fn to_api_json(&self) -> Value {
        let mut out = Map::new();
        for (id, node) in &self.nodes {
            let mut inputs = Map::new();
            for (name, input) in &node.inputs {
                let v = match input {
                    Input::Value(Value::Array(a)) => json!({ "__value__": a }),
                    Input::Value(v) => v.clone(),
                    Input::Link { node, output } => json!([node.as_str(), output]),
                };
                inputs.insert(name.clone(), v);
            }
            let mut obj = Map::new();
            obj.insert("inputs".into(), Value::Object(inputs));
            obj.insert("class_type".into(), Value::String(node.class_type.clone()));
            let title = node
                .title
                .clone()
                .unwrap_or_else(|| node.class_type.clone());
            obj.insert("_meta".into(), json!({ "title": title }));
            out.insert(id.to_string(), Value::Object(obj));
        }
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_order_numerically_by_segment() {
        let mut ids: Vec<NodeId> = ["10", "9", "129:98", "129:100", "2", "x", "10:1"]
            .into_iter()
            .map(NodeId::from)
            .collect();
        ids.sort();
        let s: Vec<&str> = ids.iter().map(NodeId::as_str).collect();
        assert_eq!(s, ["2", "9", "10", "10:1", "129:98", "129:100", "x"]);
    }

    #[test]
    fn integral_floats_read_as_integers() {
        assert_eq!(value_as_i64(&json!(81.0)), Some(81));
        assert_eq!(value_as_i64(&json!(81.5)), None);
        assert_eq!(
            value_as_i64(&json!(264244520398999u64)),
            Some(264244520398999)
        );
        assert_eq!(value_as_i64(&json!("81")), None);
    }
}
