//! `nijigen config`: the settings of the environment and nijigen.toml (see [`super::settings`]
//! for the layers and the file's keys), each with where it comes from, and the built-in
//! defaults of the keys the file leaves out.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;

use super::common::{Setting, Source};
use super::find::{Search, Slot};
use super::settings::{self, Layers};

#[derive(Debug, Args)]
#[command(
    after_help = "Keys of nijigen.toml: models_dir, comfyui, threads, vram_budget; \
    [image] model, clip_l, clip_g, vae, steps, cfg, sampler, scheduler, negative_prompt, width, \
    height; [video] model, high_noise_model, t5, t5_tokenizer, clip_vision, vae, steps, cfg, \
    shift, sampler, scheduler, negative_prompt, width, height, frames, fps, boundary, \
    high_noise_steps, high_noise_cfg, high_noise_sampler, cache.\n\
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

/// The built-in default of key `key` of section `section` ([`settings::IMAGE`],
/// [`settings::VIDEO`]) as `nijigen config` shows it: as it reads in `--help`, as JSON where
/// it parses as JSON; null for the keys without one (files; values derived at run time).
fn default_value(section: &str, key: &str) -> serde_json::Value {
    let (i, v) = (settings::IMAGE, settings::VIDEO);
    let text = match (section, key) {
        ("image", "steps") => i.steps.to_string(),
        ("image", "cfg") => i.cfg.to_string(),
        ("image", "sampler") => i.sampler.to_string(),
        ("image", "scheduler") => i.scheduler.to_string(),
        ("image", "negative_prompt") => i.negative_prompt.to_string(),
        ("image", "width") => i.width.to_string(),
        ("image", "height") => i.height.to_string(),
        ("video", "steps") => v.steps.to_string(),
        ("video", "cfg") => v.cfg.to_string(),
        ("video", "sampler") => v.sampler.to_string(),
        ("video", "scheduler") => v.scheduler.to_string(),
        ("video", "frames") => v.frames.to_string(),
        ("video", "fps") => v.fps.to_string(),
        ("video", "cache") => "off".to_string(),
        _ => String::new(),
    };
    if text.is_empty() {
        return serde_json::Value::Null;
    }
    serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
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
            (default_value(name, &key), "default".to_string())
        } else {
            let src = Source::File(file.clone().unwrap_or_default()).label();
            let slot = match (name, key.as_str()) {
                ("image", "model") => Some(Slot::Checkpoint),
                ("video", "model" | "high_noise_model") => Some(Slot::Diffusion),
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

/// The rows of `nijigen config`: the top-level settings, then `[image]`, then `[video]`.
fn rows(layers: &Layers) -> anyhow::Result<Vec<Row>> {
    let l = &layers.loaded;
    let mut rows = Vec::new();
    let folder = |s: &Option<Setting<PathBuf>>| match s {
        Some(s) => (
            serde_json::Value::String(s.value.display().to_string()),
            s.source.label(),
        ),
        None => (serde_json::Value::Null, "default (none)".into()),
    };
    for (key, (value, source)) in [
        ("models_dir", folder(&layers.search.models_dir)),
        ("comfyui", folder(&layers.search.comfyui)),
    ] {
        rows.push(Row {
            key: key.into(),
            value,
            source,
        });
    }
    let file_src = || Source::File(l.path.clone().unwrap_or_default()).label();
    let threads = layers.threads(None);
    rows.push(Row {
        key: "threads".into(),
        value: threads.value.into(),
        source: match threads.source {
            Source::Default => "default (all cores)".into(),
            s => s.label(),
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
        &layers.search,
    );
    section_rows(
        &mut rows,
        "video",
        serde_json::to_value(&l.file.video)?,
        &l.path,
        &layers.search,
    );
    Ok(rows)
}

pub fn run(args: ConfigArgs, layers: &Layers) -> anyhow::Result<()> {
    let l = &layers.loaded;
    let rows = rows(layers)?;
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
    use crate::cli::settings::{Environment, Loaded};

    /// `(value, source)` of row `key`.
    fn row(rows: &[Row], key: &str) -> (serde_json::Value, String) {
        let r = rows.iter().find(|r| r.key == key).unwrap();
        (r.value.clone(), r.source.clone())
    }

    #[test]
    fn each_row_says_where_its_value_comes_from() {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        std::fs::create_dir(&models).unwrap();
        std::fs::write(models.join("sdxl.safetensors"), b"x").unwrap();
        let cfg = dir.path().join("nijigen.toml");
        let text = "threads = 3\n[image]\nmodel = \"sdxl.safetensors\"\nsteps = 12\n\
                    [video]\nmodel = \"wan.gguf\"\n";
        let env = Environment {
            models_dir: Some(models.clone()),
            ..Environment::default()
        };
        let layers = Layers::new(env, Loaded::from_text(&cfg, text), None, None).unwrap();
        let found = rows(&layers).unwrap();
        let file = format!("file {}", cfg.display());
        let models_text = serde_json::Value::from(models.display().to_string());
        assert_eq!(
            row(&found, "models_dir"),
            (models_text, "env NIJIGEN_MODELS".into())
        );
        assert_eq!(
            row(&found, "comfyui"),
            (serde_json::Value::Null, "default (none)".into())
        );
        assert_eq!(row(&found, "threads"), (3.into(), file.clone()));
        // A file found in the models folder shows where; one not found says so.
        let sdxl = models.join("sdxl.safetensors").display().to_string();
        assert_eq!(row(&found, "image.model"), (sdxl.into(), file.clone()));
        assert_eq!(
            row(&found, "video.model"),
            ("wan.gguf".into(), format!("{file}; NOT FOUND"))
        );
        assert_eq!(row(&found, "image.steps"), (12.into(), file));
        // The defaults are those the commands use.
        assert_eq!(
            row(&found, "video.steps"),
            (settings::VIDEO.steps.into(), "default".into())
        );
        assert_eq!(row(&found, "image.cfg").0, serde_json::json!(6));
        assert_eq!(row(&found, "image.sampler").0, "euler");
        assert_eq!(row(&found, "video.scheduler").0, "simple");
        assert_eq!(
            row(&found, "image.negative_prompt").0,
            serde_json::Value::Null
        );
        assert_eq!(row(&found, "video.width").0, serde_json::Value::Null);

        // No file: every key from the defaults.
        let layers = Layers::new(Environment::default(), Loaded::default(), None, None).unwrap();
        let defaults = rows(&layers).unwrap();
        assert_eq!(
            row(&defaults, "threads"),
            (settings::THREADS.into(), "default (all cores)".into())
        );
        assert_eq!(row(&defaults, "image.steps"), (25.into(), "default".into()));
    }

    /// Every "[default: ..]" in `--help` (clap shows none itself: the flags are `Option`s and
    /// their help text says it) is the value the settings resolve to.
    #[test]
    fn help_shows_the_defaults_the_settings_use() {
        use clap::CommandFactory;
        let (i, v) = (settings::IMAGE, settings::VIDEO);
        let s = |x: &dyn std::fmt::Display| x.to_string();
        let quoted = |x: &str| format!("\"{x}\"");
        let common = [
            ("device", s(&settings::DEVICE)),
            ("threads", s(&settings::THREADS)),
            ("rng", s(&settings::RNG)),
            ("offload", "auto".into()),
            ("text_encoder_device", "auto".into()),
        ];
        let image = [
            ("prompt", quoted(settings::PROMPT)),
            ("negative_prompt", quoted(i.negative_prompt)),
            ("width", s(&i.width)),
            ("height", s(&i.height)),
            ("batch", s(&i.batch)),
            ("strength", s(&i.strength)),
            ("steps", s(&i.steps)),
            ("cfg", s(&i.cfg)),
            ("sampler", s(&i.sampler)),
            ("scheduler", s(&i.scheduler)),
            ("output", s(&i.output)),
        ];
        let video = [
            ("prompt", quoted(settings::PROMPT)),
            ("frames", s(&v.frames)),
            ("fps", s(&v.fps)),
            ("steps", s(&v.steps)),
            ("cfg", s(&v.cfg)),
            ("sampler", s(&v.sampler)),
            ("scheduler", s(&v.scheduler)),
            ("qp", s(&v.qp)),
            ("output", s(&v.output)),
        ];
        let i2v = [
            ("prompt", quoted(settings::PROMPT)),
            ("negative_prompt", quoted(i.negative_prompt)),
            ("width", s(&v.size.0)),
            ("height", s(&v.size.1)),
            ("frames", s(&v.frames)),
            ("fps", s(&v.fps)),
            ("image_steps", s(&i.steps)),
            ("image_cfg", s(&i.cfg)),
            ("image_sampler", s(&i.sampler)),
            ("image_scheduler", s(&i.scheduler)),
            ("video_steps", s(&v.steps)),
            ("video_cfg", s(&v.cfg)),
            ("video_sampler", s(&v.sampler)),
            ("video_scheduler", s(&v.scheduler)),
            ("qp", s(&v.qp)),
            ("output", s(&v.output)),
        ];
        let demo = [
            ("output_dir", s(&settings::DEMO_OUTPUT_DIR)),
            ("seed", s(&settings::DEMO_SEED)),
            ("threads", s(&settings::THREADS)),
            ("device", s(&settings::DEVICE)),
        ];
        let convert = [("threads", s(&settings::THREADS))];
        let cli = crate::cli::Cli::command();
        let plan = cli.find_subcommand("plan").unwrap();
        let commands: [(&clap::Command, &[(&str, String)]); 11] = [
            (cli.find_subcommand("image").unwrap(), &image),
            (cli.find_subcommand("video").unwrap(), &video),
            (cli.find_subcommand("i2v").unwrap(), &i2v),
            (plan.find_subcommand("image").unwrap(), &image),
            (plan.find_subcommand("video").unwrap(), &video),
            (plan.find_subcommand("i2v").unwrap(), &i2v),
            (cli.find_subcommand("image").unwrap(), &common),
            (cli.find_subcommand("video").unwrap(), &common),
            (cli.find_subcommand("i2v").unwrap(), &common),
            (cli.find_subcommand("demo").unwrap(), &demo),
            (cli.find_subcommand("convert").unwrap(), &convert),
        ];
        for (cmd, table) in commands {
            for (id, default) in table {
                let arg = cmd.get_arguments().find(|a| a.get_id() == *id);
                let arg = arg.unwrap_or_else(|| panic!("{} --{id}", cmd.get_name()));
                let help = arg.get_help().unwrap().to_string();
                assert!(
                    help.ends_with(&format!("[default: {default}]")),
                    "{} --{id}: {help}",
                    cmd.get_name()
                );
                assert!(arg.get_default_values().is_empty(), "--{id}");
            }
        }
        // No argument anywhere has a clap default: the settings give them all.
        fn no_clap_defaults(cmd: &clap::Command) {
            for a in cmd.get_arguments() {
                let builtin = matches!(
                    a.get_action(),
                    clap::ArgAction::SetTrue
                        | clap::ArgAction::Count
                        | clap::ArgAction::Help
                        | clap::ArgAction::Version
                        | clap::ArgAction::HelpShort
                        | clap::ArgAction::HelpLong
                );
                assert!(
                    builtin || a.get_default_values().is_empty(),
                    "{} --{}",
                    cmd.get_name(),
                    a.get_id()
                );
            }
            cmd.get_subcommands().for_each(no_clap_defaults);
        }
        no_clap_defaults(&cli);
    }
}
