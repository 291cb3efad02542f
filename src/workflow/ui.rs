//! Turning ComfyUI's UI format (what "Save" / "Export" writes, and what `workflow` holds in a
//! PNG) into executable nodes, the way the ComfyUI frontend does when it queues a prompt.
//!
//! The UI format is a LiteGraph canvas:
//! `{nodes: [...], links: [...], groups, definitions: {subgraphs: [...]}, extra, version}`.
//! A node has an `id`, a `type` (the class_type, or a subgraph's id), a `mode`, `inputs` (each
//! with a `name`, a `type`, the `link` id feeding it or null, and `widget: {name}` when it is a
//! widget input), `outputs` and positional `widgets_values`. Links are arrays
//! `[id, origin_id, origin_slot, target_id, target_slot, type]` or, in newer files and inside
//! subgraphs, objects with the same fields by name.
//!
//! The rules, as the frontend applies them:
//! - **Widgets** map to input names through the node table (`nodes.rs`); frontend-only widgets
//!   (`control_after_generate`, `upload`) are skipped. Values missing from older files get the
//!   node's current defaults.
//! - **Links win over widgets**: when a widget input is linked, the stored widget value is stale
//!   and the link is used. If the link resolves to nothing (an unconnected reroute, a bypassed
//!   node with no matching input), the widget value stays.
//! - **Reroute** nodes pass their input through. A frontend **PrimitiveNode** gives its value
//!   (`widgets_values[0]`) to every input it feeds. KJNodes' **GetNode** gives what feeds the
//!   **SetNode** with the same name (`widgets_values[0]`) in the same (sub)graph.
//!   **Note**/**MarkdownNote**, a few cosmetic rgthree nodes and groups are ignored.
//! - **Muted** nodes (mode 2, "never") are left out; an input linked to one is removed entirely
//!   (the frontend deletes inputs that point at nodes not in the prompt), so a node that needed it
//!   is later dropped or refused.
//! - **Bypassed** nodes (mode 4) are left out and each consumer is wired to one of the bypassed
//!   node's inputs instead: the input at the same slot index if its type fits both the bypassed
//!   output and the consumer, else the first input of exactly the consumer's type, else the first
//!   input whose type fits both. No fitting input: the consumer gets nothing from it.
//! - **Subgraphs**: a node whose `type` is the id of one of `definitions.subgraphs` is an
//!   instance. Its inner nodes run under ids `instance:inner` (nested: `a:b:c`). Inside, links
//!   from the special node -10 come from the instance's inputs (by position in the subgraph's
//!   `inputs`), links to -20 go to the instance's outputs. An instance input that is not linked
//!   outside takes the instance's promoted widget value: older files store those in the
//!   instance's `widgets_values`, one per subgraph input that feeds a widget inside, in the
//!   subgraph's input order; current files list `properties.proxyWidgets` and keep the values in
//!   the inner nodes themselves. A muted instance is left out whole; a bypassed one passes its
//!   inputs through like any bypassed node.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde_json::Value;

use super::error::WorkflowError;
use super::graph::{Input, Node, NodeId};
use super::nodes;
use super::normalize::{Cut, Raw};

const MODE_NEVER: i64 = 2;
const MODE_BYPASS: i64 = 4;
const MAX_DEPTH: usize = 16;

#[derive(Clone, Debug)]
struct UiInput {
    name: String,
    ty: String,
    link: Option<String>,
    widget: Option<String>,
}

#[derive(Clone, Debug)]
struct UiNode {
    id: String,
    ty: String,
    mode: i64,
    title: Option<String>,
    inputs: Vec<UiInput>,
    outputs: Vec<String>,
    widgets: Value,
    proxy_widgets: Option<Vec<(String, String)>>,
    /// For subgraph instances: one input per subgraph input, in the subgraph's order, with the
    /// link found on the serialized instance (by name).
    instance_inputs: Option<Vec<UiInput>>,
}

impl UiNode {
    fn inputs(&self) -> &[UiInput] {
        self.instance_inputs.as_deref().unwrap_or(&self.inputs)
    }
}

#[derive(Clone, Debug)]
struct UiLink {
    origin: String,
    origin_slot: usize,
    target: String,
    target_slot: usize,
}

#[derive(Clone, Debug, Default)]
struct UiGraph {
    nodes: Vec<UiNode>,
    by_id: HashMap<String, usize>,
    links: HashMap<String, UiLink>,
}

#[derive(Clone, Debug)]
struct SgSlot {
    name: String,
    ty: String,
    link_ids: Vec<String>,
}

#[derive(Clone, Debug)]
struct SubgraphDef {
    name: String,
    graph: UiGraph,
    inputs: Vec<SgSlot>,
    outputs: Vec<SgSlot>,
    input_node: String,
    output_node: String,
    /// Per subgraph input: whether it feeds a widget inside (and so gets a promoted widget).
    widget_backed: Vec<bool>,
}

struct Ui {
    root: UiGraph,
    defs: HashMap<String, SubgraphDef>,
}

// ---------------------------------------------------------------------------------------------
// Parsing.

fn malformed(msg: impl Into<String>) -> WorkflowError {
    WorkflowError::Malformed(msg.into())
}

/// A node or link id: JSON numbers and strings both occur.
fn id_str(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(match n.as_i64() {
            Some(i) => i.to_string(),
            None => n.to_string(),
        }),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

fn type_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        _ => "*".to_string(),
    }
}

fn slot(v: &Value) -> Option<usize> {
    v.as_u64()
        .map(|u| u as usize)
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

fn parse_link(v: &Value) -> Option<(String, UiLink)> {
    match v {
        Value::Array(a) if a.len() >= 5 => Some((
            id_str(&a[0])?,
            UiLink {
                origin: id_str(&a[1])?,
                origin_slot: slot(&a[2])?,
                target: id_str(&a[3])?,
                target_slot: slot(&a[4])?,
            },
        )),
        Value::Object(o) => Some((
            id_str(o.get("id")?)?,
            UiLink {
                origin: id_str(o.get("origin_id")?)?,
                origin_slot: slot(o.get("origin_slot")?)?,
                target: id_str(o.get("target_id")?)?,
                target_slot: slot(o.get("target_slot")?)?,
            },
        )),
        _ => None,
    }
}

fn parse_node(v: &Value, where_: &str) -> Result<UiNode, WorkflowError> {
    let id = v
        .get("id")
        .and_then(id_str)
        .ok_or_else(|| malformed(format!("a node in {where_} has no id")))?;
    let ty = v
        .get("type")
        .or_else(|| v.get("class_type"))
        .and_then(Value::as_str)
        .ok_or_else(|| malformed(format!("node {id} in {where_} has no type")))?
        .to_string();
    let mode = v.get("mode").and_then(Value::as_i64).unwrap_or(0);
    let title = v.get("title").and_then(Value::as_str).map(str::to_string);
    let inputs = v
        .get("inputs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|i| UiInput {
                    name: i
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    ty: i.get("type").map(type_str).unwrap_or_else(|| "*".into()),
                    link: i.get("link").and_then(id_str),
                    widget: i
                        .get("widget")
                        .and_then(|w| w.get("name"))
                        .and_then(Value::as_str)
                        .map(str::to_string),
                })
                .collect()
        })
        .unwrap_or_default();
    let outputs = v
        .get("outputs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|o| o.get("type").map(type_str).unwrap_or_else(|| "*".into()))
                .collect()
        })
        .unwrap_or_default();
    let proxy_widgets = v
        .get("properties")
        .and_then(|p| p.get("proxyWidgets"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    let e = e.as_array()?;
                    Some((id_str(e.first()?)?, e.get(1)?.as_str()?.to_string()))
                })
                .collect()
        });
    Ok(UiNode {
        id,
        ty,
        mode,
        title,
        inputs,
        outputs,
        widgets: v.get("widgets_values").cloned().unwrap_or(Value::Null),
        proxy_widgets,
        instance_inputs: None,
    })
}

fn parse_graph(v: &Value, where_: &str) -> Result<UiGraph, WorkflowError> {
    let nodes_v = v
        .get("nodes")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed(format!("{where_} has no `nodes` list")))?;
    let mut g = UiGraph::default();
    for n in nodes_v {
        let node = parse_node(n, where_)?;
        g.by_id.insert(node.id.clone(), g.nodes.len());
        g.nodes.push(node);
    }
    if let Some(links) = v.get("links").and_then(Value::as_array) {
        for l in links {
            if let Some((id, link)) = parse_link(l) {
                g.links.insert(id, link);
            }
        }
    }
    Ok(g)
}

fn parse_slots(v: Option<&Value>) -> Vec<SgSlot> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|s| SgSlot {
                    name: s
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    ty: s.get("type").map(type_str).unwrap_or_else(|| "*".into()),
                    link_ids: s
                        .get("linkIds")
                        .and_then(Value::as_array)
                        .map(|l| l.iter().filter_map(id_str).collect())
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn collect_defs(v: &Value, defs: &mut HashMap<String, SubgraphDef>) -> Result<(), WorkflowError> {
    let Some(list) = v
        .get("definitions")
        .and_then(|d| d.get("subgraphs"))
        .and_then(Value::as_array)
    else {
        return Ok(());
    };
    for s in list {
        let id = s
            .get("id")
            .and_then(id_str)
            .ok_or_else(|| malformed("a subgraph definition has no id"))?;
        let name = s
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or(&id)
            .to_string();
        let graph = parse_graph(s, &format!("subgraph \"{name}\""))?;
        let io_id = |key: &str, default: &str| {
            s.get(key)
                .and_then(|n| n.get("id"))
                .and_then(id_str)
                .unwrap_or_else(|| default.to_string())
        };
        let def = SubgraphDef {
            name,
            graph,
            inputs: parse_slots(s.get("inputs")),
            outputs: parse_slots(s.get("outputs")),
            input_node: io_id("inputNode", "-10"),
            output_node: io_id("outputNode", "-20"),
            widget_backed: Vec::new(),
        };
        // Nested definitions, should a file keep them inside their parent.
        collect_defs(s, defs)?;
        defs.insert(id, def);
    }
    Ok(())
}

/// Whether subgraph `def_id`'s input `k` feeds a widget inside it (directly, or through the
/// promoted widget of a nested instance).
fn feeds_widget(defs: &HashMap<String, SubgraphDef>, def_id: &str, k: usize, depth: usize) -> bool {
    let Some(def) = defs.get(def_id) else {
        return false;
    };
    if depth > MAX_DEPTH {
        return false;
    }
    let Some(input) = def.inputs.get(k) else {
        return false;
    };
    input.link_ids.iter().any(|lid| {
        let Some(link) = def.graph.links.get(lid) else {
            return false;
        };
        let Some(&t) = def.graph.by_id.get(&link.target) else {
            return false;
        };
        let target = &def.graph.nodes[t];
        let serialized = target
            .inputs
            .iter()
            .find(|i| i.link.as_deref() == Some(lid.as_str()));
        if serialized.is_some_and(|i| i.widget.is_some()) {
            return true;
        }
        defs.contains_key(&target.ty) && feeds_widget(defs, &target.ty, link.target_slot, depth + 1)
    })
}

/// Gives every subgraph instance the inputs and outputs of its definition.
fn wire_instances(g: &mut UiGraph, shapes: &HashMap<String, (Vec<SgSlot>, Vec<String>)>) {
    for idx in 0..g.nodes.len() {
        let Some((inputs, outputs)) = shapes.get(&g.nodes[idx].ty) else {
            continue;
        };
        let node = &g.nodes[idx];
        let eff: Vec<UiInput> = inputs
            .iter()
            .enumerate()
            .map(|(k, s)| {
                // Serialized instances list only some of their inputs, and a link's
                // target_slot counts in that list, so inputs are matched by name. Only a file
                // that lists no inputs at all falls back to slot positions.
                let by_name = node.inputs.iter().find(|i| i.name == s.name);
                let link = match by_name {
                    Some(i) => i.link.clone(),
                    None if node.inputs.is_empty() => g
                        .links
                        .iter()
                        .find(|(_, l)| l.target == node.id && l.target_slot == k)
                        .map(|(id, _)| id.clone()),
                    None => None,
                };
                UiInput {
                    name: s.name.clone(),
                    ty: s.ty.clone(),
                    link,
                    widget: None,
                }
            })
            .collect();
        let node = &mut g.nodes[idx];
        node.instance_inputs = Some(eff);
        node.outputs = outputs.clone();
    }
}

fn parse_ui(v: &Value) -> Result<Ui, WorkflowError> {
    let mut root = parse_graph(v, "the workflow")?;
    let mut defs = HashMap::new();
    collect_defs(v, &mut defs)?;
    let ids: Vec<String> = defs.keys().cloned().collect();
    for id in &ids {
        let n = defs[id].inputs.len();
        let backed: Vec<bool> = (0..n).map(|k| feeds_widget(&defs, id, k, 0)).collect();
        defs.get_mut(id).expect("listed").widget_backed = backed;
    }
    let shapes: HashMap<String, (Vec<SgSlot>, Vec<String>)> = defs
        .iter()
        .map(|(id, d)| {
            (
                id.clone(),
                (
                    d.inputs.clone(),
                    d.outputs.iter().map(|o| o.ty.clone()).collect(),
                ),
            )
        })
        .collect();
    wire_instances(&mut root, &shapes);
    for d in defs.values_mut() {
        wire_instances(&mut d.graph, &shapes);
    }
    Ok(Ui { root, defs })
}

// ---------------------------------------------------------------------------------------------
// Flattening.

struct Scope<'a> {
    graph: &'a UiGraph,
    /// Execution-id prefix: "" at the root, "129:" inside instance 129, "129:7:" deeper.
    prefix: String,
    def: Option<&'a SubgraphDef>,
    /// The instance this scope expands: (parent scope, node index there).
    parent: Option<(usize, usize)>,
    /// Subgraph input name → the instance's promoted widget value.
    promoted: HashMap<String, Value>,
    /// (inner node id, widget name) → value, from an instance's proxyWidgets values.
    overrides: HashMap<(String, String), Value>,
}

enum Res {
    Link(String, usize),
    Value(Value),
    Nothing,
    Muted(String),
}

enum ResErr {
    MissingNode(String),
    Other(String),
}

type Visited = HashSet<(usize, usize, bool, usize)>;

struct Flattener<'a> {
    ui: &'a Ui,
    scopes: Vec<Scope<'a>>,
    /// (scope, node index) of an expanded instance → its inner scope.
    inner: HashMap<(usize, usize), usize>,
    notes: Vec<String>,
}

fn is_active(mode: i64) -> bool {
    mode != MODE_NEVER && mode != MODE_BYPASS
}

/// LiteGraph's `isValidConnection` (no leniency beyond `*`).
fn lg_valid(a: &str, b: &str) -> bool {
    let any = |t: &str| t.is_empty() || t == "*";
    if any(a) || any(b) || a == b {
        return true;
    }
    let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
    a.split(',')
        .any(|x| b.split(',').any(|y| x == y || any(x) || any(y)))
}

/// The frontend's choice of the input a bypassed node passes to output `slot`.
fn bypass_slot(inputs: &[UiInput], outputs: &[String], slot: usize, ty: &str) -> Option<usize> {
    if inputs.is_empty() {
        return None;
    }
    if ty == "*" || ty.is_empty() {
        return Some(if inputs.len() > slot { slot } else { 0 });
    }
    let out_ty = outputs.get(slot).map(String::as_str).unwrap_or("*");
    if let Some(i) = inputs.get(slot) {
        if lg_valid(&i.ty, out_ty) && lg_valid(&i.ty, ty) {
            return Some(slot);
        }
    }
    if let Some(i) = inputs.iter().position(|i| i.ty == ty) {
        return Some(i);
    }
    inputs
        .iter()
        .position(|i| lg_valid(&i.ty, out_ty) && lg_valid(&i.ty, ty))
}

impl<'a> Flattener<'a> {
    fn new(ui: &'a Ui) -> Self {
        Flattener {
            ui,
            scopes: vec![Scope {
                graph: &ui.root,
                prefix: String::new(),
                def: None,
                parent: None,
                promoted: HashMap::new(),
                overrides: HashMap::new(),
            }],
            inner: HashMap::new(),
            notes: Vec::new(),
        }
    }

    fn exec_id(&self, s: usize, n: usize) -> String {
        format!(
            "{}{}",
            self.scopes[s].prefix, self.scopes[s].graph.nodes[n].id
        )
    }

    fn expand(&mut self, s: usize, depth: usize) -> Result<(), WorkflowError> {
        let graph = self.scopes[s].graph;
        let ui = self.ui;
        for (n, node) in graph.nodes.iter().enumerate() {
            let Some(def) = ui.defs.get(&node.ty) else {
                continue;
            };
            if !is_active(node.mode) {
                continue;
            }
            let id = self.exec_id(s, n);
            if depth >= MAX_DEPTH {
                return Err(WorkflowError::Subgraph {
                    id,
                    message: format!(
                        "subgraphs nest more than {MAX_DEPTH} deep (a subgraph that contains itself?)"
                    ),
                });
            }
            let (promoted, overrides) = self.promoted_values(node, def, &id);
            self.scopes.push(Scope {
                graph: &def.graph,
                prefix: format!("{id}:"),
                def: Some(def),
                parent: Some((s, n)),
                promoted,
                overrides,
            });
            let inner = self.scopes.len() - 1;
            self.inner.insert((s, n), inner);
            self.expand(inner, depth + 1)?;
        }
        Ok(())
    }

    /// The values of an instance's promoted widgets.
    #[allow(clippy::type_complexity)]
    fn promoted_values(
        &mut self,
        node: &UiNode,
        def: &SubgraphDef,
        id: &str,
    ) -> (HashMap<String, Value>, HashMap<(String, String), Value>) {
        let mut promoted = HashMap::new();
        let mut overrides = HashMap::new();
        let values: &[Value] = match &node.widgets {
            Value::Array(a) => a,
            _ => &[],
        };
        if values.is_empty() {
            return (promoted, overrides);
        }
        let backed: Vec<&SgSlot> = def
            .inputs
            .iter()
            .zip(&def.widget_backed)
            .filter(|(_, b)| **b)
            .map(|(s, _)| s)
            .collect();
        match &node.proxy_widgets {
            Some(proxies) if proxies.len() == values.len() => {
                for ((inner_id, widget), v) in proxies.iter().zip(values) {
                    if inner_id == "-1" {
                        promoted.insert(widget.clone(), v.clone());
                    } else {
                        overrides.insert((inner_id.clone(), widget.clone()), v.clone());
                    }
                }
            }
            _ => {
                if backed.len() != values.len() {
                    self.notes.push(format!(
                        "subgraph instance {id} (\"{}\") has {} widget values for {} promoted \
                         widgets; matched them in order",
                        def.name,
                        values.len(),
                        backed.len()
                    ));
                }
                for (slot, v) in backed.iter().zip(values) {
                    promoted.insert(slot.name.clone(), v.clone());
                }
            }
        }
        (promoted, overrides)
    }

    /// What feeds subgraph input `k` of the instance that scope `s` expands.
    fn resolve_subgraph_input(
        &self,
        s: usize,
        k: usize,
        visited: &mut Visited,
    ) -> Result<Res, ResErr> {
        let scope = &self.scopes[s];
        let (Some(def), Some((ps, pn))) = (scope.def, scope.parent) else {
            return Err(ResErr::Other(
                "link from a subgraph input outside any subgraph".into(),
            ));
        };
        let Some(sg_input) = def.inputs.get(k) else {
            return Err(ResErr::Other(format!(
                "subgraph \"{}\" has no input {k}",
                def.name
            )));
        };
        let parent_node = &self.scopes[ps].graph.nodes[pn];
        if parent_node
            .inputs()
            .get(k)
            .is_some_and(|i| i.link.is_some())
        {
            return self.resolve_input(ps, pn, k, None, visited);
        }
        Ok(match scope.promoted.get(&sg_input.name) {
            Some(v) => Res::Value(v.clone()),
            None => Res::Nothing,
        })
    }

    fn resolve_input(
        &self,
        s: usize,
        n: usize,
        slot: usize,
        ty: Option<&str>,
        visited: &mut Visited,
    ) -> Result<Res, ResErr> {
        if !visited.insert((s, n, false, slot)) {
            return Err(ResErr::Other(format!(
                "circular reference through node {}",
                self.exec_id(s, n)
            )));
        }
        let scope = &self.scopes[s];
        let node = &scope.graph.nodes[n];
        let Some(input) = node.inputs().get(slot) else {
            return Err(ResErr::Other(format!(
                "node {} has no input {slot}",
                self.exec_id(s, n)
            )));
        };
        let Some(lid) = &input.link else {
            return Ok(Res::Nothing);
        };
        let Some(link) = scope.graph.links.get(lid) else {
            return Err(ResErr::Other(format!("link {lid} does not exist")));
        };
        if scope.def.is_some_and(|d| link.origin == d.input_node) {
            return self.resolve_subgraph_input(s, link.origin_slot, visited);
        }
        let Some(&origin) = scope.graph.by_id.get(&link.origin) else {
            return Err(ResErr::MissingNode(format!(
                "{}{}",
                scope.prefix, link.origin
            )));
        };
        let ty = ty.unwrap_or(&input.ty);
        self.resolve_output(s, origin, link.origin_slot, ty, visited)
    }

    fn resolve_output(
        &self,
        s: usize,
        n: usize,
        slot: usize,
        ty: &str,
        visited: &mut Visited,
    ) -> Result<Res, ResErr> {
        if !visited.insert((s, n, true, slot)) {
            return Err(ResErr::Other(format!(
                "circular reference through node {}",
                self.exec_id(s, n)
            )));
        }
        let node = &self.scopes[s].graph.nodes[n];
        match node.mode {
            MODE_BYPASS => {
                return match bypass_slot(node.inputs(), &node.outputs, slot, ty) {
                    Some(i) => self.resolve_input(s, n, i, None, visited),
                    None => Ok(Res::Nothing),
                };
            }
            MODE_NEVER => return Ok(Res::Muted(self.exec_id(s, n))),
            _ => {}
        }
        if let Some(&inner) = self.inner.get(&(s, n)) {
            let def = self.scopes[inner]
                .def
                .expect("inner scope has a definition");
            let Some(out) = def.outputs.get(slot) else {
                return Err(ResErr::Other(format!(
                    "subgraph \"{}\" has no output {slot}",
                    def.name
                )));
            };
            let link = out
                .link_ids
                .iter()
                .find_map(|l| def.graph.links.get(l))
                .or_else(|| {
                    def.graph
                        .links
                        .values()
                        .find(|l| l.target == def.output_node && l.target_slot == slot)
                });
            let Some(link) = link else {
                return Ok(Res::Nothing);
            };
            if link.origin == def.input_node {
                return self.resolve_subgraph_input(inner, link.origin_slot, visited);
            }
            let Some(&origin) = def.graph.by_id.get(&link.origin) else {
                return Err(ResErr::MissingNode(format!(
                    "{}{}",
                    self.scopes[inner].prefix, link.origin
                )));
            };
            return self.resolve_output(inner, origin, link.origin_slot, ty, visited);
        }
        match node.ty.as_str() {
            "Reroute" | "SetNode" => {
                if node.inputs().get(slot).is_some() {
                    self.resolve_input(s, n, slot, Some(ty), visited)
                } else {
                    Ok(Res::Nothing)
                }
            }
            "GetNode" => {
                let name = node.widgets.get(0).and_then(Value::as_str).unwrap_or("");
                let graph = self.scopes[s].graph;
                let set = graph.nodes.iter().position(|m| {
                    m.ty == "SetNode" && m.widgets.get(0).and_then(Value::as_str) == Some(name)
                });
                match set {
                    Some(m) if !graph.nodes[m].inputs().is_empty() => {
                        self.resolve_input(s, m, 0, Some(ty), visited)
                    }
                    Some(_) => Ok(Res::Nothing),
                    None => Err(ResErr::Other(format!(
                        "GetNode {} reads \"{name}\", but no SetNode has that name",
                        self.exec_id(s, n)
                    ))),
                }
            }
            "PrimitiveNode" => Ok(match &node.widgets {
                Value::Array(a) if !a.is_empty() => Res::Value(a[0].clone()),
                _ => Res::Nothing,
            }),
            t if nodes::FRONTEND_ONLY.contains(&t) => Ok(Res::Nothing),
            _ => Ok(Res::Link(self.exec_id(s, n), slot)),
        }
    }

    /// Every node that will run: active, not an instance, not frontend-only.
    fn runnable(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (s, scope) in self.scopes.iter().enumerate() {
            for (n, node) in scope.graph.nodes.iter().enumerate() {
                if !is_active(node.mode)
                    || self.ui.defs.contains_key(&node.ty)
                    || nodes::FRONTEND_ONLY.contains(&node.ty.as_str())
                {
                    continue;
                }
                out.push((s, n));
            }
        }
        out
    }

    fn build(&self, s: usize, n: usize, cuts: &mut Vec<Cut>) -> Result<Node, WorkflowError> {
        let scope = &self.scopes[s];
        let ui_node = &scope.graph.nodes[n];
        let id = self.exec_id(s, n);
        let mut inputs: BTreeMap<String, Input> = BTreeMap::new();
        // (Unknown types were refused before building.)
        if let Some(spec) = nodes::spec(&ui_node.ty) {
            for (name, v) in spec.map_widgets(&ui_node.widgets) {
                inputs.insert(name, Input::Value(v));
            }
            for i in spec.inputs {
                if i.widget != nodes::Widget::No && !inputs.contains_key(i.name) {
                    if let Some(v) = i.default.value() {
                        inputs.insert(i.name.to_string(), Input::Value(v));
                    }
                }
            }
        }
        for ((inner_id, widget), v) in &scope.overrides {
            if *inner_id == ui_node.id {
                inputs.insert(widget.clone(), Input::Value(v.clone()));
            }
        }
        for (k, input) in ui_node.inputs().iter().enumerate() {
            if input.link.is_none() {
                continue;
            }
            let name = input.widget.clone().unwrap_or_else(|| input.name.clone());
            let mut visited = Visited::new();
            match self.resolve_input(s, n, k, None, &mut visited) {
                Ok(Res::Link(src, slot)) => {
                    inputs.insert(
                        name,
                        Input::Link {
                            node: NodeId::new(src),
                            output: slot,
                        },
                    );
                }
                Ok(Res::Value(v)) => {
                    inputs.insert(name, Input::Value(v));
                }
                Ok(Res::Nothing) => {}
                Ok(Res::Muted(m)) => {
                    inputs.remove(&name);
                    cuts.push(Cut {
                        node: NodeId::new(id.clone()),
                        input: name,
                        muted: NodeId::new(m),
                    });
                }
                Err(ResErr::MissingNode(target)) => {
                    return Err(WorkflowError::MissingNode {
                        id,
                        class_type: ui_node.ty.clone(),
                        input: name,
                        target,
                    });
                }
                Err(ResErr::Other(message)) => {
                    return Err(WorkflowError::BadLink {
                        id,
                        class_type: ui_node.ty.clone(),
                        input: name,
                        message,
                    });
                }
            }
        }
        Ok(Node {
            id: NodeId::new(id),
            class_type: ui_node.ty.clone(),
            inputs,
            title: ui_node.title.clone(),
        })
    }
}

/// Subgraph ids are UUIDs; a node of such a type with no definition is a broken file rather
/// than an unknown custom node.
fn looks_like_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// Flattens a UI-format workflow into executable nodes (not yet folded or validated).
pub(crate) fn flatten(v: &Value) -> Result<Raw, WorkflowError> {
    let ui = parse_ui(v)?;
    let mut f = Flattener::new(&ui);
    f.expand(0, 0)?;
    let runnable = f.runnable();

    // Unknown node types are refused before anything else, smallest id first.
    let unknown: BTreeSet<(NodeId, String)> = runnable
        .iter()
        .filter(|(s, n)| nodes::spec(&f.scopes[*s].graph.nodes[*n].ty).is_none())
        .map(|(s, n)| {
            (
                NodeId::new(f.exec_id(*s, *n)),
                f.scopes[*s].graph.nodes[*n].ty.clone(),
            )
        })
        .collect();
    if let Some((id, class_type)) = unknown.into_iter().next() {
        if looks_like_uuid(&class_type) {
            return Err(WorkflowError::Subgraph {
                id: id.to_string(),
                message: format!(
                    "its type {class_type} is a subgraph whose definition is missing from \
                     `definitions.subgraphs`"
                ),
            });
        }
        return Err(WorkflowError::UnsupportedNode {
            id: id.to_string(),
            class_type,
            supported: nodes::supported_list(),
        });
    }

    let mut raw = Raw::default();
    for (s, n) in runnable {
        let node = f.build(s, n, &mut raw.cuts)?;
        raw.nodes.insert(node.id.clone(), node);
    }
    raw.notes.append(&mut f.notes);
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(ty: &str) -> UiInput {
        UiInput {
            name: ty.to_lowercase(),
            ty: ty.into(),
            link: None,
            widget: None,
        }
    }

    #[test]
    fn bypass_prefers_same_slot_then_exact_type() {
        let inputs = [input("MODEL"), input("CLIP"), input("STRING")];
        let outputs = ["MODEL".to_string(), "CLIP".to_string()];
        assert_eq!(bypass_slot(&inputs, &outputs, 0, "MODEL"), Some(0));
        assert_eq!(bypass_slot(&inputs, &outputs, 1, "CLIP"), Some(1));
        // An output whose same-slot input does not match falls back to the first exact match.
        let inputs = [input("CLIP"), input("MODEL")];
        assert_eq!(bypass_slot(&inputs, &outputs, 0, "MODEL"), Some(1));
        // Nothing fits.
        assert_eq!(bypass_slot(&inputs, &outputs, 0, "LATENT"), None);
        // A wildcard consumer takes the same slot.
        assert_eq!(bypass_slot(&inputs, &outputs, 1, "*"), Some(1));
    }

    #[test]
    fn litegraph_type_rule() {
        assert!(lg_valid("INT", "INT"));
        assert!(lg_valid("*", "MODEL"));
        assert!(lg_valid("FLOAT,INT", "int"));
        assert!(!lg_valid("STRING", "COMBO"));
    }
}
