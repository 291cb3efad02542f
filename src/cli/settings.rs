//! Settings resolved once, before a command runs: flags, then environment variables, then the
//! config file (`nijigen.toml`), then the built-in defaults. Each command turns its parsed
//! flags (all `Option`s: `Some` is given on the command line) and the [`Layers`] under them into
//! an immutable settings struct (`ImageSettings`, `VideoSettings`, `I2vSettings`) and runs from
//! that alone; `nijigen config` prints the layers and where each value comes from.
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
//! The built-in defaults live here ([`IMAGE`], [`VIDEO`] and the constants beside them), used by
//! the resolution and by `nijigen config`; `--help` repeats them as "[default: ..]" (a test in
//! `config.rs` checks that the two agree).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::common::{parse_budget, parse_sampler, parse_scheduler};
use super::common::{Setting, Source};
use super::find::Search;
use super::WithHint;
use crate::pipeline::video::DEFAULT_FPS;
use crate::sampling::{SamplerKind, Scheduler};

// ---------------------------------------------------------------------------------------------
// The defaults: the last layer.

/// Defaults of `nijigen image` (and the `[image]` keys, and stage 1 of `nijigen i2v`).
#[derive(Clone, Copy, Debug)]
pub struct ImageDefaults {
    pub negative_prompt: &'static str,
    pub width: u32,
    pub height: u32,
    pub batch: usize,
    pub strength: f32,
    pub steps: usize,
    pub cfg: f32,
    pub sampler: SamplerKind,
    pub scheduler: Scheduler,
    pub output: &'static str,
}

pub const IMAGE: ImageDefaults = ImageDefaults {
    negative_prompt: "",
    width: 1024,
    height: 1024,
    batch: 1,
    strength: 0.6,
    steps: 25,
    cfg: 6.0,
    sampler: SamplerKind::Euler,
    scheduler: Scheduler::Normal,
    output: "nijigen.png",
};

/// Defaults of `nijigen video` (and the `[video]` keys, and stage 2 of `nijigen i2v`).
#[derive(Clone, Copy, Debug)]
pub struct VideoDefaults {
    /// Width x height without a first frame (`nijigen video` of a T2V model), and the video size
    /// of `nijigen i2v`; `nijigen video -i` takes the image's aspect at about 480p instead.
    pub size: (u32, u32),
    pub frames: usize,
    pub fps: u32,
    pub steps: usize,
    pub cfg: f32,
    pub sampler: SamplerKind,
    pub scheduler: Scheduler,
    pub qp: u8,
    pub output: &'static str,
}

pub const VIDEO: VideoDefaults = VideoDefaults {
    size: (832, 480),
    frames: 81,
    fps: DEFAULT_FPS,
    steps: 30,
    cfg: 5.0,
    sampler: SamplerKind::UniPcWan,
    scheduler: Scheduler::Simple,
    qp: 20,
    output: "nijigen.mp4",
};

/// `--prompt`: empty (no conditioning text).
pub const PROMPT: &str = "";
/// `--device`.
pub const DEVICE: &str = "auto";
/// `--threads` and `threads`: 0 = all cores.
pub const THREADS: usize = 0;
/// `--rng`: the only noise generator.
pub const RNG: &str = "torch";
/// `nijigen demo --seed`.
pub const DEMO_SEED: u64 = 42;
/// `nijigen demo --output-dir`.
pub const DEMO_OUTPUT_DIR: &str = ".";

// ---------------------------------------------------------------------------------------------
// The environment.

/// The environment variables nijigen reads, read once (tests build their own).
#[derive(Clone, Debug, Default)]
pub struct Environment {
    /// `NIJIGEN_MODELS` (set and not empty).
    pub models_dir: Option<PathBuf>,
    /// `NIJIGEN_COMFYUI` (set and not empty).
    pub comfyui: Option<PathBuf>,
    /// `NIJIGEN_CONFIG`; set and empty means no config file at all.
    pub config: Option<OsString>,
    pub xdg_config_home: Option<PathBuf>,
    pub home: Option<PathBuf>,
}

impl Environment {
    /// This process's environment.
    pub fn read() -> Environment {
        let path = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Environment {
            models_dir: path("NIJIGEN_MODELS"),
            comfyui: path("NIJIGEN_COMFYUI"),
            config: std::env::var_os("NIJIGEN_CONFIG"),
            xdg_config_home: path("XDG_CONFIG_HOME"),
            home: path("HOME"),
        }
    }

    fn user_config_path(&self) -> Option<PathBuf> {
        let base = match &self.xdg_config_home {
            Some(x) => x.clone(),
            None => self.home.as_ref()?.join(".config"),
        };
        Some(base.join("nijigen").join("nijigen.toml"))
    }
}

// ---------------------------------------------------------------------------------------------
// The config file.

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
    /// Wan2.2 A14B's high-noise expert.
    pub high_noise_model: Option<PathBuf>,
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
    /// Wan2.2 A14B's switch between its experts.
    pub boundary: Option<f64>,
    pub high_noise_steps: Option<usize>,
    pub high_noise_cfg: Option<f32>,
    pub high_noise_sampler: Option<String>,
    /// `--cache`: off or easycache[:THRESH].
    pub cache: Option<String>,
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

#[cfg(test)]
impl Loaded {
    /// A config file at `path` with the text `toml` (not read from disk).
    pub(crate) fn from_text(path: &Path, toml: &str) -> Loaded {
        Loaded {
            path: Some(path.to_path_buf()),
            origin: "test",
            searched: Vec::new(),
            file: toml::from_str(toml).unwrap(),
        }
    }
}

/// Finds and parses the config file.
pub fn load(env: &Environment) -> anyhow::Result<Loaded> {
    let mut searched = Vec::new();
    if env.config.as_ref().is_some_and(|v| v.is_empty()) {
        // Set and empty: no config file at all (scripts and tests that want only flags).
        return Ok(Loaded {
            origin: "none: NIJIGEN_CONFIG is empty",
            ..Loaded::default()
        });
    }
    let (path, origin) = if let Some(p) = &env.config {
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
            (env.user_config_path(), "user config"),
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

// ---------------------------------------------------------------------------------------------
// Resolution.

/// One setting resolved layer by layer, top down: the first layer with a value wins.
#[must_use]
pub struct Pick<T>(Option<Setting<T>>);

impl<T> Pick<T> {
    /// The command line: `value` is `Some` when `flag` was given.
    pub fn flag(flag: &'static str, value: Option<T>) -> Pick<T> {
        Pick(value.map(|v| Setting::new(v, Source::Flag(flag))))
    }

    /// The environment variable `var`.
    pub fn env(self, var: &'static str, value: Option<T>) -> Pick<T> {
        Pick(
            self.0
                .or_else(|| Some(Setting::new(value?, Source::Env(var)))),
        )
    }

    /// The config file's `value`.
    pub fn file(self, loaded: &Loaded, value: Option<T>) -> Pick<T> {
        Pick(
            self.0
                .or_else(|| Some(Setting::new(value?, Source::File(loaded.path.clone()?)))),
        )
    }

    /// The built-in default.
    pub fn or(self, default: T) -> Setting<T> {
        self.0
            .unwrap_or_else(|| Setting::new(default, Source::Default))
    }

    /// No default: `None` when no layer has a value.
    pub fn or_none(self) -> Option<Setting<T>> {
        self.0
    }
}

/// What lies under the command line, read once: the environment, the config file, and the
/// model search folders settled from them and the global flags.
#[derive(Clone, Debug, Default)]
pub struct Layers {
    pub env: Environment,
    pub loaded: Loaded,
    pub search: Search,
}

impl Layers {
    /// This process's environment and config file, with the global `--models-dir` and
    /// `--comfyui`.
    pub fn read(models_dir: Option<PathBuf>, comfyui: Option<PathBuf>) -> anyhow::Result<Layers> {
        let env = Environment::read();
        let loaded = load(&env)?;
        Layers::new(env, loaded, models_dir, comfyui)
    }

    /// Settles the search folders (flag, env, file) and checks that they are folders.
    pub fn new(
        env: Environment,
        loaded: Loaded,
        models_dir: Option<PathBuf>,
        comfyui: Option<PathBuf>,
    ) -> anyhow::Result<Layers> {
        let search = Search {
            models_dir: Pick::flag("--models-dir", models_dir)
                .env("NIJIGEN_MODELS", env.models_dir.clone())
                .file(&loaded, loaded.file.models_dir.clone())
                .or_none(),
            comfyui: Pick::flag("--comfyui", comfyui)
                .env("NIJIGEN_COMFYUI", env.comfyui.clone())
                .file(&loaded, loaded.file.comfyui.clone())
                .or_none(),
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
        Ok(Layers {
            env,
            loaded,
            search,
        })
    }

    pub fn file(&self) -> &FileConfig {
        &self.loaded.file
    }

    /// `--threads` / `-t`, else `threads`, else all cores.
    pub fn threads(&self, flag: Option<usize>) -> Setting<usize> {
        Pick::flag("--threads", flag)
            .file(&self.loaded, self.file().threads)
            .or(THREADS)
    }

    /// `--vram-budget`, else `vram_budget`, else none.
    pub fn vram_budget(&self, flag: Option<u64>) -> anyhow::Result<Option<Setting<u64>>> {
        let file = self
            .file()
            .vram_budget
            .as_deref()
            .map(|s| {
                parse_budget(s).map_err(|e| anyhow::anyhow!("vram_budget in the config file: {e}"))
            })
            .transpose()?;
        Ok(Pick::flag("--vram-budget", flag)
            .file(&self.loaded, file)
            .or_none())
    }
}

/// A sampler name of the config file (`key` names it in the error).
pub fn file_sampler(v: &Option<String>, key: &str) -> anyhow::Result<Option<SamplerKind>> {
    v.as_deref()
        .map(|s| parse_sampler(s).map_err(|e| anyhow::anyhow!("{key} in the config file: {e}")))
        .transpose()
}

/// A scheduler name of the config file (`key` names it in the error).
pub fn file_scheduler(v: &Option<String>, key: &str) -> anyhow::Result<Option<Scheduler>> {
    v.as_deref()
        .map(|s| parse_scheduler(s).map_err(|e| anyhow::anyhow!("{key} in the config file: {e}")))
        .transpose()
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

    #[test]
    fn folders_come_from_the_flag_then_the_environment_then_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let [flag, env, file] = ["flag", "env", "file"].map(|d| {
            let p = dir.path().join(d);
            std::fs::create_dir(&p).unwrap();
            p
        });
        let cfg = dir.path().join("nijigen.toml");
        let text = format!("models_dir = {:?}\n", file.to_str().unwrap());
        let with_env = Environment {
            models_dir: Some(env.clone()),
            ..Environment::default()
        };
        let models_dir = |e: &Environment, toml: &str, f: Option<&Path>| {
            Layers::new(
                e.clone(),
                Loaded::from_text(&cfg, toml),
                f.map(Path::to_path_buf),
                None,
            )
            .unwrap()
            .search
            .models_dir
            .map(|s| (s.value, s.source))
        };
        assert_eq!(
            models_dir(&with_env, &text, Some(&flag)),
            Some((flag.clone(), Source::Flag("--models-dir")))
        );
        assert_eq!(
            models_dir(&with_env, &text, None),
            Some((env, Source::Env("NIJIGEN_MODELS")))
        );
        let no_env = Environment::default();
        assert_eq!(
            models_dir(&no_env, &text, None),
            Some((file, Source::File(cfg.clone())))
        );
        assert_eq!(models_dir(&no_env, "", None), None);
        // A folder that is not one fails, naming where it came from.
        let e = Layers::new(
            no_env,
            Loaded::default(),
            Some(dir.path().join("nope")),
            None,
        )
        .unwrap_err();
        assert!(
            e.to_string().ends_with("not a folder (--models-dir)"),
            "{e}"
        );
    }

    #[test]
    fn threads_and_budget_come_from_the_flag_then_the_file_then_the_default() {
        let cfg = Path::new("/etc/nijigen.toml");
        let layers = |toml: &str| Layers {
            loaded: Loaded::from_text(cfg, toml),
            ..Layers::default()
        };
        let l = layers("threads = 3\nvram_budget = \"1G\"\n");
        assert_eq!(l.threads(Some(5)).value, 5);
        assert_eq!(l.threads(Some(5)).source, Source::Flag("--threads"));
        assert_eq!(l.threads(None).value, 3);
        assert_eq!(l.threads(None).source, Source::File(cfg.into()));
        let b = l.vram_budget(None).unwrap().unwrap();
        assert_eq!((b.value, b.source), (1 << 30, Source::File(cfg.into())));
        assert_eq!(l.vram_budget(Some(7)).unwrap().unwrap().value, 7);
        let l = layers("");
        assert_eq!(l.threads(None).value, THREADS);
        assert_eq!(l.threads(None).source, Source::Default);
        assert!(l.vram_budget(None).unwrap().is_none());
        let e = layers("vram_budget = \"lots\"\n")
            .vram_budget(None)
            .unwrap_err();
        assert!(e.to_string().starts_with("vram_budget in the config file"));
    }

    #[test]
    fn the_user_config_is_under_xdg_config_home_else_home() {
        let e = Environment {
            xdg_config_home: Some("/x".into()),
            home: Some("/h".into()),
            ..Environment::default()
        };
        assert_eq!(
            e.user_config_path(),
            Some(PathBuf::from("/x/nijigen/nijigen.toml"))
        );
        let e = Environment {
            home: Some("/h".into()),
            ..Environment::default()
        };
        assert_eq!(
            e.user_config_path(),
            Some(PathBuf::from("/h/.config/nijigen/nijigen.toml"))
        );
        assert_eq!(Environment::default().user_config_path(), None);
    }
}
