//! `nijigen workflow run|show FILE`: a ComfyUI workflow as nijigen command lines.
//!
//! The file is read and validated (`crate::workflow`), translated into one nijigen command per
//! output node (`crate::workflow::command`), and `show` prints those commands while `run` runs
//! them in this process through the same code as typing them: a workflow run equals the plain
//! command bit for bit. Every command is translated before the first one runs, so a graph
//! nijigen cannot run is refused before any work.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::settings::Layers;
use crate::workflow::{self, CommandOptions, WorkflowCommand};

/// `nijigen workflow`.
#[derive(Debug, Args)]
pub struct WorkflowArgs {
    #[command(subcommand)]
    pub action: WorkflowAction,
}

#[derive(Debug, Subcommand)]
pub enum WorkflowAction {
    /// Run a ComfyUI workflow (UI or API JSON, or a PNG / WebP / MP4 that ComfyUI wrote).
    Run(RunArgs),
    /// Print the nijigen command line(s) a workflow runs as (with --json: the parsed graph too).
    Show(ShowArgs),
}

/// What `run` and `show` share.
#[derive(Debug, Args)]
pub struct WorkflowFileArgs {
    /// The workflow: ComfyUI UI JSON (with subgraphs), API JSON, or a PNG / WebP / MP4 carrying
    /// one.
    pub file: PathBuf,
    /// Folder of the files LoadImage names [default: <comfyui>/input, else the working folder].
    #[arg(long, value_name = "DIR")]
    pub input_dir: Option<PathBuf>,
    /// Folder the outputs are written to, named as ComfyUI names them (the save node's
    /// filename prefix and the next free counter) [default: the working folder].
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Write the output to FILE instead (a workflow with one output).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Seed instead of the one stored in the workflow.
    #[arg(long)]
    pub seed: Option<u64>,
}

/// `nijigen workflow run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub file: WorkflowFileArgs,
    /// Also write each video's frames as PNGs into DIR.
    #[arg(long, value_name = "DIR")]
    pub frames_dir: Option<PathBuf>,
    /// Compute device: auto, cpu, cuda, cuda:N [default: auto].
    #[arg(long)]
    pub device: Option<String>,
    /// CPU threads [default: all cores, or `threads` of nijigen.toml].
    #[arg(long, short = 't')]
    pub threads: Option<usize>,
    /// Device memory the runs may use (12G, 11.5GiB, 900M) [default: on a GPU its free memory
    /// less 256 MiB, or `vram_budget` of nijigen.toml].
    #[arg(long, value_name = "SIZE")]
    pub vram_budget: Option<String>,
    /// Print each command's JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `nijigen workflow show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub file: WorkflowFileArgs,
    /// Print the parsed graph (ComfyUI API format) and the commands as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The global flags a workflow command inherits.
pub struct Globals {
    pub quiet: bool,
    pub verbose: u8,
    pub models_dir: Option<PathBuf>,
    pub comfyui: Option<PathBuf>,
}

/// Runs `nijigen workflow ...`.
pub fn run(args: WorkflowArgs, globals: &Globals) -> anyhow::Result<()> {
    match args.action {
        WorkflowAction::Show(a) => show(a, globals),
        WorkflowAction::Run(a) => run_commands(a, globals),
    }
}

/// The loaded workflow, its commands and the search folders they were made with.
struct Translated {
    workflow: workflow::Workflow,
    commands: Vec<WorkflowCommand>,
    layers: Layers,
}

fn translate(a: &WorkflowFileArgs, globals: &Globals) -> anyhow::Result<Translated> {
    let layers = Layers::read(globals.models_dir.clone(), globals.comfyui.clone())?;
    let wf = workflow::load(&a.file).map_err(|e| super::WithHint {
        error: format!("{}: {e}", a.file.display()),
        hint: format!(
            "`nijigen workflow` runs these ComfyUI nodes: {}",
            workflow::supported_node_types().join(", ")
        ),
    })?;
    let input_dir = a.input_dir.clone().or_else(|| {
        layers
            .search
            .comfyui
            .as_ref()
            .map(|c| c.value.join("input"))
            .filter(|d| d.is_dir())
    });
    let opts = CommandOptions {
        input_dir,
        output_dir: a.output_dir.clone().unwrap_or_else(|| PathBuf::from(".")),
        output_override: a.output.clone(),
        seed_override: a.seed,
        counter_start: None,
        now: None,
    };
    let commands = workflow::commands(&wf.graph, &opts).map_err(|e| super::WithHint {
        error: format!("{}: {e}", a.file.display()),
        hint: "`nijigen workflow show FILE --json` prints the graph as nijigen read it".into(),
    })?;
    Ok(Translated {
        workflow: wf,
        commands,
        layers,
    })
}

/// The argument list of `cmd` as this process runs it: the global flags first.
fn full_args(cmd: &WorkflowCommand, globals: &Globals, layers: &Layers) -> Vec<String> {
    let mut v = vec!["nijigen".to_string()];
    if globals.quiet {
        v.push("--quiet".into());
    }
    for _ in 0..globals.verbose {
        v.push("--verbose".into());
    }
    if let Some(d) = &layers.search.models_dir {
        v.push("--models-dir".into());
        v.push(d.value.to_string_lossy().into_owned());
    }
    if let Some(d) = &layers.search.comfyui {
        v.push("--comfyui".into());
        v.push(d.value.to_string_lossy().into_owned());
    }
    v.extend(cmd.args.iter().cloned());
    v
}

fn show(a: ShowArgs, globals: &Globals) -> anyhow::Result<()> {
    let t = translate(&a.file, globals)?;
    let mut out = std::io::stdout().lock();
    if a.json {
        let commands: Vec<serde_json::Value> = t
            .commands
            .iter()
            .map(|c| {
                serde_json::json!({
                    "output_node": c.output_node.as_str(),
                    "output": c.output,
                    "args": c.args,
                    "command": workflow::shell_line(&c.args),
                    "notes": c.notes,
                })
            })
            .collect();
        let j = serde_json::json!({
            "file": a.file.file.clone(),
            "container": format!("{:?}", t.workflow.container).to_lowercase(),
            "read_from": format!("{:?}", t.workflow.source).to_lowercase(),
            "notes": t.workflow.notes,
            "graph": t.workflow.graph.to_api_json(),
            "commands": commands,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&j)?)?;
        return Ok(());
    }
    for note in &t.workflow.notes {
        writeln!(out, "# note: {note}")?;
    }
    for c in &t.commands {
        writeln!(
            out,
            "# node {} ({}) writes {}",
            c.output_node.as_str(),
            t.workflow
                .graph
                .node(c.output_node.as_str())
                .map_or("?", |n| n.class_type.as_str()),
            c.output.display()
        )?;
        for note in &c.notes {
            writeln!(out, "# note: {note}")?;
        }
        writeln!(out, "{}", workflow::shell_line(&c.args))?;
    }
    let _ = &t.layers;
    Ok(())
}

fn run_commands(a: RunArgs, globals: &Globals) -> anyhow::Result<()> {
    let t = translate(&a.file, globals)?;
    // nijigen.toml's defaults must not fill in what the workflow leaves out (a CLIP vision or a
    // high-noise expert the graph does not have): the commands run with no config file, and
    // the file's threads and budget are passed as flags.
    let threads = t.layers.threads(a.threads).value;
    let budget = match &a.vram_budget {
        Some(s) => Some(s.clone()),
        None => t.layers.vram_budget(None)?.map(|b| format!("{}", b.value)),
    };
    let mut runs = Vec::new();
    for c in &t.commands {
        let mut args = full_args(c, globals, &t.layers);
        args.extend(["--threads".to_string(), threads.to_string()]);
        if let Some(b) = &budget {
            args.extend(["--vram-budget".to_string(), b.clone()]);
        }
        if let Some(d) = &a.device {
            args.extend(["--device".to_string(), d.clone()]);
        }
        if a.json {
            args.push("--json".into());
        }
        if let (Some(dir), Some("video")) = (&a.frames_dir, c.args.first().map(String::as_str)) {
            args.push("--frames-dir".into());
            args.push(dir.to_string_lossy().into_owned());
        }
        let cli = super::Cli::try_parse_from(&args).map_err(|e| {
            anyhow::anyhow!(
                "node {}: the translated command does not parse ({}): {}",
                c.output_node.as_str(),
                e.kind(),
                workflow::shell_line(&c.args)
            )
        })?;
        runs.push((c, cli));
    }
    std::env::set_var("NIJIGEN_CONFIG", "");
    for (c, cli) in runs {
        if !globals.quiet {
            eprintln!(
                "workflow: node {} -> {}",
                c.output_node.as_str(),
                workflow::shell_line(&c.args)
            );
            for note in &c.notes {
                eprintln!("note: {note}");
            }
        }
        if let Some(parent) = c.output.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| anyhow::anyhow!("creating {}: {e}", parent.display()))?;
        }
        super::run(cli)?;
    }
    Ok(())
}
