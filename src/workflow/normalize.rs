//! From a raw node list (out of the UI flattener or an API prompt) to a validated [`Graph`].
//!
//! In order:
//! 1. every node must be a supported type ([`WorkflowError::UnsupportedNode`]);
//! 2. every link must point at a node of the workflow ([`WorkflowError::MissingNode`]);
//! 3. nodes that lost a required input to a muted node are dropped, and so, in turn, are the
//!    nodes that needed theirs (ComfyUI skips such outputs and runs the others); an optional
//!    input is just left out. Each drop is reported in the notes;
//! 4. nodes that no output node depends on are dropped (ComfyUI never runs them); with no output
//!    node left, [`WorkflowError::NoOutput`];
//! 5. cycles are refused ([`WorkflowError::Cycle`]);
//! 6. constants are folded: `PrimitiveInt/Float/String/StringMultiline/Boolean` with a constant
//!    value, `ComfySwitchNode` with a constant `switch` (its consumers get the chosen branch,
//!    link or constant), `ComfyMathExpression` whose inputs are all constants (evaluated with
//!    [`super::expr`]). Repeated until nothing changes, then step 4 again;
//! 7. each node is checked against its table entry: required inputs present, constants of the
//!    right type (and, for restricted choices such as CLIPLoader's `type`, an accepted value),
//!    links from an existing output slot of a compatible type.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{json, Value};

use super::error::WorkflowError;
use super::expr::{self, Number};
use super::graph::{value_as_i64, Graph, Input, Node, NodeId};
use super::nodes::{self, NodeSpec};

/// An input removed because it came from a muted node.
#[derive(Clone, Debug)]
pub(crate) struct Cut {
    pub node: NodeId,
    pub input: String,
    pub muted: NodeId,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Raw {
    pub nodes: BTreeMap<NodeId, Node>,
    pub cuts: Vec<Cut>,
    pub notes: Vec<String>,
}

fn spec_of(node: &Node) -> Result<&'static NodeSpec, WorkflowError> {
    nodes::spec(&node.class_type).ok_or_else(|| WorkflowError::UnsupportedNode {
        id: node.id.to_string(),
        class_type: node.class_type.clone(),
        supported: nodes::supported_list(),
    })
}

fn is_required(node: &Node, input: &str) -> bool {
    nodes::spec(&node.class_type)
        .and_then(|s| s.input(input))
        .is_some_and(|i| i.required)
}

/// Runs steps 1-7 and returns the graph with the notes gathered on the way.
pub(crate) fn finish(raw: Raw) -> Result<(Graph, Vec<String>), WorkflowError> {
    let Raw {
        nodes: mut all,
        cuts,
        mut notes,
    } = raw;

    // 1. Supported types.
    for node in all.values() {
        spec_of(node)?;
    }

    // 2. Links point at nodes of the workflow.
    for node in all.values() {
        for (name, input) in &node.inputs {
            if let Input::Link { node: src, .. } = input {
                if !all.contains_key(src) {
                    return Err(WorkflowError::MissingNode {
                        id: node.id.to_string(),
                        class_type: node.class_type.clone(),
                        input: name.clone(),
                        target: src.to_string(),
                    });
                }
            }
        }
    }

    // 3. Muted inputs.
    let mut dropped: BTreeSet<NodeId> = BTreeSet::new();
    for cut in &cuts {
        let Some(node) = all.get(&cut.node) else {
            continue;
        };
        if is_required(node, &cut.input) {
            notes.push(format!(
                "node {} ({}) is skipped: its input `{}` comes from muted node {}",
                node.id, node.class_type, cut.input, cut.muted
            ));
            dropped.insert(cut.node.clone());
        } else {
            notes.push(format!(
                "node {} ({}) runs without its optional input `{}`, which comes from muted node {}",
                node.id, node.class_type, cut.input, cut.muted
            ));
        }
    }
    loop {
        for id in &dropped {
            all.remove(id);
        }
        let mut more: BTreeSet<NodeId> = BTreeSet::new();
        for node in all.values_mut() {
            let gone: Vec<(String, NodeId)> = node
                .inputs
                .iter()
                .filter_map(|(name, i)| match i {
                    Input::Link { node: src, .. } if dropped.contains(src) => {
                        Some((name.clone(), src.clone()))
                    }
                    _ => None,
                })
                .collect();
            for (name, src) in gone {
                node.inputs.remove(&name);
                if is_required(node, &name) {
                    notes.push(format!(
                        "node {} ({}) is skipped: it needs node {}, which is skipped",
                        node.id, node.class_type, src
                    ));
                    more.insert(node.id.clone());
                }
            }
        }
        if more.is_empty() {
            break;
        }
        dropped = more;
    }
    let muted_outputs = !cuts.is_empty();

    // 4. Only what the outputs need.
    let mut graph = Graph { nodes: all };
    prune(&mut graph, muted_outputs)?;

    // 5. No cycles.
    graph.topological_order()?;

    // 6. Constants.
    fold(&mut graph)?;
    prune(&mut graph, muted_outputs)?;

    // 7. Each node against its table entry.
    for node in graph.nodes.values() {
        validate_node(&graph, node)?;
    }
    Ok((graph, notes))
}

/// Keeps the output nodes and everything they read from.
fn prune(graph: &mut Graph, muted: bool) -> Result<(), WorkflowError> {
    let mut keep: BTreeSet<NodeId> = graph
        .nodes
        .values()
        .filter(|n| n.is_output())
        .map(|n| n.id.clone())
        .collect();
    if keep.is_empty() {
        let why = if muted {
            "; the output nodes depend on muted nodes".to_string()
        } else {
            String::new()
        };
        return Err(WorkflowError::NoOutput { why });
    }
    let mut stack: Vec<NodeId> = keep.iter().cloned().collect();
    while let Some(id) = stack.pop() {
        let Some(node) = graph.nodes.get(&id) else {
            continue;
        };
        for input in node.inputs.values() {
            if let Input::Link { node: src, .. } = input {
                if keep.insert(src.clone()) {
                    stack.push(src.clone());
                }
            }
        }
    }
    graph.nodes.retain(|id, _| keep.contains(id));
    Ok(())
}

fn truthy(node: &Node, input: &str, v: &Value) -> Result<bool, WorkflowError> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) => Ok(n.as_f64().is_some_and(|f| f != 0.0)),
        _ => Err(WorkflowError::InvalidValue {
            id: node.id.to_string(),
            class_type: node.class_type.clone(),
            input: input.to_string(),
            message: format!("expected BOOLEAN, got {}", short(v)),
        }),
    }
}

/// What consumers of (node, output slot) get instead of the link; `None`: nothing.
type Replacements = HashMap<(NodeId, usize), Option<Input>>;

fn foldable(node: &Node) -> Result<Vec<(usize, Option<Input>)>, WorkflowError> {
    let value = |name: &str| node.inputs.get(name).and_then(Input::as_value);
    Ok(match node.class_type.as_str() {
        "PrimitiveInt"
        | "PrimitiveFloat"
        | "PrimitiveString"
        | "PrimitiveStringMultiline"
        | "PrimitiveBoolean" => match value("value") {
            Some(v) => vec![(0, Some(Input::Value(v.clone())))],
            None => vec![],
        },
        "ComfySwitchNode" => match value("switch") {
            Some(v) => {
                let branch = if truthy(node, "switch", v)? {
                    "on_true"
                } else {
                    "on_false"
                };
                vec![(0, node.inputs.get(branch).cloned())]
            }
            None => vec![],
        },
        "ComfyMathExpression" => {
            let Some(Value::String(expression)) = value("expression") else {
                return Ok(vec![]);
            };
            let mut vars = BTreeMap::new();
            for (name, input) in &node.inputs {
                let Some(var) = name.strip_prefix("values.") else {
                    continue;
                };
                let Input::Value(v) = input else {
                    return Ok(vec![]);
                };
                let n = Number::from_json(v).ok_or_else(|| WorkflowError::InvalidValue {
                    id: node.id.to_string(),
                    class_type: node.class_type.clone(),
                    input: name.clone(),
                    message: format!("expected a number or boolean, got {}", short(v)),
                })?;
                vars.insert(var.to_string(), n);
            }
            let r = expr::evaluate(expression, &vars).map_err(|message| {
                WorkflowError::InvalidValue {
                    id: node.id.to_string(),
                    class_type: node.class_type.clone(),
                    input: "expression".into(),
                    message: format!("`{expression}`: {message}"),
                }
            })?;
            vec![
                (0, Some(Input::Value(json!(r.float)))),
                (1, Some(Input::Value(json!(r.int)))),
                (2, Some(Input::Value(json!(r.boolean)))),
            ]
        }
        _ => vec![],
    })
}

/// Follows a replacement that is itself a link to a folded node.
fn settle(repl: &Replacements, mut input: Option<Input>) -> Option<Input> {
    for _ in 0..=repl.len() {
        match &input {
            Some(Input::Link { node, output }) => match repl.get(&(node.clone(), *output)) {
                Some(next) => input = next.clone(),
                None => return input,
            },
            _ => return input,
        }
    }
    input
}

fn fold(graph: &mut Graph) -> Result<(), WorkflowError> {
    for _ in 0..=graph.nodes.len() {
        let mut repl: Replacements = HashMap::new();
        let mut folded: Vec<NodeId> = Vec::new();
        for node in graph.nodes.values() {
            if node.is_output() {
                continue;
            }
            let outs = foldable(node)?;
            if outs.is_empty() {
                continue;
            }
            folded.push(node.id.clone());
            for (slot, input) in outs {
                repl.insert((node.id.clone(), slot), input);
            }
        }
        if folded.is_empty() {
            return Ok(());
        }
        for id in &folded {
            graph.nodes.remove(id);
        }
        for node in graph.nodes.values_mut() {
            let linked: Vec<(String, NodeId, usize)> = node
                .inputs
                .iter()
                .filter_map(|(name, i)| {
                    i.as_link()
                        .map(|(src, slot)| (name.clone(), src.clone(), slot))
                })
                .collect();
            for (name, src, slot) in linked {
                if folded.contains(&src) {
                    let first = repl.get(&(src, slot)).cloned().flatten();
                    match settle(&repl, first) {
                        Some(i) => {
                            node.inputs.insert(name, i);
                        }
                        None => {
                            node.inputs.remove(&name);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(57).collect::<String>())
    } else {
        s
    }
}

fn check_constant(ty: &str, v: &Value) -> bool {
    ty.split(',').any(|t| match t.trim() {
        "INT" => value_as_i64(v).is_some() || v.as_u64().is_some(),
        "FLOAT" => v.is_number(),
        "BOOLEAN" => v.is_boolean(),
        "STRING" => v.is_string(),
        "COMBO" => v.is_string() || v.is_number() || v.is_boolean(),
        "*" => true,
        _ => false,
    })
}

fn validate_node(graph: &Graph, node: &Node) -> Result<(), WorkflowError> {
    let spec = spec_of(node)?;
    let err_value = |input: &str, message: String| WorkflowError::InvalidValue {
        id: node.id.to_string(),
        class_type: node.class_type.clone(),
        input: input.to_string(),
        message,
    };
    for i in spec.inputs {
        if i.required && !node.inputs.contains_key(i.name) {
            return Err(WorkflowError::MissingInput {
                id: node.id.to_string(),
                class_type: node.class_type.clone(),
                input: i.name.to_string(),
                why: String::new(),
            });
        }
    }
    for (name, input) in &node.inputs {
        let Some(ispec) = spec.input(name) else {
            // ComfyUI ignores inputs a node does not declare; so does nijigen.
            continue;
        };
        match input {
            Input::Value(v) => {
                if !nodes::is_widget_type(ispec.ty) {
                    return Err(err_value(
                        name,
                        format!(
                            "needs a link from a {} output, got the constant {}",
                            ispec.ty,
                            short(v)
                        ),
                    ));
                }
                if !check_constant(ispec.ty, v) {
                    return Err(err_value(
                        name,
                        format!("expected {}, got {}", ispec.ty, short(v)),
                    ));
                }
                if !ispec.choices.is_empty() {
                    let ok = v.as_str().is_some_and(|s| ispec.choices.contains(&s));
                    if !ok {
                        return Err(err_value(
                            name,
                            format!(
                                "{} is not supported by nijigen (supported: {})",
                                short(v),
                                ispec.choices.join(", ")
                            ),
                        ));
                    }
                }
            }
            Input::Link { node: src, output } => {
                let bad = |message: String| WorkflowError::BadLink {
                    id: node.id.to_string(),
                    class_type: node.class_type.clone(),
                    input: name.clone(),
                    message,
                };
                let Some(src_node) = graph.nodes.get(src) else {
                    return Err(WorkflowError::MissingNode {
                        id: node.id.to_string(),
                        class_type: node.class_type.clone(),
                        input: name.clone(),
                        target: src.to_string(),
                    });
                };
                let src_spec = spec_of(src_node)?;
                let Some(out_ty) = src_spec.outputs.get(*output) else {
                    return Err(bad(format!(
                        "node {} ({}) has no output {}",
                        src, src_node.class_type, output
                    )));
                };
                if !nodes::types_compatible(out_ty, ispec.ty) {
                    return Err(bad(format!(
                        "expects {}, but output {} of node {} ({}) is {}",
                        ispec.ty, output, src, src_node.class_type, out_ty
                    )));
                }
            }
        }
    }
    Ok(())
}
