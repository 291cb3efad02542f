//! Settings resolved once, before a command runs: flags, then environment variables, then the
//! config file (`nijigen.toml`), then the built-in defaults. `nijigen config` prints the result
//! and where each value came from.
//!
//! The config file is the first of: `$NIJIGEN_CONFIG`; `./nijigen.toml`;
//! `$XDG_CONFIG_HOME/nijigen/nijigen.toml` (else `~/.config/nijigen/nijigen.toml`); none when
//! `NIJIGEN_CONFIG` is set and empty.
//!
//! ```toml
//! models_dir = "/data/models"        # bare file names are looked up here (also NIJIGEN_MODELS)
//! comfyui = "/opt/ComfyUI"           # and in its models/ folders (also NIJIGEN_COMFYUI)
//! threads = 8
//! vram_budget = "11.5G"
//!
//! [image]                            # `nijigen image`, and the still of `nijigen i2v`
//! model = "illustriousXL_v01.safetensors"
//! steps = 28
//! negative_prompt = "lowres, bad anatomy, bad hands, worst quality"
//!
//! [video]                            # `nijigen video`, and the video of `nijigen i2v`
//! model = "wan2.1-i2v-14b-480p-Q4_K_M.gguf"
//! t5 = "umt5-xxl-encoder-Q8_0.gguf"
//! clip_vision = "clip_vision_h.safetensors"
//! vae = "wan_2.1_vae.safetensors"
//! ```
//!
//! Flags that the command line does not give take the file's value; a flag given always wins.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory};
use serde::{Deserialize, Serialize};

use super::common::{parse_budget, parse_sampler, parse_scheduler};
use super::common::{Setting, Source};
use super::find::{Search, Slot};
use super::i2v::I2vArgs;
use super::image::ImageArgs;
use super::video::VideoArgs;
use super::{Cli, Command, WithHint};

/// `[image]` of nijigen.toml.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageSection {
    pub model: Option<PathBuf>,
    pub clip_l: Option<PathBuf>,
    pub clip_g: Option<PathBuf>,
    pub vae: Option<PathBuf>,
    pub steps: Option<usize>,
    pub cfg: Option<f32>,
    pub sampler: Option<String>,
    pub scheduler: Option<String>,
    pub negative_prompt: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

/// `[video]` of nijigen.toml.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct VideoSection {
    pub model: Option<PathBuf>,
    pub t5: Option<PathBuf>,
    pub t5_tokenizer: Option<PathBuf>,
    pub clip_vision: Option<PathBuf>,
    pub vae: Option<PathBuf>,
    pub steps: Option<usize>,
    pub cfg: Option<f32>,
    pub shift: Option<f64>,
    pub sampler: Option<String>,
    pub scheduler: Option<String>,
    pub negative_prompt: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub frames: Option<usize>,
    pub fps: Option<u32>,
}

/// nijigen.toml.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub models_dir: Option<PathBuf>,
    pub comfyui: Option<PathBuf>,
    pub threads: Option<usize>,
    pub vram_budget: Option<String>,
    pub image: ImageSection,
    pub video: VideoSection,
}

/// The config file read (if any) and the places looked in.
#[derive(Clone, Debug, Default)]
pub struct Loaded {
    pub path: Option<PathBuf>,
    /// Why this file: "NIJIGEN_CONFIG", "working directory", "user config".
    pub origin: &'static str,
    pub searched: Vec<PathBuf>,
    pub file: FileConfig,
}

fn user_config_path() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".config"),
    };
    Some(base.join("nijigen").join("nijigen.toml"))
}

/// Finds and parses the config file.
pub fn load() -> anyhow::Result<Loaded> {
    let mut searched = Vec::new();
    if std::env::var_os("NIJIGEN_CONFIG").is_some_and(|v| v.is_empty()) {
        // Set and empty: no config file at all (scripts and tests that want only flags).
        return Ok(Loaded {
            origin: "none: NIJIGEN_CONFIG is empty",
            ..Loaded::default()
        });
    }
    let (path, origin) =
        if let Some(p) = std::env::var_os("NIJIGEN_CONFIG").filter(|v| !v.is_empty()) {
            let p = PathBuf::from(p);
            if !p.is_file() {
                return Err(WithHint {
                    error: format!("NIJIGEN_CONFIG={}: no such file", p.display()),
                    hint: "point NIJIGEN_CONFIG at a nijigen.toml, or unset it".into(),
                }
                .into());
            }
            (Some(p), "NIJIGEN_CONFIG")
        } else {
            let mut found = (None, "");
            let candidates = [
                (Some(PathBuf::from("nijigen.toml")), "working directory"),
                (user_config_path(), "user config"),
            ];
            for (p, origin) in candidates {
                let Some(p) = p else { continue };
                searched.push(p.clone());
                if p.is_file() {
                    found = (Some(p), origin);
                    break;
                }
            }
            found
        };
    let file = match &path {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            let mut file: FileConfig = toml::from_str(&text).map_err(|e| WithHint {
                error: format!(
                    "{}: {}",
                    p.display(),
                    e.to_string().lines().collect::<Vec<_>>().join(" ")
                ),
                hint: "`nijigen config --help` shows the keys a config file may set".into(),
            })?;
            anchor_paths(&mut file, p);
            file
        }
        None => FileConfig::default(),
    };
    Ok(Loaded {
        path,
        origin,
        searched,
        file,
    })
}

/// Relative paths with a folder part are relative to the config file's folder; bare names
/// stay bare (looked up in the models folders).
fn anchor_paths(f: &mut FileConfig, config: &Path) {
    let base = config.parent().unwrap_or(Path::new("."));
    let fix = |p: &mut Option<PathBuf>| {
        if let Some(v) = p.as_mut() {
            if v.is_relative() && v.components().count() > 1 {
                *v = base.join(&*v);
            }
        }
    };
    for p in [&mut f.models_dir, &mut f.comfyui] {
        if let Some(v) = p.as_mut() {
            if v.is_relative() {
                *v = base.join(&*v);
            }
        }
    }
    for p in [
        &mut f.image.model,
        &mut f.image.clip_l,
        &mut f.image.clip_g,
        &mut f.image.vae,
        &mut f.video.model,
        &mut f.video.t5,
        &mut f.video.t5_tokenizer,
        &mut f.video.clip_vision,
        &mut f.video.vae,
    ] {
        fix(p);
    }
}

/// Everything resolved before a command runs.
#[derive(Clone, Debug, Default)]
pub struct Context {
    pub loaded: Loaded,
    pub search: Search,
}

fn folder_setting(
    flag_value: &Option<PathBuf>,
    flag: &'static str,
    env: &'static str,
    file_value: &Option<PathBuf>,
    loaded: &Loaded,
) -> Option<Setting<PathBuf>> {
    if let Some(v) = flag_value {
        return Some(Setting::new(v.clone(), Source::Flag(flag)));
    }
    if let Some(v) = std::env::var_os(env).filter(|v| !v.is_empty()) {
        return Some(Setting::new(PathBuf::from(v), Source::Env(env)));
    }
    let path = loaded.path.clone()?;
    file_value
        .clone()
        .map(|v| Setting::new(v, Source::File(path)))
}

/// Reads the config file and settles the search folders (flag, env, file).
pub fn context(models_dir: &Option<PathBuf>, comfyui: &Option<PathBuf>) -> anyhow::Result<Context> {
    let loaded = load()?;
    let search = Search {
        models_dir: folder_setting(
            models_dir,
            "--models-dir",
            "NIJIGEN_MODELS",
            &loaded.file.models_dir,
            &loaded,
        ),
        comfyui: folder_setting(
            comfyui,
            "--comfyui",
            "NIJIGEN_COMFYUI",
            &loaded.file.comfyui,
            &loaded,
        ),
    };
    for s in [&search.models_dir, &search.comfyui].into_iter().flatten() {
        if !s.value.is_dir() {
            return Err(WithHint {
                error: format!(
                    "{}: not a folder ({})",
                    s.value.display(),
                    s.source.flag_or_key("the setting")
                ),
                hint: "`nijigen config` shows where each setting comes from".into(),
            }
            .into());
        }
    }
    Ok(Context { loaded, search })
}

/// Whether the command line gave `id` (no matches: treat everything as given).
fn given(m: Option<&ArgMatches>, id: &str) -> bool {
    m.is_none_or(|m| m.value_source(id) == Some(ValueSource::CommandLine))
}

/// Sets `$field` from `$value` (an `Option`) unless the command line gave it.
macro_rules! fill {
    ($m:expr, $args:ident . $field:ident, $value:expr) => {
        if !given($m, stringify!($field)) {
            if let Some(v) = $value {
                $args.$field = v;
            }
        }
    };
}

fn sampler(v: &Option<String>, key: &str) -> anyhow::Result<Option<crate::sampling::SamplerKind>> {
    v.as_deref()
        .map(|s| parse_sampler(s).map_err(|e| anyhow::anyhow!("{key} in the config file: {e}")))
        .transpose()
}

fn scheduler(v: &Option<String>, key: &str) -> anyhow::Result<Option<crate::sampling::Scheduler>> {
    v.as_deref()
        .map(|s| parse_scheduler(s).map_err(|e| anyhow::anyhow!("{key} in the config file: {e}")))
        .transpose()
}

fn budget(f: &FileConfig) -> anyhow::Result<Option<Option<u64>>> {
    f.vram_budget
        .as_deref()
        .map(|s| {
            parse_budget(s)
                .map(Some)
                .map_err(|e| anyhow::anyhow!("vram_budget in the config file: {e}"))
        })
        .transpose()
}

fn no_model(flag: &str, key: &str) -> anyhow::Error {
    WithHint {
        error: format!("no model: pass {flag} FILE"),
        hint: format!("or set `model` under [{key}] in nijigen.toml (`nijigen config` shows it)"),
    }
    .into()
}

/// Fills `image` arguments from the file and finds its files.
pub fn apply_image(a: &mut ImageArgs, m: Option<&ArgMatches>, c: &Context) -> anyhow::Result<()> {
    let f = &c.loaded.file;
    let s = &f.image;
    fill!(m, a.model, s.model.clone());
    if a.model.as_os_str().is_empty() {
        return Err(no_model("--model", "image"));
    }
    fill!(m, a.clip_l, s.clip_l.clone().map(Some));
    fill!(m, a.clip_g, s.clip_g.clone().map(Some));
    fill!(m, a.vae, s.vae.clone().map(Some));
    fill!(m, a.steps, s.steps);
    fill!(m, a.cfg, s.cfg);
    fill!(m, a.sampler, sampler(&s.sampler, "image.sampler")?);
    fill!(m, a.scheduler, scheduler(&s.scheduler, "image.scheduler")?);
    fill!(m, a.negative_prompt, s.negative_prompt.clone());
    fill!(m, a.width, s.width);
    fill!(m, a.height, s.height);
    fill!(m, a.threads, f.threads);
    fill!(m, a.vram_budget, budget(f)?);
    Ok(())
}

/// Fills `video` arguments from the file and finds its files.
pub fn apply_video(a: &mut VideoArgs, m: Option<&ArgMatches>, c: &Context) -> anyhow::Result<()> {
    let f = &c.loaded.file;
    let s = &f.video;
    fill!(m, a.model, s.model.clone());
    if a.model.as_os_str().is_empty() {
        return Err(no_model("--model", "video"));
    }
    fill!(m, a.t5, s.t5.clone().map(Some));
    fill!(m, a.t5_tokenizer, s.t5_tokenizer.clone().map(Some));
    fill!(m, a.clip_vision, s.clip_vision.clone().map(Some));
    fill!(m, a.vae, s.vae.clone().map(Some));
    fill!(m, a.steps, s.steps);
    fill!(m, a.cfg, s.cfg);
    fill!(m, a.shift, s.shift.map(Some));
    fill!(m, a.sampler, sampler(&s.sampler, "video.sampler")?);
    fill!(m, a.scheduler, scheduler(&s.scheduler, "video.scheduler")?);
    fill!(m, a.negative_prompt, s.negative_prompt.clone().map(Some));
    fill!(m, a.width, s.width.map(Some));
    fill!(m, a.height, s.height.map(Some));
    fill!(m, a.frames, s.frames);
    fill!(m, a.fps, s.fps);
    fill!(m, a.threads, f.threads);
    fill!(m, a.vram_budget, budget(f)?);
    Ok(())
}

/// Fills `i2v` arguments from both sections and finds its files.
pub fn apply_i2v(a: &mut I2vArgs, m: Option<&ArgMatches>, c: &Context) -> anyhow::Result<()> {
    let f = &c.loaded.file;
    let (i, v) = (&f.image, &f.video);
    fill!(m, a.image_model, i.model.clone().map(Some));
    fill!(m, a.clip_l, i.clip_l.clone().map(Some));
    fill!(m, a.clip_g, i.clip_g.clone().map(Some));
    fill!(m, a.image_vae, i.vae.clone().map(Some));
    fill!(m, a.image_steps, i.steps);
    fill!(m, a.image_cfg, i.cfg);
    fill!(m, a.image_sampler, sampler(&i.sampler, "image.sampler")?);
    fill!(
        m,
        a.image_scheduler,
        scheduler(&i.scheduler, "image.scheduler")?
    );
    fill!(m, a.negative_prompt, i.negative_prompt.clone());
    fill!(m, a.video_model, v.model.clone().map(Some));
    fill!(m, a.t5, v.t5.clone().map(Some));
    fill!(m, a.t5_tokenizer, v.t5_tokenizer.clone().map(Some));
    fill!(m, a.clip_vision, v.clip_vision.clone().map(Some));
    fill!(m, a.video_vae, v.vae.clone().map(Some));
    fill!(m, a.video_steps, v.steps);
    fill!(m, a.video_cfg, v.cfg);
    fill!(m, a.shift, v.shift.map(Some));
    fill!(m, a.video_sampler, sampler(&v.sampler, "video.sampler")?);
    fill!(
        m,
        a.video_scheduler,
        scheduler(&v.scheduler, "video.scheduler")?
    );
    fill!(m, a.motion_negative, v.negative_prompt.clone().map(Some));
    fill!(m, a.width, v.width);
    fill!(m, a.height, v.height);
    fill!(m, a.frames, v.frames);
    fill!(m, a.fps, v.fps);
    fill!(m, a.threads, f.threads);
    fill!(m, a.vram_budget, budget(f)?);
    Ok(())
}

/// Applies the settings to the command about to run (`matches`: its parsed command line) and
/// returns them; model files are found later, by each command after it checked its request
/// (a `plan` has none, so its files are found here).
pub fn apply(cli: &mut Cli, matches: Option<&ArgMatches>) -> anyhow::Result<Context> {
    let sub = |name: &str| matches.and_then(|m| m.subcommand_matches(name));
    let needs = matches!(
        cli.command,
        Command::Image(_) | Command::Video(_) | Command::I2v(_) | Command::Plan(_)
    );
    if !needs {
        return Ok(Context::default());
    }
    let c = context(&cli.models_dir, &cli.comfyui)?;
    match &mut cli.command {
        Command::Image(a) => apply_image(a, sub("image"), &c)?,
        Command::Video(a) => apply_video(a, sub("video"), &c)?,
        Command::I2v(a) => apply_i2v(a, sub("i2v"), &c)?,
        Command::Plan(p) => {
            let pm = sub("plan");
            let inner = |n: &str| pm.and_then(|m| m.subcommand_matches(n));
            match &mut p.what {
                super::plan::PlanWhat::Image(a) => {
                    apply_image(a, inner("image"), &c)?;
                    super::image::resolve(a, &c.search)?;
                }
                super::plan::PlanWhat::Video(a) => {
                    apply_video(a, inner("video"), &c)?;
                    super::video::resolve(a, &c.search)?;
                }
                super::plan::PlanWhat::I2v(a) => {
                    apply_i2v(a, inner("i2v"), &c)?;
                    super::i2v::resolve(a, &c.search)?;
                }
            }
        }
        _ => {}
    }
    Ok(c)
}

// ---------------------------------------------------------------------------------------------
// `nijigen config`

#[derive(Debug, Args)]
#[command(
    after_help = "Keys of nijigen.toml: models_dir, comfyui, threads, vram_budget; \
    [image] model, clip_l, clip_g, vae, steps, cfg, sampler, scheduler, negative_prompt, width, \
    height; [video] model, t5, t5_tokenizer, clip_vision, vae, steps, cfg, shift, sampler, \
    scheduler, negative_prompt, width, height, frames, fps.\n\
    The file: $NIJIGEN_CONFIG, else ./nijigen.toml, else $XDG_CONFIG_HOME/nijigen/nijigen.toml \
    (~/.config/nijigen/nijigen.toml). Flags override it."
)]
pub struct ConfigArgs {
    /// Print the settings as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One row of `nijigen config`.
#[derive(Debug, Serialize)]
struct Row {
    key: String,
    value: serde_json::Value,
    source: String,
}

/// The default of argument `id` of subcommand `sub`, as clap shows it.
fn clap_default(sub: &str, id: &str) -> serde_json::Value {
    let cmd = Cli::command();
    cmd.find_subcommand(sub)
        .and_then(|c| c.get_arguments().find(|a| a.get_id() == id))
        .and_then(|a| a.get_default_values().first())
        .filter(|v| !v.is_empty())
        .map_or(serde_json::Value::Null, |v| {
            let s = v.to_string_lossy().into_owned();
            serde_json::from_str(&s).unwrap_or(serde_json::Value::String(s))
        })
}

fn section_rows(
    rows: &mut Vec<Row>,
    name: &str,
    section: serde_json::Value,
    file: &Option<PathBuf>,
    search: &Search,
) {
    let serde_json::Value::Object(map) = section else {
        return;
    };
    for (key, value) in map {
        let (value, source) = if value.is_null() {
            (clap_default(name, &key), "default".to_string())
        } else {
            let src = Source::File(file.clone().unwrap_or_default()).label();
            let slot = match (name, key.as_str()) {
                ("image", "model") => Some(Slot::Checkpoint),
                ("video", "model") => Some(Slot::Diffusion),
                (_, "vae") => Some(Slot::Vae),
                (_, "clip_vision") => Some(Slot::ClipVision),
                (_, "clip_l" | "clip_g" | "t5" | "t5_tokenizer") => Some(Slot::TextEncoder),
                _ => None,
            };
            match (slot, value.as_str()) {
                (Some(slot), Some(p)) => match search.resolve(Path::new(p), slot, &key) {
                    Ok(found) => (serde_json::Value::String(found.display().to_string()), src),
                    Err(_) => (value, format!("{src}; NOT FOUND")),
                },
                _ => (value, src),
            }
        };
        rows.push(Row {
            key: format!("{name}.{key}"),
            value,
            source,
        });
    }
}

pub fn run(
    args: ConfigArgs,
    models_dir: &Option<PathBuf>,
    comfyui: &Option<PathBuf>,
) -> anyhow::Result<()> {
    let c = context(models_dir, comfyui)?;
    let l = &c.loaded;
    let mut rows = Vec::new();
    let folder = |s: &Option<Setting<PathBuf>>| match s {
        Some(s) => (
            serde_json::Value::String(s.value.display().to_string()),
            s.source.label(),
        ),
        None => (serde_json::Value::Null, "default (none)".into()),
    };
    for (key, (value, source)) in [
        ("models_dir", folder(&c.search.models_dir)),
        ("comfyui", folder(&c.search.comfyui)),
    ] {
        rows.push(Row {
            key: key.into(),
            value,
            source,
        });
    }
    let file_src = || Source::File(l.path.clone().unwrap_or_default()).label();
    rows.push(match l.file.threads {
        Some(t) => Row {
            key: "threads".into(),
            value: t.into(),
            source: file_src(),
        },
        None => Row {
            key: "threads".into(),
            value: 0.into(),
            source: "default (all cores)".into(),
        },
    });
    rows.push(match &l.file.vram_budget {
        Some(b) => Row {
            key: "vram_budget".into(),
            value: b.clone().into(),
            source: file_src(),
        },
        None => Row {
            key: "vram_budget".into(),
            value: serde_json::Value::Null,
            source: "default (unlimited on the CPU)".into(),
        },
    });
    section_rows(
        &mut rows,
        "image",
        serde_json::to_value(&l.file.image)?,
        &l.path,
        &c.search,
    );
    section_rows(
        &mut rows,
        "video",
        serde_json::to_value(&l.file.video)?,
        &l.path,
        &c.search,
    );
    let mut out = std::io::stdout().lock();
    if args.json {
        let v = serde_json::json!({
            "config_file": l.path,
            "config_from": if l.path.is_some() { Some(l.origin) } else { None },
            "searched": l.searched,
            "settings": rows,
        });
        writeln!(out, "{v}")?;
        return Ok(());
    }
    match &l.path {
        Some(p) => writeln!(out, "config file: {} ({})", p.display(), l.origin)?,
        None if !l.origin.is_empty() => writeln!(out, "config file: {}", l.origin)?,
        None => writeln!(
            out,
            "config file: none (looked for {})",
            l.searched
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )?,
    }
    let width = rows.iter().map(|r| r.key.len()).max().unwrap_or(0);
    for r in &rows {
        let value = match &r.value {
            serde_json::Value::Null => "-".to_string(),
            serde_json::Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        writeln!(out, "{:<width$}  {value}  [{}]", r.key, r.source)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_files_parse_and_reject_unknown_keys() {
        let f: FileConfig = toml::from_str(
            "models_dir = \"/m\"\nthreads = 3\n[image]\nsteps = 12\nsampler = \"dpmpp_2m\"\n\
             [video]\nframes = 33\nt5 = \"umt5.gguf\"\n",
        )
        .unwrap();
        assert_eq!(f.threads, Some(3));
        assert_eq!(f.image.steps, Some(12));
        assert_eq!(f.video.frames, Some(33));
        assert_eq!(f.video.t5.as_deref(), Some(Path::new("umt5.gguf")));
        assert!(toml::from_str::<FileConfig>("[image]\nstep = 3\n").is_err());
        assert!(toml::from_str::<FileConfig>("threads = \"many\"\n").is_err());
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let mut f: FileConfig = toml::from_str(
            "models_dir = \"models\"\n[video]\nvae = \"vae/wan.safetensors\"\nt5 = \"umt5.gguf\"\n",
        )
        .unwrap();
        anchor_paths(&mut f, Path::new("/etc/nijigen/nijigen.toml"));
        assert_eq!(
            f.models_dir.as_deref(),
            Some(Path::new("/etc/nijigen/models"))
        );
        assert_eq!(
            f.video.vae.as_deref(),
            Some(Path::new("/etc/nijigen/vae/wan.safetensors"))
        );
        assert_eq!(f.video.t5.as_deref(), Some(Path::new("umt5.gguf")));
    }
}
