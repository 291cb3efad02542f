//! The adapters of one model instance: for each adapted base weight, its terms, with the adapter
//! tensors in their own small weight set; and the graph pieces `nn` adds to a layer's output.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::Serialize;

use super::file::{preview, Group, LoraFile};
use super::resolve::{Resolver, Slot};
use super::{LoraError, LoraKind, LoraPart, LoraTarget};
use crate::formats::{float, DType};
use crate::ggml::{self, Context, GgmlType, Tensor, TensorSet};

/// What one file contributed to one model.
#[derive(Clone, Debug, Serialize)]
pub struct AdapterReport {
    pub file: PathBuf,
    pub multiplier: f32,
    pub target: LoraTarget,
    /// Modules applied.
    pub applied: usize,
    /// Stored keys for this network that match no weight of the model.
    pub unmatched: Vec<String>,
    /// Stored keys of adapters that cannot be applied at run time (LoHa, LoKr, LoCon
    /// `lora_mid`, DoRA, a `lora_down` without its `lora_up`, an alpha alone).
    pub unsupported: Vec<String>,
    /// Modules of the file for other networks (e.g. its text-encoder modules when this is the
    /// UNet).
    pub other_targets: usize,
}

/// One additive term of an adapted weight.
#[derive(Clone, Debug)]
struct Term {
    /// Row block of the output it adds to (0 unless the weight is fused).
    part: usize,
    scale: f32,
    kind: TermKind,
}

/// Names in [`Adapters::set`].
#[derive(Clone, Debug)]
enum TermKind {
    /// Linear: down ne [in, r], up ne [r, out]. Conv: down ne [KW, KH, IC, r], up ne
    /// [1, 1, r, OC].
    LowRank { down: String, up: String },
    /// ne as the base weight (or its row block).
    Diff(String),
}

#[derive(Clone, Debug)]
struct Adapted {
    name: String,
    /// The base weight's ggml shape.
    ne: [i64; 4],
    conv: bool,
    parts: usize,
    terms: Vec<Term>,
}

/// All adapters of one model instance (the UNet, one text encoder, or the Wan DiT), built from
/// one or more (file, multiplier) pairs. Attach with the model's `set_adapters`.
pub struct Adapters {
    set: TensorSet<'static>,
    /// Base weight (its full canonical name) -> terms. By name, not by tensor, so that the
    /// adapters apply to any copy of the base set (weights placed on the device, streamed).
    by_weight: HashMap<String, Adapted>,
    /// Base vector (full name) -> its merged replacement in `set` (norm weights and biases
    /// with `diff` / `diff_b`: tiny, never quantized, so merged at build time).
    replaced: HashMap<String, String>,
    target: LoraTarget,
    reports: Vec<AdapterReport>,
    /// The device memory of a copy made by [`Adapters::on_device`].
    _leases: Vec<crate::runtime::Lease>,
}

/// An adapter tensor to copy into the set.
struct Load {
    name: String,
    file: usize,
    index: usize,
    ne: Vec<i64>,
}

/// Shapes of the base weight a group adapts.
struct BaseShape {
    ne: [i64; 4],
    conv: bool,
    in_dim: i64,
    /// Rows of the adapted block (out / parts).
    out_dim: i64,
}

impl Adapters {
    /// Adapters for the model whose weights are `base` under `prefix` ("" or e.g.
    /// "model.diffusion_model."), a network of kind `target`, from `loras` (file, multiplier).
    /// Keys for other networks are counted, keys for this one that match no weight are
    /// reported (see [`Adapters::reports`]); a shape mismatch is an error.
    pub fn build(
        base: &TensorSet<'_>,
        prefix: &str,
        target: LoraTarget,
        loras: &[(&LoraFile, f32)],
    ) -> Result<Adapters, LoraError> {
        let prefix = with_dot(prefix);
        let resolver = resolver_of(base, &prefix);
        let mut loads: Vec<Load> = Vec::new();
        let mut adapted: BTreeMap<String, Adapted> = BTreeMap::new();
        let mut merges: Vec<(usize, Merge)> = Vec::new();
        let mut reports = Vec::new();
        for (fi, (file, mult)) in loras.iter().enumerate() {
            let mut rep = AdapterReport {
                file: file.path().to_path_buf(),
                multiplier: *mult,
                target,
                applied: 0,
                unmatched: Vec::new(),
                unsupported: Vec::new(),
                other_targets: 0,
            };
            for g in file.groups() {
                if g.target != target {
                    rep.other_targets += 1;
                    continue;
                }
                let keys = || {
                    g.parts
                        .values()
                        .map(|&i| file.info(i).name.clone())
                        .collect::<Vec<_>>()
                };
                let slot = match resolver.resolve(g) {
                    Some(s) => s.clone(),
                    None => match resolver.resolve_vector(g) {
                        Some(s) => s,
                        None => {
                            rep.unmatched.extend(keys());
                            continue;
                        }
                    },
                };
                let bias = bias_name(&slot.weight);
                let shapes = Shapes {
                    weight: base.get(&slot.weight).map(|t| t.ne()),
                    bias: base.get(&bias).map(|t| t.n_elements()),
                };
                let plan = plan_group(file, fi, *mult, g, &slot, shapes, &mut loads)?;
                rep.unsupported
                    .extend(plan.skipped.iter().map(|&i| file.info(i).name.clone()));
                if plan.terms.is_empty() && plan.merges.is_empty() {
                    if plan.skipped.is_empty() {
                        rep.unsupported.extend(keys());
                    }
                    continue;
                }
                rep.applied += 1;
                merges.extend(plan.merges.into_iter().map(|m| (fi, m)));
                if let (false, Some(ne)) = (plan.terms.is_empty(), shapes.weight) {
                    adapted
                        .entry(slot.weight.clone())
                        .or_insert_with(|| Adapted {
                            name: slot.weight.clone(),
                            ne,
                            conv: !(ne[2] == 1 && ne[3] == 1),
                            parts: slot.parts,
                            terms: Vec::new(),
                        })
                        .terms
                        .extend(plan.terms);
                }
            }
            log_report(&rep);
            reports.push(rep);
        }
        // Vector differences are merged here: base + sum of multiplier x diff, in F32.
        let mut merged: BTreeMap<String, Vec<f32>> = BTreeMap::new();
        for (fi, m) in &merges {
            let (file, _) = loras[*fi];
            if !merged.contains_key(&m.target) {
                let t = base.get(&m.target).ok_or_else(|| LoraError::Tensor {
                    path: file.path().to_path_buf(),
                    tensor: m.target.clone(),
                    what: "base tensor vanished".into(),
                })?;
                let bytes = ggml::tensor_get(t)?;
                let vals = float::to_f32_vec(DType::Ggml(t.ty()), &bytes).map_err(|e| {
                    LoraError::Tensor {
                        path: file.path().to_path_buf(),
                        tensor: m.target.clone(),
                        what: format!("cannot read the base vector: {e}"),
                    }
                })?;
                merged.insert(m.target.clone(), vals);
            }
            let diff = file.f32_values(m.index)?;
            if let Some(v) = merged.get_mut(&m.target) {
                for (b, d) in v.iter_mut().skip(m.offset).zip(&diff) {
                    *b += m.scale * d;
                }
            }
        }
        let mut set = TensorSet::new(loads.len() + merged.len())?;
        for l in &loads {
            let (file, _) = loras[l.file];
            let (ty, bytes) = file.data(l.index)?;
            set.add_owned(&l.name, ty, &l.ne, &bytes)?;
        }
        let mut replaced = HashMap::new();
        for (name, vals) in &merged {
            let ne = base
                .get(name)
                .map(|t| t.ne())
                .unwrap_or([vals.len() as i64, 1, 1, 1]);
            let dims = ne.iter().rposition(|&d| d != 1).map_or(1, |i| i + 1);
            let merged_name = format!("merged:{name}");
            set.add_owned(
                &merged_name,
                GgmlType::F32,
                &ne[..dims],
                bytemuck::cast_slice(vals),
            )?;
            replaced.insert(name.clone(), merged_name);
        }
        let mut by_weight = HashMap::new();
        for (name, a) in adapted {
            if base.get(&name).is_some() {
                by_weight.insert(name, a);
            }
        }
        tracing::debug!(
            target = target.name(),
            weights = by_weight.len(),
            bytes = set.data_bytes(),
            "lora adapters built"
        );
        Ok(Adapters {
            set,
            by_weight,
            replaced,
            target,
            reports,
            _leases: Vec::new(),
        })
    }

    /// Dry run of the name matching of [`Adapters::build`] (no tensor is read, no shape
    /// checked): each key of `file` for `target` with the full name of the base weight (or
    /// vector) it adapts, `None` when it matches nothing. For `nijigen info`-style listings.
    pub fn resolve_keys(
        base: &TensorSet<'_>,
        prefix: &str,
        target: LoraTarget,
        file: &LoraFile,
    ) -> Vec<(String, Option<String>)> {
        let prefix = with_dot(prefix);
        let resolver = resolver_of(base, &prefix);
        let mut out = Vec::new();
        for g in file.groups().iter().filter(|g| g.target == target) {
            let slot = resolver
                .resolve(g)
                .cloned()
                .or_else(|| resolver.resolve_vector(g));
            for &i in g.parts.values() {
                out.push((
                    file.info(i).name.clone(),
                    slot.as_ref().map(|s| s.weight.clone()),
                ));
            }
        }
        out
    }

    /// A copy with every adapter tensor on `backend`'s device, leased from `acct` as
    /// "`what` lora", to attach to a model computing there.
    pub fn on_device(
        &self,
        backend: &ggml::Backend,
        acct: &crate::runtime::Accountant,
        what: &str,
    ) -> Result<Adapters, crate::runtime::DeviceError> {
        let dw = crate::runtime::DeviceWeights::build(
            &self.set,
            backend,
            &crate::runtime::Residency::Resident,
            acct,
            &format!("{what} lora"),
        )?;
        let (set, leases) = dw.into_resident()?;
        Ok(Adapters {
            set,
            by_weight: self.by_weight.clone(),
            replaced: self.replaced.clone(),
            target: self.target,
            reports: self.reports.clone(),
            _leases: leases,
        })
    }

    /// The adapter tensors (and merged vectors), by name.
    pub fn tensors(&self) -> &TensorSet<'static> {
        &self.set
    }

    /// The network these adapters are for.
    pub fn target(&self) -> LoraTarget {
        self.target
    }

    /// One report per file, in the order given.
    pub fn reports(&self) -> &[AdapterReport] {
        &self.reports
    }

    /// Stored keys (all files) for this network that match no weight of the model.
    pub fn unmatched_keys(&self) -> Vec<&str> {
        self.reports
            .iter()
            .flat_map(|r| r.unmatched.iter().map(String::as_str))
            .collect()
    }

    /// Number of adapted base weights.
    pub fn len(&self) -> usize {
        self.by_weight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_weight.is_empty()
    }

    /// Full names of the adapted base weights, sorted.
    pub fn adapted_weights(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.by_weight.values().map(|a| a.name.as_str()).collect();
        v.sort_unstable();
        v
    }

    /// Bytes of adapter tensor data.
    pub fn data_bytes(&self) -> u64 {
        self.set.data_bytes()
    }

    /// Whether these adapters fit `set`: a copy of the base set they were built from (every
    /// adapted weight is there, with the same shape).
    pub fn fits(&self, set: &TensorSet<'_>) -> bool {
        self.by_weight
            .iter()
            .all(|(n, a)| set.get(n).map(|t| t.ne()) == Some(a.ne))
    }

    /// The merged replacement of base tensor `name` (full name), if a `diff`/`diff_b` changed
    /// it.
    pub(crate) fn replacement(&self, name: &str) -> Option<Tensor<'_>> {
        self.set.get(self.replaced.get(name)?)
    }

    /// Full names of the base vectors replaced by merged copies, sorted.
    pub fn merged_vectors(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.replaced.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    fn tensor(&self, name: &str) -> Tensor<'_> {
        self.set
            .get(name)
            .unwrap_or_else(|| panic!("adapter tensor '{name}' added at build time"))
    }

    /// `y = weight x (+ bias)` plus the terms of `weight`, for a linear layer.
    pub(crate) fn apply_linear<'c>(
        &'c self,
        ctx: &'c Context,
        weight: &str,
        x: Tensor<'c>,
        y: Tensor<'c>,
    ) -> Tensor<'c> {
        let Some(a) = self.by_weight.get(weight) else {
            return y;
        };
        if a.conv {
            return y;
        }
        let delta = |t: &Term| -> Tensor<'c> {
            match &t.kind {
                TermKind::LowRank { down, up } => {
                    let h = ctx.mul_mat(self.tensor(down), x);
                    ctx.scale(ctx.mul_mat(self.tensor(up), h), t.scale)
                }
                TermKind::Diff(d) => ctx.scale(ctx.mul_mat(self.tensor(d), x), t.scale),
            }
        };
        add_by_parts(ctx, y, a, delta)
    }

    /// `y = conv(weight, x) (+ bias)` plus the terms of `weight`, for a 2-D convolution with
    /// the base layer's `stride` and `pad`.
    pub(crate) fn apply_conv<'c>(
        &'c self,
        ctx: &'c Context,
        weight: &str,
        x: Tensor<'c>,
        y: Tensor<'c>,
        stride: i32,
        pad: i32,
    ) -> Tensor<'c> {
        let Some(a) = self.by_weight.get(weight) else {
            return y;
        };
        if !a.conv || a.parts != 1 {
            return y;
        }
        let (s, p) = ((stride, stride), (pad, pad));
        a.terms.iter().fold(y, |y, t| {
            let d = match &t.kind {
                TermKind::LowRank { down, up } => {
                    let h = ctx.conv_2d_direct(self.tensor(down), x, s, p, (1, 1));
                    ctx.conv_2d_direct(self.tensor(up), h, (1, 1), (0, 0), (1, 1))
                }
                TermKind::Diff(d) => ctx.conv_2d_direct(self.tensor(d), x, s, p, (1, 1)),
            };
            ctx.add(y, ctx.scale(d, t.scale))
        })
    }
}

fn with_dot(prefix: &str) -> String {
    let mut prefix = prefix.to_string();
    if !prefix.is_empty() && !prefix.ends_with('.') {
        prefix.push('.');
    }
    prefix
}

fn resolver_of(base: &TensorSet<'_>, prefix: &str) -> Resolver {
    Resolver::new(
        base.names()
            .iter()
            .filter_map(|n| base.get(n).map(|t| (n.as_str(), t.ne()))),
        prefix,
    )
}

/// Adds each term's delta to its row block of `y` ([out, ...]): directly for an unfused weight;
/// for a fused one, per block on views, concatenated back.
fn add_by_parts<'c>(
    ctx: &'c Context,
    y: Tensor<'c>,
    a: &Adapted,
    delta: impl Fn(&Term) -> Tensor<'c>,
) -> Tensor<'c> {
    if a.parts <= 1 {
        return a.terms.iter().fold(y, |y, t| ctx.add(y, delta(t)));
    }
    let [n0, n1, n2, n3] = y.ne();
    let nb = y.nb();
    let w = n0 / a.parts as i64;
    let mut out: Option<Tensor<'c>> = None;
    for p in 0..a.parts {
        let v = ctx.view(
            y,
            &[w, n1, n2, n3],
            &[nb[1], nb[2], nb[3]],
            p * w as usize * nb[0],
        );
        let mut terms = a.terms.iter().filter(|t| t.part == p).peekable();
        let piece = if terms.peek().is_none() {
            ctx.cont(v)
        } else {
            terms.fold(v, |v, t| ctx.add(v, delta(t)))
        };
        out = Some(match out {
            None => piece,
            Some(o) => ctx.concat(o, piece, 0),
        });
    }
    out.unwrap_or(y)
}

fn shape_err(
    file: &LoraFile,
    i: usize,
    slot: &Slot,
    base: [i64; 4],
    what: impl Into<String>,
) -> LoraError {
    let t = file.info(i);
    LoraError::Shape {
        path: file.path().to_path_buf(),
        key: t.name.clone(),
        what: format!(
            "adapts '{}' (ggml ne {base:?}) but has shape {:?}: {}",
            slot.weight,
            t.shape,
            what.into()
        ),
    }
}

/// `X.weight` -> `X.bias`, open_clip `X.in_proj_weight` -> `X.in_proj_bias`.
fn bias_name(weight: &str) -> String {
    match weight.strip_suffix("weight") {
        Some(stem) => format!("{stem}bias"),
        None => format!("{weight}.bias"),
    }
}

/// Shapes of what a group adapts in the base set.
#[derive(Clone, Copy)]
struct Shapes {
    /// ggml ne of the weight, if the set has it.
    weight: Option<[i64; 4]>,
    /// Elements of the bias, if the set has it.
    bias: Option<i64>,
}

/// A vector difference to merge into a base vector.
struct Merge {
    target: String,
    offset: usize,
    index: usize,
    scale: f32,
}

#[derive(Default)]
struct Plan {
    terms: Vec<Term>,
    merges: Vec<Merge>,
    /// Tensors that cannot be applied (reported).
    skipped: Vec<usize>,
}

/// The terms and merges of one module group, with the tensors to load added to `loads`.
fn plan_group(
    file: &LoraFile,
    fi: usize,
    mult: f32,
    g: &Group,
    slot: &Slot,
    shapes: Shapes,
    loads: &mut Vec<Load>,
) -> Result<Plan, LoraError> {
    let mut plan = Plan::default();
    let unsupported = g.parts.keys().any(|p| {
        matches!(p.kind(), Some(LoraKind::Loha | LoraKind::Lokr))
            || matches!(p, LoraPart::Mid | LoraPart::DoraScale)
    });
    if unsupported {
        return Ok(plan);
    }
    let parts = slot.parts.max(1) as i64;
    let first = g.parts.values().next().copied().unwrap_or(0);
    let dims = |i: usize| -> Vec<i64> { file.info(i).shape.iter().map(|&d| d as i64).collect() };
    let vector = shapes
        .weight
        .is_none_or(|ne| ne[1] == 1 && ne[2] == 1 && ne[3] == 1);
    let base_ne = shapes.weight.unwrap_or([0, 1, 1, 1]);

    // diff_b: merged into the bias (its block of a fused one).
    if let Some(&i) = g.parts.get(&LoraPart::DiffBias) {
        match shapes.bias {
            Some(n) if n % parts == 0 && dims(i) == [n / parts] => plan.merges.push(Merge {
                target: bias_name(&slot.weight),
                offset: (slot.part as i64 * (n / parts)) as usize,
                index: i,
                scale: mult,
            }),
            Some(n) => {
                return Err(shape_err(
                    file,
                    i,
                    slot,
                    base_ne,
                    format!("expected diff_b [{}]", n / parts),
                ))
            }
            None => plan.skipped.push(i), // no bias to change
        }
    }
    if vector {
        // Norm weights: only a diff makes sense.
        for (part, &i) in &g.parts {
            match part {
                LoraPart::Diff if shapes.weight.is_some() => {
                    if dims(i) != [base_ne[0]] {
                        return Err(shape_err(
                            file,
                            i,
                            slot,
                            base_ne,
                            format!("expected diff [{}]", base_ne[0]),
                        ));
                    }
                    plan.merges.push(Merge {
                        target: slot.weight.clone(),
                        offset: 0,
                        index: i,
                        scale: mult,
                    });
                }
                LoraPart::DiffBias => {}
                _ => plan.skipped.push(i),
            }
        }
        return Ok(plan);
    }

    let ne = base_ne;
    let conv = !(ne[2] == 1 && ne[3] == 1);
    let (in_dim, out_all) = if conv { (ne[2], ne[3]) } else { (ne[0], ne[1]) };
    if out_all % parts != 0 || (conv && parts != 1) {
        return Err(shape_err(file, first, slot, ne, "cannot split the weight"));
    }
    let b = BaseShape {
        ne,
        conv,
        in_dim,
        out_dim: out_all / parts,
    };
    let mut load = |i: usize, tne: Vec<i64>| -> String {
        let name = format!("{fi}:{}", file.info(i).name);
        loads.push(Load {
            name: name.clone(),
            file: fi,
            index: i,
            ne: tne,
        });
        name
    };
    match (g.parts.get(&LoraPart::Down), g.parts.get(&LoraPart::Up)) {
        (Some(&d), Some(&u)) => {
            let (ds, us) = (dims(d), dims(u));
            let rank = ds.first().copied().unwrap_or(0);
            let err = |i, what: &str| shape_err(file, i, slot, b.ne, what);
            let (down_ne, up_ne) = if b.conv {
                let (kw, kh) = (b.ne[0], b.ne[1]);
                let down_ok = ds == [rank, b.in_dim, kh, kw]
                    || (kw == 1 && kh == 1 && ds == [rank, b.in_dim]);
                if rank < 1 || !down_ok {
                    return Err(err(
                        d,
                        &format!("expected lora_down [rank, {}, {kh}, {kw}]", b.in_dim),
                    ));
                }
                if us != [b.out_dim, rank, 1, 1] && us != [b.out_dim, rank] {
                    return Err(err(
                        u,
                        &format!("expected lora_up [{}, {rank}, 1, 1]", b.out_dim),
                    ));
                }
                (vec![kw, kh, b.in_dim, rank], vec![1, 1, rank, b.out_dim])
            } else {
                if rank < 1 || (ds != [rank, b.in_dim] && ds != [rank, b.in_dim, 1, 1]) {
                    return Err(err(d, &format!("expected lora_down [rank, {}]", b.in_dim)));
                }
                if us != [b.out_dim, rank] && us != [b.out_dim, rank, 1, 1] {
                    return Err(err(u, &format!("expected lora_up [{}, {rank}]", b.out_dim)));
                }
                (vec![b.in_dim, rank], vec![rank, b.out_dim])
            };
            let scale = match g.parts.get(&LoraPart::Alpha) {
                Some(&a) => mult * file.scalar(a)? / rank as f32,
                None => mult,
            };
            let down = load(d, down_ne);
            let up = load(u, up_ne);
            plan.terms.push(Term {
                part: slot.part,
                scale,
                kind: TermKind::LowRank { down, up },
            });
        }
        (None, None) => {}
        (d, u) => plan.skipped.extend(d.into_iter().chain(u).copied()),
    }
    if let Some(&i) = g.parts.get(&LoraPart::Diff) {
        let want: Vec<i64> = if b.conv {
            vec![b.ne[3], b.ne[2], b.ne[1], b.ne[0]]
        } else {
            vec![b.out_dim, b.in_dim]
        };
        if dims(i) != want {
            return Err(shape_err(
                file,
                i,
                slot,
                b.ne,
                format!("expected diff {want:?}"),
            ));
        }
        let tne = want.iter().rev().copied().collect();
        plan.terms.push(Term {
            part: slot.part,
            scale: mult,
            kind: TermKind::Diff(load(i, tne)),
        });
    }
    Ok(plan)
}

fn log_report(r: &AdapterReport) {
    let file = r.file.display();
    let target = r.target.name();
    if !r.unmatched.is_empty() {
        tracing::warn!(
            "lora {file}: {} keys match no weight of this model ({target}): {}",
            r.unmatched.len(),
            preview(&r.unmatched)
        );
    }
    if !r.unsupported.is_empty() {
        tracing::warn!(
            "lora {file}: {} keys cannot be applied at run time (LoHa/LoKr/lora_mid/DoRA or incomplete): {}",
            r.unsupported.len(),
            preview(&r.unsupported)
        );
    }
    if r.applied == 0 && r.unmatched.is_empty() && r.unsupported.is_empty() {
        tracing::info!("lora {file}: nothing for {target}");
    } else {
        tracing::info!(
            "lora {file}: {} modules of {target} adapted at x{}",
            r.applied,
            r.multiplier
        );
    }
}
