//! SDXL stage benchmark on the CPU: seconds per UNet forward and peak memory at the real SDXL
//! shapes (random weights), for a few weight types and resolutions, and the VAE decode.
//!
//! ```text
//! cargo bench --bench sdxl -- [--res 512,1024] [--types f16,q8_0,q4_k] [--steps N]
//!     [--threads N] [--attention auto|flash|mulmat] [--vae] [--vae-only] [--vae-tiled]
//! ```
//!
//! The UNet is written as an F16 safetensors file under diffusers names with the 1680 shapes of
//! stabilityai/stable-diffusion-xl-base-1.0 (tests/fixtures/unet_sdxl/sdxl_shapes.json), random
//! values scaled by 1/sqrt(fan_in) so activations stay finite; the quantized types are made from
//! it by the converter library (the code of `nijigen convert --type T`), and every file is
//! loaded through the weight store (memory map, diffusers -> ldm names) as users' files are.
//! The VAE decoder is written the same way at SDXL's shapes (channels 128/256/512/512, 3 res
//! blocks per decoder level) in F16, as it is stored in checkpoints.
//!
//! `--steps N` is the number of timed forwards per case after the first (cold) one, which also
//! builds and allocates the graph (none when the first took over 3 minutes; the first's compute
//! time, less the graph build, is then reported); a CFG step is two batch-1 forwards. Peak RSS counts the
//! weights' mapped pages as well as anonymous memory (the compute buffer); peak anonymous
//! memory is reported apart. Results on stdout, progress on stderr. Prints figures; asserts
//! nothing. Files go to a temp dir (`TMPDIR`), about 5 GiB for the F16 UNet plus one converted
//! file at a time.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::Layer;

use nijigen::models::unet_sdxl::{sdxl_added_cond, SdxlUnet};
use nijigen::models::vae_sdxl::SdxlVae;
use nijigen::models::UnetAttention;
use nijigen::quantize::{convert, ConvertOptions, Progress, Target};
use nijigen::runtime::WeightStore;

const SHAPES: &str = "tests/fixtures/unet_sdxl/sdxl_shapes.json";
/// CLIP-L + OpenCLIP-G hidden states concatenated: 77 tokens of 768 + 1280.
const TOKENS: usize = 77;
const CONTEXT_DIM: usize = 2048;
/// First forwards longer than this are not repeated.
const LONG_FORWARD_S: f64 = 180.0;

// ---------------------------------------------------------------------------------------------
// Arguments

struct Args {
    res: Vec<usize>,
    types: Vec<String>,
    steps: usize,
    threads: usize,
    attention: String,
    vae: bool,
    vae_only: bool,
    vae_tiled: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        res: vec![512, 1024],
        types: vec!["f16".into(), "q8_0".into(), "q4_k".into()],
        steps: 2,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        attention: "auto".into(),
        vae: false,
        vae_only: false,
        vae_tiled: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--res" => {
                a.res = value("--res")?
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse::<usize>()
                            .map_err(|e| format!("--res {s}: {e}"))
                    })
                    .collect::<Result<_, _>>()?;
                if let Some(r) = a.res.iter().find(|&&r| r == 0 || r % 32 != 0) {
                    return Err(format!("--res {r}: must be a positive multiple of 32"));
                }
            }
            "--types" => {
                a.types = value("--types")?
                    .split(',')
                    .map(|s| s.trim().to_ascii_lowercase())
                    .collect();
                for t in &a.types {
                    Target::parse(t)?;
                }
            }
            "--steps" => {
                a.steps = value("--steps")?
                    .parse()
                    .map_err(|e| format!("--steps: {e}"))?
            }
            "--threads" => {
                a.threads = value("--threads")?
                    .parse()
                    .map_err(|e| format!("--threads: {e}"))?
            }
            "--attention" => {
                a.attention = value("--attention")?;
                if !["auto", "flash", "mulmat"].contains(&a.attention.as_str()) {
                    return Err(format!(
                        "--attention {}: auto, flash or mulmat",
                        a.attention
                    ));
                }
            }
            "--vae" => a.vae = true,
            "--vae-only" => {
                a.vae = true;
                a.vae_only = true;
            }
            "--vae-tiled" => a.vae_tiled = true,
            // `cargo bench` passes --bench to harness-less benches.
            "--bench" => {}
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    Ok(a)
}

// ---------------------------------------------------------------------------------------------
// Memory

fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Peak VmRSS and RssAnon over a stretch of the run: the kernel's high-water mark (reset at the
/// start through /proc/self/clear_refs) and a 10 ms sampler for the anonymous part.
struct PeakMemory {
    rss: Arc<AtomicU64>,
    anon: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    sampler: Option<std::thread::JoinHandle<()>>,
}

impl PeakMemory {
    fn start() -> PeakMemory {
        // "5" resets VmHWM (Linux >= 4.0); without it the sampler's figure stands.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let rss = Arc::new(AtomicU64::new(0));
        let anon = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (rss, anon, stop) = (rss.clone(), anon.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    rss.fetch_max(status_kib("VmRSS:"), Ordering::Relaxed);
                    anon.fetch_max(status_kib("RssAnon:"), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        PeakMemory {
            rss,
            anon,
            stop,
            sampler: Some(sampler),
        }
    }

    /// (peak RSS MiB, peak anonymous MiB).
    fn finish(mut self) -> (f64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = self.sampler.take() {
            let _ = s.join();
        }
        let rss = self.rss.load(Ordering::Relaxed).max(status_kib("VmHWM:"));
        (
            rss as f64 / 1024.0,
            self.anon.load(Ordering::Relaxed) as f64 / 1024.0,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Graph build time, from the UNet's "unet graph built" debug event

#[derive(Default)]
struct GraphBuilt {
    at: Option<Instant>,
    compute_bytes: u64,
}

struct GraphBuiltLayer(Arc<Mutex<GraphBuilt>>);

struct Fields {
    message: bool,
    compute_bytes: u64,
}

impl tracing::field::Visit for Fields {
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if field.name() == "compute_bytes" {
            self.compute_bytes = value;
        }
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.record_u64(field, value.max(0) as u64);
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" && format!("{value:?}") == "unet graph built" {
            self.message = true;
        }
    }
}

impl<S: tracing::Subscriber> Layer<S> for GraphBuiltLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: LayerContext<'_, S>) {
        let mut f = Fields {
            message: false,
            compute_bytes: 0,
        };
        event.record(&mut f);
        if f.message {
            if let Ok(mut g) = self.0.lock() {
                g.at = Some(Instant::now());
                g.compute_bytes = f.compute_bytes;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Synthetic weight files

/// A shape in PyTorch order with how each value is drawn.
struct Spec {
    name: String,
    shape: Vec<u64>,
}

/// Fills `out` (F16 bytes) for tensor `index`: norm scales 1, biases 0, weights uniform with
/// standard deviation 1/sqrt(fan_in).
fn fill(spec: &Spec, index: u64, out: &mut [u8]) {
    let is_norm = spec.name.contains("norm") && spec.name.ends_with(".weight");
    if spec.shape.len() == 1 {
        let v = half::f16::from_f32(if is_norm { 1.0 } else { 0.0 }).to_le_bytes();
        for c in out.chunks_exact_mut(2) {
            c.copy_from_slice(&v);
        }
        return;
    }
    let fan_in: u64 = spec.shape[1..].iter().product();
    let a = (3.0 / fan_in.max(1) as f32).sqrt();
    out.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(chunk, bytes)| {
            let mut s = (index + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ^ (chunk as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            for c in bytes.chunks_exact_mut(2) {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
                c.copy_from_slice(&half::f16::from_f32(u * a).to_le_bytes());
            }
        });
}

/// Writes an F16 safetensors file of `specs`; returns the data bytes.
fn write_safetensors(path: &Path, specs: &[Spec]) -> std::io::Result<u64> {
    let mut header = serde_json::Map::new();
    let mut off = 0u64;
    for s in specs {
        let n = s.shape.iter().product::<u64>() * 2;
        header.insert(
            s.name.clone(),
            serde_json::json!({"dtype": "F16", "shape": s.shape, "data_offsets": [off, off + n]}),
        );
        off += n;
    }
    let mut header = serde_json::Value::Object(header).to_string();
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut w = BufWriter::with_capacity(1 << 22, File::create(path)?);
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(header.as_bytes())?;
    let mut buf = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        buf.resize(s.shape.iter().product::<u64>() as usize * 2, 0);
        fill(s, i as u64, &mut buf);
        w.write_all(&buf)?;
    }
    w.flush()?;
    Ok(off)
}

fn unet_specs() -> Result<Vec<Spec>, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(SHAPES);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let shapes: Vec<(String, Vec<u64>)> =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(shapes
        .into_iter()
        .map(|(name, shape)| Spec { name, shape })
        .collect())
}

/// The SDXL VAE decoder under ldm names (AutoencoderKL: block_out_channels 128/256/512/512,
/// layers_per_block 2, so 3 res blocks per decoder level; latent 4, image 3).
fn vae_decoder_specs() -> Vec<Spec> {
    let ch = [128u64, 256, 512, 512];
    let mut v = Vec::new();
    let mut push = |name: String, shape: &[u64]| {
        v.push(Spec {
            name,
            shape: shape.to_vec(),
        })
    };
    let conv = |p: &mut dyn FnMut(String, &[u64]), n: &str, o: u64, i: u64, k: u64| {
        p(format!("{n}.weight"), &[o, i, k, k]);
        p(format!("{n}.bias"), &[o]);
    };
    let norm = |p: &mut dyn FnMut(String, &[u64]), n: &str, c: u64| {
        p(format!("{n}.weight"), &[c]);
        p(format!("{n}.bias"), &[c]);
    };
    let resnet = |p: &mut dyn FnMut(String, &[u64]), n: &str, i: u64, o: u64| {
        norm(p, &format!("{n}.norm1"), i);
        conv(p, &format!("{n}.conv1"), o, i, 3);
        norm(p, &format!("{n}.norm2"), o);
        conv(p, &format!("{n}.conv2"), o, o, 3);
        if i != o {
            conv(p, &format!("{n}.nin_shortcut"), o, i, 1);
        }
    };
    let top = ch[3];
    conv(&mut push, "post_quant_conv", 4, 4, 1);
    conv(&mut push, "decoder.conv_in", top, 4, 3);
    resnet(&mut push, "decoder.mid.block_1", top, top);
    norm(&mut push, "decoder.mid.attn_1.norm", top);
    for q in ["q", "k", "v", "proj_out"] {
        conv(&mut push, &format!("decoder.mid.attn_1.{q}"), top, top, 1);
    }
    resnet(&mut push, "decoder.mid.block_2", top, top);
    let mut prev = top;
    for i in (0..4).rev() {
        for b in 0..3 {
            resnet(&mut push, &format!("decoder.up.{i}.block.{b}"), prev, ch[i]);
            prev = ch[i];
        }
        if i > 0 {
            conv(
                &mut push,
                &format!("decoder.up.{i}.upsample.conv"),
                ch[i],
                ch[i],
                3,
            );
        }
    }
    norm(&mut push, "decoder.norm_out", ch[0]);
    conv(&mut push, "decoder.conv_out", 3, ch[0], 3);
    v
}

// ---------------------------------------------------------------------------------------------
// Cases

fn uniform(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// The 1-minute load average (the CPU is shared: other processes slow the figures down).
fn load1() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

struct Row {
    ty: String,
    res: usize,
    attention: &'static str,
    weight_bytes: u64,
    build_s: f64,
    first_s: f64,
    forwards: Vec<f64>,
    compute_bytes: u64,
    rss_mib: f64,
    anon_mib: f64,
    finite: bool,
    load: String,
}

fn attention_name(a: UnetAttention) -> &'static str {
    match a {
        UnetAttention::Flash => "flash",
        UnetAttention::MulMat => "mulmat",
    }
}

struct Inputs {
    context: Vec<f32>,
    y: Vec<f32>,
}

/// One timed forward.
struct Timed {
    secs: f64,
    /// Seconds spent building and allocating the graph, and its compute buffer bytes, when
    /// this forward built it.
    build: Option<(f64, u64)>,
    finite: bool,
}

fn timed_forward(
    unet: &mut SdxlUnet<'_>,
    built: &Arc<Mutex<GraphBuilt>>,
    inputs: &Inputs,
    latent: &[f32],
    side: usize,
) -> Result<Timed, String> {
    if let Ok(mut g) = built.lock() {
        g.at = None;
    }
    let t = Instant::now();
    let out = unet
        .forward(latent, 500.0, &inputs.context, &inputs.y, side, side)
        .map_err(|e| e.to_string())?;
    let secs = t.elapsed().as_secs_f64();
    let build = built.lock().ok().and_then(|g| {
        g.at.map(|at| (at.duration_since(t).as_secs_f64(), g.compute_bytes))
    });
    Ok(Timed {
        secs,
        build,
        finite: out.iter().all(|v| v.is_finite()),
    })
}

/// Runs every resolution on one loaded UNet (so the weights are paged in once).
#[allow(clippy::too_many_arguments)]
fn bench_unet(
    path: &Path,
    ty: &str,
    args: &Args,
    attention: &mut Option<UnetAttention>,
    built: &Arc<Mutex<GraphBuilt>>,
    inputs: &Inputs,
    rows: &mut Vec<Row>,
) -> Result<(), String> {
    let store = WeightStore::open_path(path).map_err(|e| e.to_string())?;
    let set = store.load_cpu(|_| true).map_err(|e| e.to_string())?;
    let weight_bytes = set.data_bytes();
    let mut unet = SdxlUnet::new(&set, "", args.threads).map_err(|e| e.to_string())?;
    eprintln!(
        "[{ty}] loaded {} tensors, {:.0} MiB of weights ({} copied)",
        set.len(),
        mib(weight_bytes),
        set.copied_bytes()
    );
    for &res in &args.res {
        let side = res / 8;
        let latent = uniform(4 * side * side, 7, 1.0);
        if attention.is_none() {
            // Measure both once, warm, at this resolution; keep the faster.
            let mut best = (f64::INFINITY, UnetAttention::MulMat);
            for a in [UnetAttention::MulMat, UnetAttention::Flash] {
                unet.set_attention(a);
                eprintln!("[{ty} {res}] attention {}: cold forward", attention_name(a));
                timed_forward(&mut unet, built, inputs, &latent, side)?;
                eprintln!("[{ty} {res}] attention {}: warm forward", attention_name(a));
                let s = timed_forward(&mut unet, built, inputs, &latent, side)?.secs;
                println!(
                    "attention at {res}px ({ty}): {} {s:.2} s per forward",
                    attention_name(a)
                );
                if s < best.0 {
                    best = (s, a);
                }
            }
            println!("chosen attention: {}", attention_name(best.1));
            *attention = Some(best.1);
        }
        let a = attention.unwrap_or_default();
        // Drop any graph cached by the comparison above, so that the first timed forward
        // builds and allocates its graph inside the memory window.
        unet.set_attention(match a {
            UnetAttention::Flash => UnetAttention::MulMat,
            UnetAttention::MulMat => UnetAttention::Flash,
        });
        unet.set_attention(a);
        let mem = PeakMemory::start();
        eprintln!(
            "[{ty} {res}] forward 1/{} (builds the graph), load {}",
            args.steps + 1,
            load1()
        );
        let t1 = timed_forward(&mut unet, built, inputs, &latent, side)?;
        let (first, mut finite) = (t1.secs, t1.finite);
        let (build_s, compute_bytes) = t1.build.unwrap_or((0.0, 0));
        eprintln!("[{ty} {res}]   {first:.1} s (graph build+alloc {build_s:.3} s)");
        let mut forwards = Vec::new();
        // A forward of more than 3 minutes is timed once: its cold cost is mostly compute.
        let steps = if first > LONG_FORWARD_S {
            eprintln!("[{ty} {res}]   over {LONG_FORWARD_S} s: no further forwards");
            0
        } else {
            args.steps
        };
        for i in 0..steps {
            eprintln!("[{ty} {res}] forward {}/{}", i + 2, args.steps + 1);
            let t = timed_forward(&mut unet, built, inputs, &latent, side)?;
            let s = t.secs;
            eprintln!("[{ty} {res}]   {s:.1} s");
            finite &= t.finite;
            forwards.push(s);
        }
        let (rss_mib, anon_mib) = mem.finish();
        rows.push(Row {
            ty: ty.to_string(),
            res,
            attention: attention_name(a),
            weight_bytes,
            build_s,
            first_s: first,
            forwards,
            compute_bytes,
            rss_mib,
            anon_mib,
            finite,
            load: load1(),
        });
    }
    Ok(())
}

fn print_unet_table(rows: &[Row]) {
    println!();
    println!(
        "| type | res | attention | weights MiB | graph build+alloc s | 1st forward s | forwards averaged | s/forward | s/step (CFG, 2 fwd) | compute buffer MiB | peak RSS MiB | peak anon MiB | finite | load (1 min) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        // Later forwards when there are any; otherwise the first without its graph build.
        let (n, per) = if r.forwards.is_empty() {
            (1, r.first_s - r.build_s)
        } else {
            (
                r.forwards.len(),
                r.forwards.iter().sum::<f64>() / r.forwards.len() as f64,
            )
        };
        println!(
            "| {} | {}x{} | {} | {:.0} | {:.3} | {:.1} | {}{} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} | {} | {} |",
            r.ty,
            r.res,
            r.res,
            r.attention,
            mib(r.weight_bytes),
            r.build_s,
            r.first_s,
            n,
            if r.forwards.is_empty() { " (1st)" } else { "" },
            per,
            2.0 * per,
            mib(r.compute_bytes),
            r.rss_mib,
            r.anon_mib,
            if r.finite { "yes" } else { "NO" },
            r.load
        );
    }
}

fn bench_vae(dir: &Path, args: &Args) -> Result<(), String> {
    let path = dir.join("vae.safetensors");
    let specs = vae_decoder_specs();
    eprintln!("[vae] writing {} F16 tensors", specs.len());
    write_safetensors(&path, &specs).map_err(|e| e.to_string())?;
    let store = WeightStore::open_path(&path).map_err(|e| e.to_string())?;
    let set = store.load_cpu(|_| true).map_err(|e| e.to_string())?;
    let mut vae = SdxlVae::new(&set, "", args.threads).map_err(|e| e.to_string())?;
    let c = vae.config();
    eprintln!(
        "[vae] channels {:?}, {} res blocks, {:.0} MiB of weights",
        c.channels,
        c.res_blocks + 1,
        mib(set.data_bytes())
    );
    let mut cases: Vec<(usize, Option<(usize, usize)>)> =
        args.res.iter().map(|&r| (r, None)).collect();
    if args.vae_tiled {
        cases.extend(
            args.res
                .iter()
                .filter(|&&r| r > 512)
                .map(|&r| (r, Some((64, 8)))),
        );
    }
    println!();
    println!(
        "| VAE decode | weights MiB | seconds | peak RSS MiB | peak anon MiB | finite | load (1 min) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (res, tiled) in cases {
        let side = res / 8;
        let latent = uniform(4 * side * side, 11, 1.0);
        let label = match tiled {
            None => format!("{res}x{res}"),
            Some((t, o)) => format!("{res}x{res} tiled {t}/{o}"),
        };
        eprintln!("[vae {label}] decoding");
        let mem = PeakMemory::start();
        let t = Instant::now();
        let img = match tiled {
            None => vae.decode(&latent, side, side),
            Some((tile, overlap)) => vae.decode_tiled(&latent, side, side, tile, overlap),
        }
        .map_err(|e| e.to_string())?;
        let secs = t.elapsed().as_secs_f64();
        let (rss, anon) = mem.finish();
        eprintln!("[vae {label}]   {secs:.1} s");
        println!(
            "| {label} | {:.0} | {secs:.1} | {rss:.0} | {anon:.0} | {} | {} |",
            mib(set.data_bytes()),
            if img.iter().all(|v| v.is_finite()) {
                "yes"
            } else {
                "NO"
            },
            load1()
        );
    }
    drop(vae);
    drop(set);
    drop(store);
    let _ = std::fs::remove_file(&path);
    Ok(())
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let built = Arc::new(Mutex::new(GraphBuilt::default()));
    let subscriber = tracing_subscriber::registry().with(
        GraphBuiltLayer(built.clone()).with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target("nijigen", tracing::Level::DEBUG),
        ),
    );
    tracing::subscriber::set_global_default(subscriber).map_err(|e| e.to_string())?;
    println!(
        "SDXL stage on the CPU: {} threads, resolutions {:?}, types {:?}, {} timed forwards after the first",
        args.threads, args.res, args.types, args.steps
    );
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    if args.vae {
        bench_vae(dir.path(), &args)?;
    }
    if args.vae_only {
        return Ok(());
    }
    let inputs = Inputs {
        context: uniform(TOKENS * CONTEXT_DIM, 3, 1.0),
        y: {
            let pooled = uniform(1280, 5, 1.0);
            sdxl_added_cond(&pooled, [1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0], 2816)
                .map_err(|e| e.to_string())?
        },
    };
    let f16 = dir.path().join("unet-f16.safetensors");
    let specs = unet_specs()?;
    eprintln!(
        "[unet] writing {} F16 tensors at SDXL's shapes",
        specs.len()
    );
    let t = Instant::now();
    let bytes = write_safetensors(&f16, &specs).map_err(|e| e.to_string())?;
    eprintln!(
        "[unet] {:.0} MiB in {:.0} s",
        mib(bytes),
        t.elapsed().as_secs_f64()
    );
    let mut attention = match args.attention.as_str() {
        "flash" => Some(UnetAttention::Flash),
        "mulmat" => Some(UnetAttention::MulMat),
        _ => None,
    };
    let mut rows = Vec::new();
    for ty in &args.types {
        let path = if ty == "f16" {
            f16.clone()
        } else {
            let out: PathBuf = dir.path().join(format!("unet-{ty}.gguf"));
            eprintln!("[{ty}] converting");
            let t = Instant::now();
            let opts = ConvertOptions {
                inputs: vec![f16.clone()],
                output: out.clone(),
                target: Target::parse(ty)?,
                overrides: vec![],
                overwrite: true,
            };
            let summary = convert(&opts, |p| {
                if let Progress::Start { tensors, bytes } = p {
                    eprintln!("[{ty}]   {tensors} tensors, {:.0} MiB planned", mib(bytes));
                }
            })
            .map_err(|e| e.to_string())?;
            eprintln!(
                "[{ty}]   {:.0} MiB out in {:.0} s",
                mib(summary.file_bytes),
                t.elapsed().as_secs_f64()
            );
            out
        };
        let r = bench_unet(&path, ty, &args, &mut attention, &built, &inputs, &mut rows);
        if path != f16 {
            let _ = std::fs::remove_file(&path);
        }
        r?;
        print_unet_table(&rows);
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
