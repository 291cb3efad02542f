//! The graph runner every model computes through (stable-diffusion.cpp's `GGMLRunner`): it owns
//! the backend, the graph allocator and its compute meter (a lease in the run's
//! [`Accountant`]), and the graphs of the last input shape; models only describe their
//! hyperparameters, tensors and forward graphs.
//!
//! A model asks for its graphs with [`GraphRunner::graphs`] and a key (the input shape and
//! anything else the graphs depend on). The first call for a key builds them (a
//! [`GraphSet`]: one graph, or a sequence of stage graphs with carried state); later calls
//! with the same key reuse them, allocated as they were: graphs are built once per shape and
//! reused across sampling steps. A new key drops the old graphs (and their state memory)
//! before building the new ones. The stages of a denoiser run one after another through the
//! one allocator ([`Graphs::compute`]); its blocks, when streamed, through
//! [`DeviceWeights::run_blocks`] ([`Graphs::run_blocks`]).

use std::marker::PhantomData;

use crate::ggml::{
    Backend, Buffer, Context, GgmlError, Graph, GraphAllocator, GraphSet, GraphSetParts, Tensor,
};

use super::accountant::{compute_meter, Accountant, Lease};
use super::device::{DeviceWeights, StreamStats};

/// Room for the graphs of one key: tensors and nodes per graph, and how many graphs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GraphSizes {
    /// Tensors of the metadata context all graphs are built in.
    pub tensors: usize,
    /// Nodes of one graph.
    pub nodes: usize,
    /// Graphs (1 unless staged).
    pub graphs: usize,
}

impl GraphSizes {
    /// One graph of up to `nodes` nodes (and as many tensors).
    pub fn single(nodes: usize) -> GraphSizes {
        GraphSizes {
            tensors: nodes,
            nodes,
            graphs: 1,
        }
    }
}

/// The graphs of one key and the memory of their state.
struct Entry<'w> {
    key: Vec<usize>,
    set: GraphSet<'w>,
    _state: Option<Lease>,
}

/// A backend, its graph allocator with the compute meter, and the graphs of the last key.
pub struct GraphRunner<'w> {
    backend: Backend,
    alloc: GraphAllocator,
    /// What the leases are named after ("unet": "unet compute", "unet activations").
    name: String,
    accountant: Option<Accountant>,
    cache: Option<Entry<'w>>,
    /// The graph of the cached entry the allocator placed last: computing it again needs no
    /// new placement.
    placed: Option<usize>,
    builds: usize,
    /// Graphs inserted and not yet handed out by [`GraphRunner::cached`].
    fresh: bool,
}

impl<'w> GraphRunner<'w> {
    /// A runner computing on `backend`, metering nothing.
    pub fn new(backend: Backend) -> Result<GraphRunner<'w>, GgmlError> {
        Ok(GraphRunner {
            alloc: backend.graph_allocator()?,
            backend,
            name: "model".into(),
            accountant: None,
            cache: None,
            placed: None,
            builds: 0,
            fresh: false,
        })
    }

    /// A runner on the CPU backend with `threads` threads.
    pub fn cpu(threads: usize) -> Result<GraphRunner<'w>, GgmlError> {
        GraphRunner::new(Backend::cpu(threads)?)
    }

    /// The same runner, accounting its compute buffer and state in `acct`.
    pub fn with_accountant(mut self, acct: Option<&Accountant>) -> GraphRunner<'w> {
        self.set_accountant(acct);
        self
    }

    /// Accounts the compute buffer (lease "NAME compute", kept equal to the allocator's
    /// buffer) and the graphs' state ("NAME activations" and the like) in `acct` from now on.
    /// Drops the cached graphs.
    pub fn set_accountant(&mut self, acct: Option<&Accountant>) {
        self.accountant = acct.cloned();
        self.install_meter();
        self.invalidate();
    }

    /// Names the leases after `name` (the model: "unet", "dit", ...).
    pub fn set_name(&mut self, name: &str) {
        if self.name != name {
            self.name = name.to_string();
            self.install_meter();
        }
    }

    fn install_meter(&mut self) {
        let what = format!("{} compute", self.name);
        self.alloc
            .set_meter(self.accountant.as_ref().map(|a| compute_meter(a, &what)));
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn is_cpu(&self) -> bool {
        self.backend.is_cpu()
    }

    pub fn accountant(&self) -> Option<&Accountant> {
        self.accountant.as_ref()
    }

    /// Drops the cached graphs (the model changed how it builds them: attention, adapters).
    pub fn invalidate(&mut self) {
        self.cache = None;
        self.placed = None;
        self.fresh = false;
    }

    /// Frees the compute buffer and the cached graphs, for a model done for now (an encoder
    /// after its prompts): the next computation allocates them again.
    pub fn release(&mut self) -> Result<(), GgmlError> {
        self.invalidate();
        self.alloc = self.backend.graph_allocator()?;
        self.install_meter();
        Ok(())
    }

    /// Bytes of the allocator's compute buffer (it grows to the largest graph computed).
    pub fn compute_bytes(&self) -> usize {
        self.alloc.buffer_size()
    }

    /// How many times graphs were built (a cache miss each).
    pub fn builds(&self) -> usize {
        self.builds
    }

    /// The compute buffer `graphs` need together, sized by a fresh allocator of this backend
    /// (nothing is computed, nothing is leased).
    pub fn measure<'g>(
        &self,
        graphs: impl IntoIterator<Item = Graph<'g>>,
    ) -> Result<usize, GgmlError> {
        let mut alloc = self.backend.graph_allocator()?;
        for g in graphs {
            alloc.reserve(&g)?;
        }
        Ok(alloc.buffer_size())
    }

    /// A buffer of `bytes` on this backend, leased as "NAME `what`" when metered.
    pub fn state_buffer(
        &self,
        what: &str,
        bytes: usize,
    ) -> Result<(Buffer<'static>, Option<Lease>), GgmlError> {
        let lease = match &self.accountant {
            Some(a) => Some(
                a.lease(&format!("{} {what}", self.name), bytes as u64)
                    .map_err(|e| GgmlError::Refused(e.into()))?,
            ),
            None => None,
        };
        Ok((self.backend.alloc_buffer(bytes)?, lease))
    }

    /// The graphs for `key`: the cached ones, or (another key, or none yet) the old ones
    /// dropped and new ones built by `f` in a context of `sizes`, their state tensors placed
    /// in a buffer leased as "NAME `state`". Models, whose builders borrow the model, do the
    /// same in steps: [`GraphRunner::lookup`], [`GraphRunner::build`],
    /// [`GraphRunner::insert`], [`GraphRunner::cached`].
    pub fn graphs<E>(
        &mut self,
        key: &[usize],
        sizes: GraphSizes,
        state: &str,
        f: impl for<'c> FnOnce(&'c Context, PhantomData<&'c &'w ()>) -> Result<GraphSetParts<'c>, E>,
    ) -> Result<Graphs<'_, 'w>, E>
    where
        E: From<GgmlError>,
    {
        if !self.lookup(key) {
            let built = self.build(sizes, state, f)?;
            self.insert(key, built);
        }
        Ok(self.cached()?)
    }

    /// Whether graphs for `key` are cached. When they are not, the cached ones (of another
    /// key) are dropped now, so that their state is given back before new graphs lease theirs.
    pub fn lookup(&mut self, key: &[usize]) -> bool {
        let hit = self.cache.as_ref().map(|e| e.key.as_slice()) == Some(key);
        if !hit {
            self.invalidate();
        }
        hit
    }

    /// Builds graphs with `f` in a context of `sizes`, their state tensors placed in a buffer
    /// of this backend leased as "NAME `state`" ([`GraphSet::build`]).
    pub fn build<E>(
        &self,
        sizes: GraphSizes,
        state: &str,
        f: impl for<'c> FnOnce(&'c Context, PhantomData<&'c &'w ()>) -> Result<GraphSetParts<'c>, E>,
    ) -> Result<Built<'w>, E>
    where
        E: From<GgmlError>,
    {
        let mut lease = None;
        let lease_slot = &mut lease;
        let set = GraphSet::build(
            sizes.tensors,
            sizes.nodes,
            sizes.graphs,
            self.backend.alignment(),
            |bytes| -> Result<Buffer<'static>, E> {
                let (buf, l) = self.state_buffer(state, bytes)?;
                *lease_slot = l;
                Ok(buf)
            },
            f,
        )?;
        Ok(Built { set, lease })
    }

    /// As [`GraphRunner::build`], over a state buffer of `state_bytes` (leased as "NAME
    /// `state`") that `f` places the state tensors in itself ([`GraphSet::build_over`]).
    pub fn build_over<E>(
        &self,
        sizes: GraphSizes,
        state: &str,
        state_bytes: usize,
        f: impl for<'c> FnOnce(
            &'c Context,
            &'c Buffer<'c>,
            PhantomData<&'c &'w ()>,
        ) -> Result<GraphSetParts<'c>, E>,
    ) -> Result<Built<'w>, E>
    where
        E: From<GgmlError>,
    {
        let (buf, lease) = self.state_buffer(state, state_bytes)?;
        let set = GraphSet::build_over(sizes.tensors, sizes.nodes, sizes.graphs, buf, f)?;
        Ok(Built { set, lease })
    }

    /// Caches `built` as the graphs of `key` (replacing any others).
    pub fn insert(&mut self, key: &[usize], built: Built<'w>) {
        self.invalidate();
        self.builds += 1;
        self.fresh = true;
        let set = built.set;
        tracing::debug!(
            runner = %self.name,
            ?key,
            graphs = set.len(),
            nodes = set.graph(0).n_nodes(),
            state_bytes = set.state_bytes(),
            "graphs built"
        );
        self.cache = Some(Entry {
            key: key.to_vec(),
            set,
            _state: built.lease,
        });
    }

    /// The cached graphs, to fill inputs and compute.
    pub fn cached(&mut self) -> Result<Graphs<'_, 'w>, GgmlError> {
        if self.cache.is_none() {
            return Err(GgmlError::Backend(format!(
                "{}: no graphs built",
                self.name
            )));
        }
        let fresh = std::mem::take(&mut self.fresh);
        Ok(Graphs {
            runner: self,
            fresh,
        })
    }
}

/// Graphs built by [`GraphRunner::build`], not cached yet, and the lease of their state.
pub struct Built<'w> {
    set: GraphSet<'w>,
    lease: Option<Lease>,
}

impl<'w> Built<'w> {
    /// The graphs (to measure them, [`GraphRunner::measure`]).
    pub fn set(&self) -> &GraphSet<'w> {
        &self.set
    }
}

/// The cached graphs of one key, borrowed from their runner to fill inputs and compute.
pub struct Graphs<'r, 'w> {
    runner: &'r mut GraphRunner<'w>,
    fresh: bool,
}

impl<'w> Graphs<'_, 'w> {
    fn set(&self) -> &GraphSet<'w> {
        &self.runner.cache.as_ref().expect("graphs are cached").set
    }

    /// Whether the graphs were built since the last [`GraphRunner::cached`] (state set once,
    /// like rope tables, is still to be filled).
    pub fn fresh(&self) -> bool {
        self.fresh
    }

    /// How many graphs.
    pub fn len(&self) -> usize {
        self.set().len()
    }

    pub fn is_empty(&self) -> bool {
        self.set().is_empty()
    }

    /// The `i`-th tensor the builder kept.
    pub fn tensor(&self, i: usize) -> Result<Tensor<'_>, GgmlError> {
        self.set()
            .tensor(i)
            .ok_or_else(|| GgmlError::Backend(format!("the graphs keep no tensor {i}")))
    }

    /// Graph `i`.
    pub fn graph(&self, i: usize) -> Graph<'_> {
        self.set().graph(i)
    }

    /// The state buffer, if the graphs have one.
    pub fn state_buffer(&self) -> Option<&Buffer<'static>> {
        self.set().state_buffer()
    }

    /// Places graph `i`'s intermediates in the compute buffer (metered) unless it is the graph
    /// placed last, so that its inputs can be set.
    pub fn place(&mut self, i: usize) -> Result<(), GgmlError> {
        let r = &mut *self.runner;
        if r.placed == Some(i) {
            return Ok(());
        }
        r.placed = None;
        let set = &r.cache.as_ref().expect("graphs are cached").set;
        r.alloc.alloc_graph(&set.graph(i))?;
        r.placed = Some(i);
        Ok(())
    }

    /// Computes graph `i` (placing it first when another graph was placed since).
    pub fn compute(&mut self, i: usize) -> Result<(), GgmlError> {
        self.place(i)?;
        let r = &mut *self.runner;
        let set = &r.cache.as_ref().expect("graphs are cached").set;
        r.backend.compute(&set.graph(i))
    }

    /// Computes graphs `first .. first + n` in order: the blocks of a denoiser, each after its
    /// weights are in their device slot when `stream` streams them.
    pub fn run_blocks<E: From<GgmlError>>(
        &mut self,
        first: usize,
        n: usize,
        stream: Option<&DeviceWeights<'_>>,
    ) -> Result<StreamStats, E> {
        let mut run = |b: usize| -> Result<(), E> { Ok(self.compute(first + b)?) };
        match stream {
            Some(dw) => dw.run_blocks(run),
            None => {
                (0..n).try_for_each(&mut run)?;
                Ok(StreamStats::default())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ggml::{tensor_get_f32, tensor_set_f32};
    use crate::runtime::OverBudget;

    /// y = 2 x + 1 over `n` values, one graph.
    fn double<'r, 'w>(r: &'r mut GraphRunner<'w>, n: usize) -> Result<Graphs<'r, 'w>, GgmlError> {
        r.graphs(&[n], GraphSizes::single(16), "state", |ctx, _| {
            let x = ctx.new_f32(&[n as i64]).set_input();
            let one = ctx.exp(ctx.scale(x, 0.0));
            let y = ctx.add(ctx.scale(x, 2.0), one).set_output();
            Ok(GraphSetParts {
                keep: vec![x, y],
                graphs: vec![vec![y]],
                state: vec![],
            })
        })
    }

    fn run_double(r: &mut GraphRunner<'_>, xs: &[f32]) -> Result<Vec<f32>, GgmlError> {
        let mut g = double(r, xs.len())?;
        g.place(0)?;
        tensor_set_f32(g.tensor(0)?, xs)?;
        g.compute(0)?;
        tensor_get_f32(g.tensor(1)?)
    }

    #[test]
    fn graphs_are_built_once_per_shape() {
        let mut r = GraphRunner::cpu(1).unwrap();
        assert!(double(&mut r, 4).unwrap().fresh());
        assert!(
            !double(&mut r, 4).unwrap().fresh(),
            "same shape: a cache hit"
        );
        assert_eq!(r.builds(), 1);
        assert_eq!(
            run_double(&mut r, &[1.0, 2.0, 3.0, 4.0]).unwrap(),
            [3.0, 5.0, 7.0, 9.0]
        );
        assert_eq!(run_double(&mut r, &[0.0; 4]).unwrap(), [1.0; 4]);
        assert_eq!(r.builds(), 1);
        assert!(
            double(&mut r, 8).unwrap().fresh(),
            "a new shape: new graphs"
        );
        assert_eq!(run_double(&mut r, &[1.0; 8]).unwrap(), [3.0; 8]);
        assert_eq!(r.builds(), 2);
        r.invalidate();
        assert!(double(&mut r, 8).unwrap().fresh(), "invalidated: rebuilt");
    }

    #[test]
    fn compute_and_state_bytes_are_metered_into_the_accountant() {
        let acct = Accountant::with_budget(1 << 30);
        let mut r = GraphRunner::cpu(1).unwrap().with_accountant(Some(&acct));
        r.set_name("toy");
        let n = 1 << 16;
        {
            let mut g = r
                .graphs(&[n], GraphSizes::single(16), "activations", |ctx, _| {
                    let x = ctx.new_f32(&[n as i64]).set_input();
                    let s = ctx.new_f32(&[n as i64]);
                    let y = ctx.cpy(ctx.scale(x, 3.0), s);
                    Ok::<_, GgmlError>(GraphSetParts {
                        keep: vec![x, s],
                        graphs: vec![vec![y]],
                        state: vec![s],
                    })
                })
                .unwrap();
            g.place(0).unwrap();
            tensor_set_f32(g.tensor(0).unwrap(), &vec![1.0; n]).unwrap();
            g.compute(0).unwrap();
            assert!(tensor_get_f32(g.tensor(1).unwrap())
                .unwrap()
                .iter()
                .all(|&v| v == 3.0));
        }
        let live: std::collections::BTreeMap<_, _> = acct.peak_breakdown().into_iter().collect();
        assert_eq!(live.get("toy activations"), Some(&(4 * n as u64)));
        assert_eq!(live.get("toy compute"), Some(&(r.compute_bytes() as u64)));
        assert!(
            r.compute_bytes() >= 4 * n,
            "the input lives in the compute buffer"
        );
        assert_eq!(acct.used(), 4 * n as u64 + r.compute_bytes() as u64);
        drop(r);
        assert_eq!(acct.used(), 0, "every lease is given back with the runner");
    }

    #[test]
    fn an_over_budget_compute_buffer_is_refused_with_its_type() {
        let acct = Accountant::with_budget(1 << 10);
        let mut r = GraphRunner::cpu(1).unwrap().with_accountant(Some(&acct));
        r.set_name("toy");
        let e = run_double(&mut r, &vec![1.0; 1 << 12]).unwrap_err();
        let GgmlError::Refused(src) = &e else {
            panic!("not a refusal: {e}")
        };
        let o = src.downcast_ref::<OverBudget>().expect("an OverBudget");
        assert_eq!((o.what.as_str(), o.budget), ("toy compute", 1 << 10));
        assert!(o.bytes >= 4 << 12);
        assert_eq!(acct.used(), 0, "nothing taken");
        // A shape that fits runs (on a runner whose buffer did not grow for the refused one).
        let mut r = GraphRunner::cpu(1).unwrap().with_accountant(Some(&acct));
        assert_eq!(run_double(&mut r, &[1.0; 8]).unwrap(), [3.0; 8]);
        assert!(acct.used() > 0 && acct.used() <= 1 << 10);
    }

    #[test]
    fn stage_graphs_run_in_order_through_one_allocator() {
        let mut r = GraphRunner::cpu(1).unwrap();
        let stages = 3;
        let mut g = r
            .graphs(
                &[4],
                GraphSizes {
                    tensors: 32,
                    nodes: 16,
                    graphs: stages + 2,
                },
                "activations",
                |ctx, _| {
                    let x = ctx.new_f32(&[4]).set_input();
                    let s = ctx.new_f32(&[4]);
                    let mut graphs = vec![vec![ctx.cpy(x, s)]];
                    for _ in 0..stages {
                        graphs.push(vec![ctx.cpy(ctx.scale(s, 2.0), s)]);
                    }
                    let y = ctx.add(s, s).set_output();
                    graphs.push(vec![y]);
                    Ok::<_, GgmlError>(GraphSetParts {
                        keep: vec![x, y],
                        graphs,
                        state: vec![s],
                    })
                },
            )
            .unwrap();
        assert_eq!(g.len(), stages + 2);
        g.place(0).unwrap();
        tensor_set_f32(g.tensor(0).unwrap(), &[1.0, 2.0, 3.0, 4.0]).unwrap();
        g.compute(0).unwrap();
        let stats = g.run_blocks::<GgmlError>(1, stages, None).unwrap();
        assert_eq!(stats, StreamStats::default());
        g.compute(stages + 1).unwrap();
        assert_eq!(
            tensor_get_f32(g.tensor(1).unwrap()).unwrap(),
            [16.0, 32.0, 48.0, 64.0]
        );
    }
}
