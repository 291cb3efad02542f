//! Command-line interface: clap definitions (one file per subcommand), logging setup, and the
//! one place where errors become messages and exit codes.

pub mod common;
pub mod config;
mod convert;
mod demo;
mod devices;
pub mod find;
pub mod i2v;
pub mod image;
mod info;
pub mod plan;
pub mod progress;
pub mod settings;
pub mod video;
pub mod workflow;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// nijigen: anime image-to-video on consumer GPUs (SDXL stills, Wan2.1 animation), on ggml.
#[derive(Debug, Parser)]
#[command(name = "nijigen", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors; no progress bars.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Folder where bare model file names are looked up (also its ComfyUI-style subfolders);
    /// else NIJIGEN_MODELS, else `models_dir` in nijigen.toml.
    #[arg(long, global = true, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// A ComfyUI folder: bare names are looked up in its models/checkpoints, diffusion_models,
    /// unet, text_encoders, clip, clip_vision, vae, loras; else NIJIGEN_COMFYUI, else `comfyui`
    /// in nijigen.toml.
    #[arg(long, global = true, value_name = "DIR")]
    pub comfyui: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Convert safetensors (one file or shards) or GGUF to GGUF, quantizing as asked.
    Convert(convert::ConvertArgs),
    /// Show a weight file's format, architecture, inferred config, sizes and metadata.
    Info(info::InfoArgs),
    /// Draw a still with an SDXL-family model (SDXL, Illustrious, AnimagineXL, NoobAI).
    Image(Box<image::ImageArgs>),
    /// Animate a still with Wan2.1 image-to-video (or text-to-video with a T2V model).
    Video(Box<video::VideoArgs>),
    /// Both stages in one run: an SDXL still from --prompt, then Wan2.1 animating it with
    /// --motion (the still is saved beside the video).
    I2v(Box<i2v::I2vArgs>),
    /// Run both stages on tiny random-weight models (no download): writes demo.png and
    /// demo.mp4 and prints what a real run needs.
    Demo(demo::DemoArgs),
    /// Print the settings in effect (flags, environment, nijigen.toml, defaults) and where
    /// each one comes from.
    Config(config::ConfigArgs),
    /// List the compute devices of this build (CPU; CUDA GPUs) with free and total memory.
    Devices(devices::DevicesArgs),
    /// Print the memory plan of an image, video or i2v run without computing: placement of every
    /// component, predicted peak device memory and RAM, bytes uploaded per step.
    Plan(plan::PlanArgs),
    /// Run a ComfyUI workflow (JSON, or a PNG / WebP / MP4 that carries one), or show the
    /// nijigen command lines it translates to.
    Workflow(workflow::WorkflowArgs),
}

/// Sets up `tracing` on stderr. `RUST_LOG` wins over `-v`.
pub fn init_tracing(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "nijigen=debug,ggml=info,warn",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal: logs piped to a file or a test stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(verbose > 0)
        .without_time()
        .try_init();
}

/// Runs the chosen subcommand. The commands that read settings resolve them first, once: the
/// flags over the environment and nijigen.toml ([`settings::Layers`]) into an immutable settings
/// struct, which the command then runs from.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let quiet = cli.quiet;
    let globals = workflow::Globals {
        quiet,
        verbose: cli.verbose,
        models_dir: cli.models_dir.clone(),
        comfyui: cli.comfyui.clone(),
    };
    let layers = || settings::Layers::read(cli.models_dir.clone(), cli.comfyui.clone());
    match cli.command {
        Command::Convert(args) => convert::run(args, quiet),
        Command::Info(args) => info::run(args),
        Command::Devices(args) => devices::run(args),
        Command::Image(args) => {
            let layers = layers()?;
            let s = image::ImageSettings::resolve(*args, &layers)?;
            image::run(&s, quiet, &layers.search)
        }
        Command::Video(args) => {
            let layers = layers()?;
            let s = video::VideoSettings::resolve(*args, &layers)?;
            video::run(&s, quiet, &layers.search)
        }
        Command::I2v(args) => {
            let layers = layers()?;
            let s = i2v::I2vSettings::resolve(*args, &layers)?;
            i2v::run(&s, quiet, &layers.search)
        }
        Command::Demo(args) => demo::run(args, quiet),
        Command::Config(args) => config::run(args, &layers()?),
        Command::Plan(args) => plan::run(args, &layers()?),
        Command::Workflow(args) => workflow::run(args, &globals),
    }
}

/// Prints an error as one line with its causes (plus a hint line where we have one) and picks
/// the exit code: 1 for every failure the user can act on; a closed stdout pipe is not an error.
pub fn report(err: &anyhow::Error) -> ExitCode {
    if let Some(io) = err.downcast_ref::<std::io::Error>() {
        if io.kind() == std::io::ErrorKind::BrokenPipe {
            return ExitCode::SUCCESS;
        }
    }
    let interrupted = err
        .downcast_ref::<crate::pipeline::PipelineError>()
        .is_some_and(|e| matches!(e, crate::pipeline::PipelineError::Interrupted));
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "error: {}", message(err));
    // A budget error from deep inside a run carries its own hint (found through the sources).
    let hint = match err.downcast_ref::<WithHint>() {
        Some(h) => Some(h.hint.clone()),
        None => crate::pipeline::hint(err.as_ref()),
    };
    if let Some(h) = hint {
        let _ = writeln!(stderr, "hint: {h}");
    }
    ExitCode::from(if interrupted { 130 } else { 1 })
}

/// `err` and its causes joined with ": ", as anyhow's `{err:#}` ("opening X: not a GGUF or
/// safetensors file", not just "opening X"), except that a cause whose text is already in the
/// message before it (errors that print their source themselves) is not repeated.
fn message(err: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut prev = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.is_empty() {
            out.clone_from(&text);
        } else if !text.is_empty() && !prev.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        prev = text;
    }
    out
}

/// An error with a suggestion for the user, printed as a second line.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct WithHint {
    pub error: String,
    pub hint: String,
}

/// Human-readable byte size (binary units, as people read VRAM: "11.3 GiB").
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Sets rayon's global pool size (0 = all cores).
pub fn set_threads(threads: usize) {
    if threads > 0 {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn clap_definitions_are_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    #[test]
    fn messages_keep_each_cause_once() {
        use anyhow::Context as _;
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = Err::<(), _>(io()).context("opening x.gguf").unwrap_err();
        assert_eq!(super::message(&e), "opening x.gguf: no such file");
        // A cause its parent already prints (thiserror's "{path}: {source}") comes once.
        #[derive(Debug, thiserror::Error)]
        #[error("x.gguf: {source}")]
        struct Format {
            source: std::io::Error,
        }
        let e = Err::<(), _>(Format { source: io() })
            .context("opening x.gguf")
            .unwrap_err();
        assert_eq!(super::message(&e), "opening x.gguf: x.gguf: no such file");
        assert_eq!(super::message(&anyhow::anyhow!("plain")), "plain");
    }
}
