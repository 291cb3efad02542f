//! `nijigen plan image|video|i2v [the same arguments]`: the memory plan without computing.
//!
//! The library plans ([`crate::pipeline::plan`]): it opens the weight files (tensor tables
//! only), sizes each component's compute buffer from its graph for the request's shapes, and
//! runs the planner. This command prints the plan as a table or as JSON.

use std::io::Write;

use clap::{Args, Subcommand};
use serde_json::json;

use super::common::{explain, resolve_device};
use super::find::Search;
use super::human_bytes;
use super::i2v::{I2vArgs, I2vSettings};
use super::image::{ImageArgs, ImageSettings};
use super::settings::Layers;
use super::video::{VideoArgs, VideoSettings};
use crate::pipeline::image::plan_image;
use crate::pipeline::plan::{Action, Placement, Role};
use crate::pipeline::plan::{StagePlan, CUDA_POOL_RESERVE};
use crate::pipeline::video::plan_video;

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    nijigen plan video -m wan2.1-i2v-14b-480p-Q4_K_M.gguf --t5 umt5-xxl-encoder-Q8_0.gguf --clip-vision clip_vision_h.safetensors --vae wan_2.1_vae.safetensors --vram-budget 12G\n  \
    nijigen plan image -m illustriousXL_v01.safetensors -W 1024 -H 1024 --vram-budget 8G --json")]
pub struct PlanArgs {
    #[command(subcommand)]
    pub what: PlanWhat,
}

#[derive(Debug, Subcommand)]
pub enum PlanWhat {
    /// Plan `nijigen image` with these arguments.
    Image(Box<ImageArgs>),
    /// Plan `nijigen video` with these arguments.
    Video(Box<VideoArgs>),
    /// Plan both stages of `nijigen i2v` with these arguments (each stage alone: stage 1 is
    /// released before stage 2 loads).
    I2v(Box<I2vArgs>),
}

fn mib(n: u64) -> String {
    format!("{} MiB", n.div_ceil(1 << 20))
}

fn print_table(out: &mut impl Write, stage: &StagePlan) -> std::io::Result<()> {
    let (p, what, device) = (&stage.plan, &stage.what, stage.device);
    let on = if device.is_cpu() {
        "simulated on the CPU".to_string()
    } else {
        format!(
            "on {device}, {} of it for CUDA's own pool",
            mib(CUDA_POOL_RESERVE)
        )
    };
    let budget = match p.budget {
        Some(b) => format!("{} (reserve {}, {on})", human_bytes(b), mib(p.reserve)),
        None => {
            "none (everything on the CPU from the files, as a run without --vram-budget)".into()
        }
    };
    writeln!(out, "plan: {what}, budget {budget}")?;
    writeln!(
        out,
        "{:<5} {:<12} {:>10} {:>10} {:>10}  {:<30} file",
        "stage", "component", "weights", "on device", "compute", "placement"
    )?;
    for c in &p.components {
        let file = stage.file(c.component).unwrap_or("");
        let mut placement = c.placement.label();
        if c.component.role == Role::Vae {
            placement += &match c.tile {
                Some(t) => format!(", tile {t} px"),
                None => ", untiled".into(),
            };
        }
        writeln!(
            out,
            "{:<5} {:<12} {:>10} {:>10} {:>10}  {:<30} {file}",
            c.stage.number(),
            c.component.name(),
            mib(c.weight_bytes),
            mib(c.device_weight_bytes),
            mib(c.compute_bytes),
            placement,
        )?;
    }
    let order: Vec<String> = p
        .steps
        .iter()
        .map(|s| match s.action {
            Action::Load => format!("load {}", s.component),
            Action::Run(w) => format!("run {} ({w})", s.component),
            Action::Free => format!("free {}", s.component),
        })
        .collect();
    for n in &stage.notes {
        writeln!(out, "note: {n}")?;
    }
    writeln!(out, "order: {}", order.join(", "))?;
    writeln!(
        out,
        "predicted peak: device {} ({}), RAM {} ({})",
        mib(p.peak_device),
        human_bytes(p.peak_device),
        mib(p.peak_ram),
        human_bytes(p.peak_ram)
    )?;
    writeln!(
        out,
        "uploaded per step: {} ({})",
        mib(p.upload_per_step),
        human_bytes(p.upload_per_step)
    )
}

fn plan_json(stage: &StagePlan) -> serde_json::Value {
    let (p, what, device) = (&stage.plan, &stage.what, stage.device);
    json!({
        "request": what,
        "device": device.to_string(),
        "notes": stage.notes,
        "budget": p.budget,
        "reserve": p.reserve,
        "components": p.components.iter().map(|c| {
            let (kind, blocks, slots) = match &c.placement {
                Placement::Resident => ("resident", None, None),
                Placement::Streamed { blocks, slots } => ("streamed", Some(blocks.clone()), Some(*slots)),
                Placement::Cpu => ("cpu", None, None),
            };
            json!({
                "component": c.component.name(),
                "stage": c.stage.number(),
                "file": stage.file(c.component),
                "weight_bytes": c.weight_bytes,
                "device_weight_bytes": c.device_weight_bytes,
                "compute_bytes": c.compute_bytes,
                "placement": kind,
                "blocks": blocks,
                "slots": slots,
                "tile": c.tile,
                "ram_bytes": c.ram_peak(),
                "upload_per_step": c.upload_per_step,
            })
        }).collect::<Vec<_>>(),
        "steps": p.steps.iter().map(|s| {
            let (action, what) = match s.action {
                Action::Load => ("load", None),
                Action::Run(w) => ("run", Some(w)),
                Action::Free => ("free", None),
            };
            json!({"action": action, "what": what, "component": s.component.name(),
                   "device_bytes": s.device_bytes, "ram_bytes": s.ram_bytes})
        }).collect::<Vec<_>>(),
        "peak_device_bytes": p.peak_device,
        "peak_ram_bytes": p.peak_ram,
        "upload_per_step_bytes": p.upload_per_step,
    })
}

/// The plan of `nijigen image` with `s`, its files found with `find` first.
fn plan_of_image(s: &ImageSettings, find: &Search) -> anyhow::Result<StagePlan> {
    let files = super::image::files(s, find)?;
    let req = super::image::request(s, 0)?;
    plan_image(
        &Default::default(),
        &files,
        &req,
        &super::image::memory_options(s)?,
    )
    .map_err(explain)
}

/// The plan of `nijigen video` with `s`, its files found with `find` first.
fn plan_of_video(s: &VideoSettings, find: &Search) -> anyhow::Result<StagePlan> {
    let files = super::video::files(s, find)?;
    let wan22 = crate::pipeline::video::wan22_defaults(&files).map_err(super::common::explain)?;
    let req = super::video::request(s, None, 0, wan22);
    plan_video(
        &Default::default(),
        &files,
        &req,
        &super::video::memory_options(s)?,
    )
    .map_err(explain)
}

pub fn run(args: PlanArgs, layers: &Layers) -> anyhow::Result<()> {
    let find = &layers.search;
    let (stage, json_out) = match args.what {
        PlanWhat::Image(a) => {
            let s = ImageSettings::resolve(*a, layers)?;
            (plan_of_image(&s, find)?, s.json)
        }
        PlanWhat::Video(a) => {
            let s = VideoSettings::resolve(*a, layers)?;
            (plan_of_video(&s, find)?, s.json)
        }
        PlanWhat::I2v(a) => return run_i2v(&I2vSettings::resolve(*a, layers)?, find),
    };
    let mut out = std::io::stdout().lock();
    if json_out {
        writeln!(out, "{}", plan_json(&stage))?;
    } else {
        print_table(&mut out, &stage)?;
    }
    Ok(())
}

/// `plan i2v`: the plan of each stage, and the run's peak (the larger of the two).
fn run_i2v(s: &I2vSettings, find: &Search) -> anyhow::Result<()> {
    let s = s.located(find)?;
    resolve_device(&s.device)?;
    let (ia, va) = s.stages()?;
    let still = plan_of_image(&ia, find)?;
    let video = plan_of_video(&va, find)?;
    let peak_device = still.plan.peak_device.max(video.plan.peak_device);
    let peak_ram = still.plan.peak_ram.max(video.plan.peak_ram);
    let mut out = std::io::stdout().lock();
    if s.json {
        let v = json!({
            "still": plan_json(&still),
            "video": plan_json(&video),
            "peak_device_bytes": peak_device,
            "peak_ram_bytes": peak_ram,
        });
        writeln!(out, "{v}")?;
        return Ok(());
    }
    writeln!(out, "stage 1 (still):")?;
    print_table(&mut out, &still)?;
    writeln!(out, "\nstage 2 (video; stage 1 released first):")?;
    print_table(&mut out, &video)?;
    writeln!(
        out,
        "\npredicted peak of the run: device {} ({}), RAM {} ({})",
        mib(peak_device),
        human_bytes(peak_device),
        mib(peak_ram),
        human_bytes(peak_ram)
    )?;
    Ok(())
}
