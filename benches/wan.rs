//! Wan stage benchmarks on the CPU, at the real model shapes with random weights.
//!
//! ```text
//! cargo bench --bench wan -- vae [--frames 81] [--size 480x832] [--tile N] [--overlap N]
//!                                [--decode-latent-frames N] [--dtype bf16|f16|f32] [--threads N]
//!                                [--plan-only] [--encode]
//! cargo bench --bench wan -- dit [--layers 40] [--frames 17] [--size 256x256] [--forwards 2]
//!                                [--threads N] [--dir PATH]
//!                                [--placement cpu|resident|streamed|streamed1[,...]]
//! ```
//!
//! `vae`: Wan2.1's VAE (base 96, z 16, dim_mult [1, 2, 4, 4], 2 residual blocks; the shapes of
//! `wan_2.1_vae.safetensors`, built here from the architecture) with random weights of about
//! 1/sqrt(fan_in), written as a temporary `.safetensors` in `--dtype` (BF16 like the ComfyUI
//! file) and loaded through the weight store like a user's file. Prints the planned memory
//! (compute buffer, caches, host buffers) untiled and for `--tile`, then decodes a random latent
//! of `--frames` frames (1 + 4k) at `--size` pixels: seconds per latent frame, peak RSS (VmHWM)
//! and peak anonymous RSS, and the allocator's compute bytes. `--decode-latent-frames N` decodes
//! only the first N latent frames (memory does not depend on it; time per frame is what is
//! measured). `--encode` also encodes [image, zeros] of `--frames` frames as the I2V condition.
//!
//! `dit`: the Wan2.1-I2V-14B DiT shapes (dim 5120, 40 heads, ffn 13824, in 36, text 4096, image
//! 1280, freq 256) with `--layers` of its 40 blocks, random weights quantized by our converter's
//! `q4_k_m` rules as from ComfyUI's F16 file, streamed tensor by tensor into a GGUF (no F16
//! intermediate) in `--dir` (default: the system temp dir), loaded through the weight store
//! (memory-mapped), then `--forwards` forwards at `--frames` x `--size` with 512 text tokens and
//! 257 image tokens. The GGUF is deleted at the end. `--placement`: the weights used in place
//! from the map (cpu, the default), copied once into a (simulated) device buffer (resident), or
//! streamed block by block through two slots with a copy thread (streamed) or one (streamed1):
//! prints the copy time per forward, how long the compute waited for copies, and the
//! accountant's peak; a comma-separated list runs each placement on the same file.
//!
//! `dit --cache [--reports a.json,b.json,...] [--steps 30]`: the cost of a step cache (`--cache`
//! of `nijigen video`). After the plain forwards, `--forwards` forwards that compute the blocks
//! and keep their residual (TeaCache / MagCache on a computed step), then as many that skip the
//! blocks and add the residual (a skipped TeaCache / MagCache step: embeddings and head only,
//! no block upload when streamed), and the cost of an EasyCache skip (`latent + cached change`
//! over the 16-channel latent, no DiT at all). Prints seconds per CFG step for each and their
//! extrapolation to 40 blocks (skipped + 40/layers x the blocks' share of a computed forward).
//! `--reports` reads `nijigen video --json` outputs (their `cache.pattern`: one letter per step
//! and branch, `C` computed, `s` skipped) and prints, for each, the predicted time of a run of
//! `--steps` steps at these widths with that pattern (scaled to `--steps` when the pattern is
//! longer or shorter: the skipped fraction is kept).
//!
//! Figures only; asserts nothing. Runs in the `bench` profile; `--profile dev` reuses a debug
//! build (ggml itself is optimised in both).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nijigen::formats::gguf::{GgufWriter, TensorDecl};
use nijigen::formats::{DType, GgmlType, MetaValue};
use nijigen::ggml::quantize;
use nijigen::ggml::{Backend, TensorSet};
use nijigen::models::wan_dit::BlockCache;
use nijigen::models::wan_vae::{denormalize, LATENTS_MEAN, LATENTS_STD};
use nijigen::models::{WanDit, WanVae};
use nijigen::quantize::{Rules, Target};
use nijigen::runtime::{Accountant, DeviceWeights, Residency, WeightStore};

const MIB: f64 = 1048576.0;

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

/// Samples RssAnon every 5 ms until dropped; `peak()` is the largest value seen (KiB).
struct AnonPeak {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AnonPeak {
    fn start() -> AnonPeak {
        let peak = Arc::new(AtomicU64::new(status_kib("RssAnon:")));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (peak, stop) = (peak.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(status_kib("RssAnon:"), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        AnonPeak {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    fn peak_mib(&self) -> f64 {
        self.peak
            .load(Ordering::Relaxed)
            .max(status_kib("RssAnon:")) as f64
            / 1024.0
    }
}

impl Drop for AnonPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A tiny xorshift generator for weights and inputs (reproducible, no dependency).
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    /// Roughly unit-variance noise (sum of 3 uniforms, scaled).
    fn normal(&mut self) -> f32 {
        (self.uniform() + self.uniform() + self.uniform()) * 1.0
    }
}

/// Command-line options `--key value` after the subcommand.
struct Args(HashMap<String, String>);

impl Args {
    fn parse(list: &[String]) -> Args {
        let mut map = HashMap::new();
        let mut it = list.iter().peekable();
        while let Some(a) = it.next() {
            if let Some(k) = a.strip_prefix("--") {
                let v = match it.peek() {
                    Some(v) if !v.starts_with("--") => it.next().cloned().unwrap_or_default(),
                    _ => "true".to_string(),
                };
                map.insert(k.to_string(), v);
            }
        }
        Args(map)
    }

    fn get<T: std::str::FromStr>(&self, key: &str, default: T) -> T {
        self.0
            .get(key)
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("--{key}: cannot parse '{v}'"))
            })
            .unwrap_or(default)
    }

    fn flag(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    fn size(&self, default: (usize, usize)) -> (usize, usize) {
        match self.0.get("size") {
            None => default,
            Some(s) => {
                let (h, w) = s.split_once('x').expect("--size HxW");
                (h.parse().expect("height"), w.parse().expect("width"))
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let which = args.first().cloned().unwrap_or_default();
    let opts = Args::parse(args.get(1..).unwrap_or_default());
    let threads = opts.get(
        "threads",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    match which.as_str() {
        "vae" => vae(&opts, threads),
        "dit" => dit(&opts, threads),
        _ => {
            eprintln!(
                "usage: cargo bench --bench wan -- (vae | dit) [options]; see benches/wan.rs"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// VAE

/// The tensors of Wan2.1's VAE (original names, PyTorch shapes), from the architecture of
/// Wan-Video/Wan2.1 `wan/modules/vae.py` (`WanVAE_`, dim 96, z_dim 16, dim_mult [1, 2, 4, 4],
/// num_res_blocks 2, temperal_downsample [False, True, True]).
/// A list of (name, PyTorch shape) being built.
#[derive(Default)]
struct Shapes(Vec<(String, Vec<u64>)>);

impl Shapes {
    fn push(&mut self, name: impl Into<String>, shape: Vec<u64>) {
        self.0.push((name.into(), shape));
    }

    /// `{p}.weight` [o, i, k..] and `{p}.bias` [o].
    fn conv(&mut self, p: &str, o: u64, i: u64, k: &[u64]) {
        let mut s = vec![o, i];
        s.extend_from_slice(k);
        self.push(format!("{p}.weight"), s);
        self.push(format!("{p}.bias"), vec![o]);
    }

    fn lin(&mut self, p: &str, o: u64, i: u64) {
        self.conv(p, o, i, &[]);
    }

    /// A Wan VAE residual block `i` -> `o` channels.
    fn res(&mut self, p: &str, i: u64, o: u64) {
        self.push(format!("{p}.residual.0.gamma"), vec![i, 1, 1, 1]);
        self.conv(&format!("{p}.residual.2"), o, i, &[3, 3, 3]);
        self.push(format!("{p}.residual.3.gamma"), vec![o, 1, 1, 1]);
        self.conv(&format!("{p}.residual.6"), o, o, &[3, 3, 3]);
        if i != o {
            self.conv(&format!("{p}.shortcut"), o, i, &[1, 1, 1]);
        }
    }

    /// A Wan VAE attention block of `c` channels.
    fn attn(&mut self, p: &str, c: u64) {
        self.push(format!("{p}.norm.gamma"), vec![c, 1, 1]);
        self.conv(&format!("{p}.to_qkv"), 3 * c, c, &[1, 1]);
        self.conv(&format!("{p}.proj"), c, c, &[1, 1]);
    }
}

/// The tensors of Wan2.1's VAE (original names, PyTorch shapes), from the architecture of
/// Wan-Video/Wan2.1 `wan/modules/vae.py` (`WanVAE_`, dim 96, z_dim 16, dim_mult [1, 2, 4, 4],
/// num_res_blocks 2, temperal_downsample [False, True, True]).
fn wan_vae_shapes() -> Vec<(String, Vec<u64>)> {
    let (dim, z) = (96u64, 16u64);
    let mult = [1u64, 2, 4, 4];
    let k3 = [3u64, 3, 3];
    let mut v = Shapes::default();
    // Encoder.
    let dims: Vec<u64> = std::iter::once(1).chain(mult).map(|u| dim * u).collect();
    v.conv("encoder.conv1", dims[0], 3, &k3);
    let mut n = 0;
    let tdown = [false, true, true];
    for i in 0..mult.len() {
        let (mut din, dout) = (dims[i], dims[i + 1]);
        for _ in 0..2 {
            v.res(&format!("encoder.downsamples.{n}"), din, dout);
            din = dout;
            n += 1;
        }
        if i != mult.len() - 1 {
            let p = format!("encoder.downsamples.{n}");
            v.conv(&format!("{p}.resample.1"), dout, dout, &[3, 3]);
            if tdown[i] {
                v.conv(&format!("{p}.time_conv"), dout, dout, &[3, 1, 1]);
            }
            n += 1;
        }
    }
    let top = *dims.last().unwrap();
    v.res("encoder.middle.0", top, top);
    v.attn("encoder.middle.1", top);
    v.res("encoder.middle.2", top, top);
    v.push("encoder.head.0.gamma", vec![top, 1, 1, 1]);
    v.conv("encoder.head.2", 2 * z, top, &k3);
    v.conv("conv1", 2 * z, 2 * z, &[1, 1, 1]);
    v.conv("conv2", z, z, &[1, 1, 1]);
    // Decoder.
    let dims: Vec<u64> = std::iter::once(mult[3])
        .chain(mult.iter().rev().copied())
        .map(|u| dim * u)
        .collect(); // [384, 384, 384, 192, 96]
    v.conv("decoder.conv1", dims[0], z, &k3);
    v.res("decoder.middle.0", dims[0], dims[0]);
    v.attn("decoder.middle.1", dims[0]);
    v.res("decoder.middle.2", dims[0], dims[0]);
    let tup = [true, true, false];
    let mut n = 0;
    for i in 0..mult.len() {
        let (mut din, dout) = (dims[i], dims[i + 1]);
        if i > 0 {
            din /= 2;
        }
        for _ in 0..3 {
            v.res(&format!("decoder.upsamples.{n}"), din, dout);
            din = dout;
            n += 1;
        }
        if i != mult.len() - 1 {
            let p = format!("decoder.upsamples.{n}");
            if tup[i] {
                v.conv(&format!("{p}.time_conv"), 2 * dout, dout, &[3, 1, 1]);
            }
            v.conv(&format!("{p}.resample.1"), dout / 2, dout, &[3, 3]);
            n += 1;
        }
    }
    v.push("decoder.head.0.gamma", vec![dims[4], 1, 1, 1]);
    v.conv("decoder.head.2", 3, dims[4], &k3);
    v.0
}

/// Random value for element `i` of tensor `name` with `shape`: gammas 1, biases small,
/// weights uniform in +-1/sqrt(fan_in).
fn init_scale(name: &str, shape: &[u64]) -> (f32, f32) {
    if name.ends_with("gamma") || name.ends_with(".weight") && shape.len() == 1 {
        (1.0, 0.0)
    } else if name.ends_with("bias") {
        (0.0, 0.01)
    } else {
        let fan_in: u64 = shape[1..].iter().product();
        (0.0, 1.0 / (fan_in.max(1) as f32).sqrt())
    }
}

fn st_dtype(ty: &str) -> (&'static str, usize) {
    match ty {
        "f32" => ("F32", 4),
        "f16" => ("F16", 2),
        "bf16" => ("BF16", 2),
        _ => panic!("--dtype f32 | f16 | bf16"),
    }
}

/// Writes `tensors` with random values into a safetensors file of `dtype`.
fn write_safetensors(path: &Path, tensors: &[(String, Vec<u64>)], dtype: &str) -> u64 {
    let (st, es) = st_dtype(dtype);
    let mut header = String::from("{");
    let mut off = 0u64;
    for (k, (name, shape)) in tensors.iter().enumerate() {
        let n = shape.iter().product::<u64>() * es as u64;
        if k > 0 {
            header.push(',');
        }
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        header.push_str(&format!(
            "\"{name}\":{{\"dtype\":\"{st}\",\"shape\":[{}],\"data_offsets\":[{off},{}]}}",
            dims.join(","),
            off + n
        ));
        off += n;
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut w = BufWriter::with_capacity(1 << 22, File::create(path).expect("create"));
    w.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    w.write_all(header.as_bytes()).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (name, shape) in tensors {
        let (base, scale) = init_scale(name, shape);
        let n = shape.iter().product::<u64>() as usize;
        let mut buf = Vec::with_capacity(n * es);
        for _ in 0..n {
            let v = base + scale * rng.uniform();
            match st {
                "F32" => buf.extend_from_slice(&v.to_le_bytes()),
                "F16" => buf.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
                _ => buf.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
            }
        }
        w.write_all(&buf).unwrap();
    }
    w.flush().unwrap();
    off
}

fn vae(opts: &Args, threads: usize) {
    let frames: usize = opts.get("frames", 81);
    let (hp, wp) = opts.size((480, 832));
    let tile: usize = opts.get("tile", 0);
    let overlap: usize = opts.get("overlap", 8);
    let dtype: String = opts.get("dtype", "bf16".to_string());
    assert!(frames % 4 == 1, "--frames must be 1 + 4k");
    assert!(hp % 8 == 0 && wp % 8 == 0, "--size must be multiples of 8");
    let (t, h, w) = (1 + (frames - 1) / 4, hp / 8, wp / 8);
    let t_run: usize = opts.get("decode-latent-frames", t).min(t);

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("wan_2.1_vae.safetensors");
    let shapes = wan_vae_shapes();
    let params: u64 = shapes.iter().map(|(_, s)| s.iter().product::<u64>()).sum();
    let bytes = write_safetensors(&path, &shapes, &dtype);
    let store = WeightStore::open_path(&path).expect("open the VAE file");
    let set = store.load_cpu(|_| true).expect("load the VAE");
    let mut vae = WanVae::new(&set, "", threads).expect("Wan VAE");
    println!(
        "Wan2.1 VAE, random weights: {} tensors, {:.1} M parameters, {} file of {:.0} MiB; \
         {threads} threads",
        shapes.len(),
        params as f64 / 1e6,
        dtype.to_uppercase(),
        bytes as f64 / MIB
    );
    println!(
        "video {frames} frames at {hp}x{wp} = latent [16, {t}, {h}, {w}]{}",
        if tile > 0 {
            format!(", tiles of {tile} latent px (overlap {overlap})")
        } else {
            String::new()
        }
    );
    let report = |label: &str, m: nijigen::models::wan_vae::WanVaeMemory| {
        println!(
            "  plan {label:<28} compute {:>8.1} MiB  caches {:>8.1} MiB  host {:>8.1} MiB  \
             total {:>8.1} MiB  ({} tile(s) of {}x{} latent)",
            m.compute_bytes as f64 / MIB,
            m.cache_bytes as f64 / MIB,
            m.host_bytes as f64 / MIB,
            m.total() as f64 / MIB,
            m.tiles,
            m.tile_h,
            m.tile_w
        );
    };
    report(
        "decode untiled",
        vae.decode_memory(t, h, w, None).expect("plan"),
    );
    for tl in [64usize, 48, 32, 16] {
        if tl < h.max(w) {
            report(
                &format!("decode tile {tl} overlap {overlap}"),
                vae.decode_memory(t, h, w, Some((tl, overlap)))
                    .expect("plan"),
            );
        }
    }
    report("encode", vae.encode_memory(hp, wp).expect("plan"));
    if opts.flag("plan-only") {
        return;
    }

    let mut rng = Rng(7);
    let mut latent: Vec<f32> = (0..16 * t_run * h * w).map(|_| rng.normal()).collect();
    denormalize(&mut latent, &LATENTS_MEAN, &LATENTS_STD);
    let rss0 = status_kib("VmRSS:") as f64 / 1024.0;
    let anon = AnonPeak::start();
    let start = Instant::now();
    let mut stamps = Vec::new();
    let mut n_frames = 0;
    let mut on_frame = |_f: usize, _img: &[f32]| {
        n_frames += 1;
        stamps.push(start.elapsed().as_secs_f64());
    };
    if tile > 0 {
        vae.decode_frames_tiled(&latent, t_run, h, w, tile, overlap, &mut on_frame)
            .expect("tiled decode");
    } else {
        vae.decode_frames(&latent, t_run, h, w, &mut on_frame)
            .expect("decode");
    }
    let secs = start.elapsed().as_secs_f64();
    let first = stamps.first().copied().unwrap_or(secs);
    println!(
        "decode {t_run} latent frames -> {n_frames} frames{}: {secs:.1} s, {:.1} s per latent \
         frame{}",
        if tile > 0 { " (tiled)" } else { "" },
        secs / t_run as f64,
        if tile == 0 && t_run > 1 {
            format!(
                " (first {first:.1} s, later ones {:.1} s each)",
                (secs - first) / (t_run - 1) as f64
            )
        } else {
            String::new()
        }
    );
    println!(
        "  compute buffer {:.1} MiB (allocator); RSS before decode {rss0:.0} MiB; peak RSS \
         (VmHWM, whole process incl. mapped weights) {:.0} MiB; peak anonymous RSS {:.0} MiB",
        vae.last_compute_bytes() as f64 / MIB,
        status_kib("VmHWM:") as f64 / 1024.0,
        anon.peak_mib()
    );
    drop(anon);

    if opts.flag("encode") {
        // The I2V condition: the image, then zeros.
        let plane = hp * wp;
        let mut video = vec![0f32; 3 * frames * plane];
        for c in 0..3 {
            for v in &mut video[c * frames * plane..][..plane] {
                *v = rng.uniform();
            }
        }
        let anon = AnonPeak::start();
        let start = Instant::now();
        let z = vae.encode(&video, frames, hp, wp).expect("encode");
        let secs = start.elapsed().as_secs_f64();
        println!(
            "encode {frames} frames -> {} latent frames: {secs:.1} s; compute buffer {:.1} MiB; \
             peak RSS {:.0} MiB; peak anonymous RSS {:.0} MiB",
            z.len() / (16 * h * w),
            vae.last_compute_bytes() as f64 / MIB,
            status_kib("VmHWM:") as f64 / 1024.0,
            anon.peak_mib()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// DiT

/// Wan2.1-I2V-14B tensors (original names, PyTorch shapes) with `layers` blocks.
fn wan_dit_shapes(layers: usize) -> Vec<(String, Vec<u64>)> {
    let (dim, ffn, text, img, freq, inc, outc) =
        (5120u64, 13824u64, 4096u64, 1280u64, 256u64, 36u64, 16u64);
    let mut v = Shapes::default();
    for b in 0..layers {
        let p = format!("blocks.{b}");
        for a in ["self_attn", "cross_attn"] {
            for l in ["q", "k", "v", "o"] {
                v.lin(&format!("{p}.{a}.{l}"), dim, dim);
            }
            v.push(format!("{p}.{a}.norm_q.weight"), vec![dim]);
            v.push(format!("{p}.{a}.norm_k.weight"), vec![dim]);
        }
        v.lin(&format!("{p}.cross_attn.k_img"), dim, dim);
        v.lin(&format!("{p}.cross_attn.v_img"), dim, dim);
        v.push(format!("{p}.cross_attn.norm_k_img.weight"), vec![dim]);
        v.lin(&format!("{p}.ffn.0"), ffn, dim);
        v.lin(&format!("{p}.ffn.2"), dim, ffn);
        v.push(format!("{p}.modulation"), vec![1, 6, dim]);
        v.push(format!("{p}.norm3.weight"), vec![dim]);
        v.push(format!("{p}.norm3.bias"), vec![dim]);
    }
    v.lin("head.head", 4 * outc, dim);
    v.push("head.modulation", vec![1, 2, dim]);
    v.push("img_emb.proj.0.weight", vec![img]);
    v.push("img_emb.proj.0.bias", vec![img]);
    v.lin("img_emb.proj.1", img, img);
    v.lin("img_emb.proj.3", dim, img);
    v.push("img_emb.proj.4.weight", vec![dim]);
    v.push("img_emb.proj.4.bias", vec![dim]);
    v.push("patch_embedding.weight", vec![dim, inc, 1, 2, 2]);
    v.push("patch_embedding.bias", vec![dim]);
    v.lin("text_embedding.0", dim, text);
    v.lin("text_embedding.2", dim, dim);
    v.lin("time_embedding.0", dim, freq);
    v.lin("time_embedding.2", dim, dim);
    v.lin("time_projection.1", 6 * dim, dim);
    v.0
}

fn dit_init(name: &str, shape: &[u64]) -> (f32, f32) {
    if name.contains("norm") && name.ends_with("weight")
        || name.ends_with("proj.0.weight")
        || name.ends_with("proj.4.weight")
    {
        (1.0, 0.0)
    } else if name.ends_with("bias") {
        (0.0, 0.01)
    } else if name.ends_with("modulation") {
        (0.0, 0.05)
    } else {
        let fan_in: u64 = shape[1..].iter().product();
        (0.0, 1.0 / (fan_in.max(1) as f32).sqrt())
    }
}

/// Generates, quantizes (q4_k_m rules, as from an F16 file) and writes the DiT tensor by tensor.
fn write_dit_gguf(path: &Path, shapes: &[(String, Vec<u64>)]) -> (u64, Vec<(GgmlType, u64)>) {
    let rules = Rules::new(Target::parse("q4_k_m").expect("q4_k_m"), vec![]);
    let choices: Vec<GgmlType> = shapes
        .iter()
        .map(|(n, s)| rules.choose(n, s, DType::F16).ty)
        .collect();
    let decls: Vec<TensorDecl> = shapes
        .iter()
        .zip(&choices)
        .map(|((n, s), &ty)| TensorDecl::new(n.clone(), ty, s.clone()))
        .collect();
    let meta = vec![(
        "general.architecture".to_string(),
        MetaValue::String("wan".into()),
    )];
    let f = File::create(path).expect("create the GGUF");
    let mut writer =
        GgufWriter::new(path, BufWriter::with_capacity(8 << 20, f), &meta, &decls).expect("writer");
    let mut per_type: HashMap<GgmlType, u64> = HashMap::new();
    for (((name, shape), &ty), k) in shapes.iter().zip(&choices).zip(0u64..) {
        let n = shape.iter().product::<u64>() as usize;
        let row = *shape.last().unwrap() as usize;
        let (base, scale) = dit_init(name, shape);
        // Generate rows in parallel chunks (each its own seed), as the converter quantizes.
        use rayon::prelude::*;
        let rows_per_chunk = ((1 << 20) / row).max(1);
        let vals: Vec<f32> = (0..n)
            .into_par_iter()
            .chunks(rows_per_chunk * row)
            .flat_map_iter(|idx| {
                let mut rng = Rng(0x1234_5678 ^ (k << 40) ^ (idx[0] as u64 + 1));
                idx.into_iter()
                    .map(move |_| base + scale * rng.uniform())
                    .collect::<Vec<_>>()
            })
            .collect();
        let bytes: Vec<u8> = match ty {
            GgmlType::F32 => bytemuck::cast_slice(&vals).to_vec(),
            GgmlType::F16 => vals
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            q => {
                let out_row = q.bytes_for(row as u64).expect("whole blocks") as usize;
                let mut out = vec![0u8; out_row * (n / row)];
                out.par_chunks_mut(out_row * rows_per_chunk)
                    .zip(vals.par_chunks(row * rows_per_chunk))
                    .for_each(|(d, s)| {
                        quantize(q, s, row, d).expect("quantize");
                    });
                out
            }
        };
        *per_type.entry(ty).or_default() += bytes.len() as u64;
        writer.write_tensor(name, &bytes).expect("write tensor");
    }
    let mut out = writer.finish().expect("finish");
    out.flush().expect("flush");
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut types: Vec<(GgmlType, u64)> = per_type.into_iter().collect();
    types.sort_by_key(|&(_, b)| std::cmp::Reverse(b));
    (size, types)
}

fn dit(opts: &Args, threads: usize) {
    let layers: usize = opts.get("layers", 40);
    let frames: usize = opts.get("frames", 17);
    let (hp, wp) = opts.size((256, 256));
    let forwards: usize = opts.get("forwards", 2);
    let dir: PathBuf = opts
        .0
        .get("dir")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    assert!(frames % 4 == 1 && hp % 16 == 0 && wp % 16 == 0);
    let (f, h, w) = (1 + (frames - 1) / 4, hp / 8, wp / 8);
    let tokens = f * (h / 2) * (w / 2);

    let file = tempfile::Builder::new()
        .prefix("wan-dit-bench-")
        .suffix(".gguf")
        .tempfile_in(&dir)
        .expect("temp GGUF");
    let path = file.path().to_path_buf();
    let shapes = wan_dit_shapes(layers);
    let params: u64 = shapes.iter().map(|(_, s)| s.iter().product::<u64>()).sum();
    println!(
        "Wan2.1-I2V-14B shapes, {layers} of 40 blocks: {:.2} B parameters; {threads} threads",
        params as f64 / 1e9
    );
    let t0 = Instant::now();
    let (size, types) = write_dit_gguf(&path, &shapes);
    println!(
        "  q4_k_m GGUF written in {:.1} s: {:.0} MiB ({})",
        t0.elapsed().as_secs_f64(),
        size as f64 / MIB,
        types
            .iter()
            .map(|(t, b)| format!("{t} {:.0} MiB", *b as f64 / MIB))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let store = WeightStore::open_path(&path).expect("open the GGUF");
    let set = store.load_cpu(|_| true).expect("load");
    let placements = opts.0.get("placement").map_or("cpu", String::as_str);
    for placement in placements.split(',') {
        // Where the weights are: in place from the mapped file (cpu), copied once into a device
        // buffer (resident), or streamed block by block through two slots (or one).
        let acct = Accountant::unlimited();
        let copy_backend = Backend::cpu(1).expect("backend");
        let blocks: Vec<String> = (0..layers).map(|i| format!("blocks.{i}.")).collect();
        let residency = match placement {
            "cpu" => None,
            "resident" => Some(Residency::Resident),
            "streamed" => Some(Residency::Streamed { blocks, slots: 2 }),
            "streamed1" => Some(Residency::Streamed { blocks, slots: 1 }),
            p => panic!("--placement {p}: cpu, resident, streamed or streamed1"),
        };
        let t0 = Instant::now();
        let dw = residency.map(|r| {
            DeviceWeights::build(&set, &copy_backend, &r, &acct, "dit").expect("device weights")
        });
        if let Some(d) = &dw {
            println!(
                "  placement {placement}: {:.0} MiB resident + {} x {:.0} MiB slots, built in {:.1} s",
                d.resident_bytes() as f64 / MIB,
                d.slots(),
                d.slot_bytes() as f64 / MIB,
                t0.elapsed().as_secs_f64()
            );
        }
        let weights: &TensorSet<'_> = match &dw {
            Some(d) => d.set(),
            None => &set,
        };
        let mut model = WanDit::new(weights, "", threads).expect("Wan DiT");
        if let Some(d) = &dw {
            model.runner_mut().set_accountant(Some(&acct));
            model.set_streaming(Some(d)).expect("streaming");
        }
        let cfg = model.config().clone();
        println!(
            "  config: dim {} heads {} layers {} ffn {} in {} text {} image {:?}; latent [36, {f}, \
             {h}, {w}] = {tokens} tokens, 512 text + 257 image tokens",
            cfg.dim, cfg.heads, cfg.layers, cfg.ffn_dim, cfg.in_channels, cfg.text_dim, cfg.image_dim
        );
        let mut rng = Rng(11);
        let x: Vec<f32> = (0..36 * f * h * w).map(|_| rng.normal()).collect();
        let text: Vec<f32> = (0..512 * cfg.text_dim)
            .map(|_| rng.normal() * 0.1)
            .collect();
        let image: Vec<f32> = (0..257 * 1280).map(|_| rng.normal()).collect();
        let anon = AnonPeak::start();
        let mut times = Vec::new();
        for i in 0..forwards {
            let t = Instant::now();
            let out = model
                .forward(&x, 999.0 - i as f32, &text, Some(&image), f, h, w)
                .expect("forward");
            times.push(t.elapsed().as_secs_f64());
            assert_eq!(out.len(), 16 * f * h * w);
            let st = model.last_stream_stats();
            if st.uploaded_bytes > 0 {
                println!(
                    "  forward {i}: {:.1} s; streamed {:.0} MiB: copies {:.2} s, compute waited {:.2} s for them",
                    times[i],
                    st.uploaded_bytes as f64 / MIB,
                    st.upload.as_secs_f64(),
                    st.waited.as_secs_f64()
                );
            } else {
                println!("  forward {i}: {:.1} s", times[i]);
            }
        }
        let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
        let full = mean * 40.0 / layers as f64;
        println!(
            "  {mean:.1} s per forward with {layers} blocks, {:.1} s per CFG step (2 forwards); \
             peak RSS (VmHWM, incl. mapped weights) {:.0} MiB, peak anonymous RSS {:.0} MiB",
            2.0 * mean,
            status_kib("VmHWM:") as f64 / 1024.0,
            anon.peak_mib()
        );
        if layers != 40 {
            println!(
                "  linear extrapolation to 40 blocks (the parts outside the blocks counted 40/{layers} \
                 times too: an upper bound): {full:.0} s per forward, {:.0} s per CFG step",
                2.0 * full
            );
        }
        if opts.flag("cache") {
            cache_costs(
                &mut model,
                &x,
                &text,
                &image,
                (f, h, w),
                forwards,
                layers,
                opts,
            );
        }
        if dw.is_some() {
            println!(
                "  accountant peak (simulated device): {:.0} MiB {:?}",
                acct.peak() as f64 / MIB,
                acct.peak_breakdown()
                    .iter()
                    .map(|(k, b)| format!("{k} {:.0} MiB", *b as f64 / MIB))
                    .collect::<Vec<_>>()
            );
        }
    }
    drop(set);
    drop(store);
    drop(file); // deletes the GGUF
}

/// A [`BlockCache`] that computes or skips on command (the decisions of TeaCache / MagCache
/// are not what is measured here, only what a computed and a skipped pass cost).
struct FixedCache {
    skip: bool,
    residual: Option<Vec<f32>>,
}

impl BlockCache for FixedCache {
    fn skip_blocks(&mut self, _e0: &[f32]) -> bool {
        self.skip && self.residual.is_some()
    }
    fn residual(&self) -> Option<&[f32]> {
        self.residual.as_deref()
    }
    fn store_residual(&mut self, residual: Vec<f32>) {
        self.residual = Some(residual);
    }
}

/// `dit --cache`: seconds per CFG step computed, skipped by a block cache, skipped by
/// EasyCache; predicted run times for the skip patterns of `--reports`.
#[allow(clippy::too_many_arguments)]
fn cache_costs(
    model: &mut WanDit<'_>,
    x: &[f32],
    text: &[f32],
    image: &[f32],
    (f, h, w): (usize, usize, usize),
    forwards: usize,
    layers: usize,
    opts: &Args,
) {
    let mut cache = FixedCache {
        skip: false,
        residual: None,
    };
    let mut timed = |skip: bool, cache: &mut FixedCache| {
        cache.skip = skip;
        let mut times = Vec::new();
        for i in 0..forwards.max(1) {
            let t = Instant::now();
            let out = model
                .forward_cached(
                    x,
                    999.0 - i as f32,
                    text,
                    Some(image),
                    (f, h, w),
                    Some(&mut *cache as &mut dyn BlockCache),
                )
                .expect("forward");
            times.push(t.elapsed().as_secs_f64());
            assert_eq!(out.len(), 16 * f * h * w);
        }
        times
    };
    let computed = timed(false, &mut cache);
    let skipped = timed(true, &mut cache);
    // An EasyCache skip: the cached change added to the 16-channel latent.
    let latent = &x[..16 * f * h * w];
    let change: Vec<f32> = latent.iter().map(|v| v * 0.5).collect();
    let t = Instant::now();
    let reps = 20;
    let mut sink = 0.0f32;
    for _ in 0..reps {
        let out: Vec<f32> = latent.iter().zip(&change).map(|(a, b)| a + b).collect();
        sink += out[out.len() / 2];
    }
    let easy = t.elapsed().as_secs_f64() / reps as f64;
    std::hint::black_box(sink);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let list = |v: &[f64]| {
        v.iter()
            .map(|t| format!("{t:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (c, s) = (mean(&computed), mean(&skipped));
    let full = s + (c - s) * 40.0 / layers as f64;
    println!(
        "  step cache, per CFG step (2 passes), {layers} blocks: computed {:.2} s ({}), \
         blocks skipped (TeaCache/MagCache) {:.3} s ({}), EasyCache skip {:.5} s",
        2.0 * c,
        list(&computed),
        2.0 * s,
        list(&skipped),
        2.0 * easy
    );
    println!(
        "  extrapolated to 40 blocks: computed {:.1} s per CFG step, blocks skipped {:.3} s, \
         EasyCache skip {:.5} s",
        2.0 * full,
        2.0 * s,
        2.0 * easy
    );
    let steps: usize = opts.get("steps", 30);
    let Some(reports) = opts.0.get("reports") else {
        return;
    };
    println!(
        "  predicted {steps}-step runs at these widths, 40 blocks, with the skip patterns of:"
    );
    println!(
        "    {:<40} {:>10} {:>10}   no cache {:.0} s",
        "report",
        "skipped",
        "total",
        2.0 * full * steps as f64
    );
    // (setting, [cond pattern, uncond pattern]) from `nijigen video --json` outputs, or every
    // run of the step-cache fixture (tests/fixtures/step_cache/index.json, the Python
    // reference's decisions on the tiny model).
    let mut runs: Vec<(String, Vec<String>)> = Vec::new();
    for path in reports.split(',') {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let v: serde_json::Value = serde_json::from_str(&text)
            .ok()
            .or_else(|| {
                text.lines()
                    .rev()
                    .find_map(|l| serde_json::from_str(l).ok())
            })
            .unwrap_or_else(|| panic!("{path}: no JSON"));
        let strs = |a: &serde_json::Value| -> Vec<String> {
            a.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        if let Some(list) = v["runs"].as_array() {
            for r in list {
                let name = format!(
                    "{} (fixture {})",
                    r["method"].as_str().unwrap_or("?"),
                    r["name"].as_str().unwrap_or("?")
                );
                let p = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                runs.push((name, vec![p("pattern_cond"), p("pattern_uncond")]));
            }
        } else {
            let cache = &v["cache"];
            let setting = cache["setting"].as_str().unwrap_or("?").to_string();
            runs.push((setting, strs(&cache["pattern"])));
        }
    }
    for (method, pattern) in &runs {
        let (mut passes, mut skips) = (0usize, 0usize);
        for p in pattern {
            passes += p.len();
            skips += p.chars().filter(|&ch| ch == 's').count();
        }
        if passes == 0 {
            panic!("{method}: no cache pattern (was it run with --cache?)");
        }
        let skip_cost = if method.starts_with("easycache") {
            easy
        } else {
            s
        };
        // Per pass, as measured; the pattern's skipped fraction applied to `steps` CFG steps.
        let frac = skips as f64 / passes as f64;
        let total_passes = 2.0 * steps as f64;
        let total = total_passes * ((1.0 - frac) * full + frac * skip_cost);
        println!(
            "    {:<40} {:>4}/{:<5} {:>8.0} s   ({:.2}x) {}",
            method,
            skips,
            passes,
            total,
            2.0 * full * steps as f64 / total,
            pattern.join(" | ")
        );
    }
}
