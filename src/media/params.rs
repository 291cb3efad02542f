//! Generation parameters and their A1111 "infotext" form, the `parameters` PNG text chunk that
//! A1111, Forge, CivitAI and most image viewers read.
//!
//! Layout (as A1111's `create_infotext` writes it):
//! ```text
//! <prompt, possibly several lines>
//! Negative prompt: <negative, possibly several lines>      (omitted when empty)
//! Steps: 25, Sampler: Euler a, Schedule type: Karras, CFG scale: 6, Seed: 123, Size: 1024x1024, Model hash: 0123456789, Model: name, Lora hashes: "a: 0123456789ab", Version: nijigen 0.1.0
//! ```
//! Values containing `,`, `:`, `"` or a newline are written as JSON strings (`"..."` with `\"`
//! escapes), as A1111's `quote()` does (it quotes on `,`, `:` and newline; quoting on `"` as well
//! keeps the value parseable). LoRAs are written into the prompt as `<lora:name:weight>` tags,
//! the way A1111 users write them and CivitAI reads them; their hashes, when known, go to
//! `Lora hashes`.
//!
//! Samplers and schedulers are stored with their ComfyUI names (`euler_ancestral`, `karras`) and
//! shown with A1111 display names (`Euler a`, `Karras`); unknown names pass through unchanged.
//! Parsing follows A1111's `parse_generation_parameters`: lines are trimmed, the last line holds
//! the parameters when it has at least three `key: value` pairs.

use std::sync::OnceLock;

use regex::Regex;

use super::{MediaError, Result};

/// One LoRA applied at generation.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraRef {
    /// File stem as written in `<lora:name:weight>`.
    pub name: String,
    pub weight: f32,
    /// A1111 short hash (first 12 hex digits of the file's SHA-256), if the caller has one;
    /// written to `Lora hashes`.
    pub hash: Option<String>,
}

/// What produced an image, as written into its `parameters` chunk.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationParams {
    pub prompt: String,
    /// Empty when none.
    pub negative: String,
    pub steps: u32,
    /// ComfyUI sampler name (`euler`, `euler_ancestral`, `dpmpp_2m`, ...).
    pub sampler: String,
    /// ComfyUI scheduler name (`normal`, `karras`, ...); empty means A1111's "Automatic".
    pub scheduler: String,
    pub cfg: f32,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    /// Model name (file stem), empty when unknown.
    pub model: String,
    /// A1111 AutoV2 hash (first 10 hex digits of the file's SHA-256), when the caller has one.
    pub model_hash: Option<String>,
    pub loras: Vec<LoraRef>,
    /// Further `key: value` pairs, written in order before `Version`.
    pub extra: Vec<(String, String)>,
    /// `Version` field; [`GenerationParams::new`] sets `nijigen <crate version>`.
    pub version: Option<String>,
}

/// The `Version` value nijigen writes.
pub fn nijigen_version() -> String {
    format!("nijigen {}", env!("CARGO_PKG_VERSION"))
}

impl GenerationParams {
    /// Parameters with the given prompt and nijigen defaults elsewhere (euler, normal, 25 steps,
    /// CFG 6, 1024x1024, seed 0); set the other fields directly.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            negative: String::new(),
            steps: 25,
            sampler: "euler".into(),
            scheduler: "normal".into(),
            cfg: 6.0,
            seed: 0,
            width: 1024,
            height: 1024,
            model: String::new(),
            model_hash: None,
            loras: Vec::new(),
            extra: Vec::new(),
            version: Some(nijigen_version()),
        }
    }

    /// The A1111 infotext (see the module docs).
    pub fn to_a1111(&self) -> String {
        let mut prompt = self.prompt.clone();
        for l in &self.loras {
            let tag = format!("<lora:{}:{}>", l.name, fmt_f32(l.weight));
            if !prompt.contains(&tag) {
                if !prompt.is_empty() {
                    prompt.push(' ');
                }
                prompt.push_str(&tag);
            }
        }
        let mut out = prompt;
        if !self.negative.is_empty() {
            out.push_str("\nNegative prompt: ");
            out.push_str(&self.negative);
        }
        let mut kv: Vec<(&str, String)> = vec![
            ("Steps", self.steps.to_string()),
            ("Sampler", sampler_display(&self.sampler).into_owned()),
            (
                "Schedule type",
                scheduler_display(&self.scheduler).into_owned(),
            ),
            ("CFG scale", fmt_f32(self.cfg)),
            ("Seed", self.seed.to_string()),
            ("Size", format!("{}x{}", self.width, self.height)),
        ];
        if let Some(h) = &self.model_hash {
            kv.push(("Model hash", h.clone()));
        }
        if !self.model.is_empty() {
            kv.push(("Model", self.model.clone()));
        }
        let lora_hashes: Vec<String> = self
            .loras
            .iter()
            .filter_map(|l| l.hash.as_ref().map(|h| format!("{}: {}", l.name, h)))
            .collect();
        if !lora_hashes.is_empty() {
            kv.push(("Lora hashes", lora_hashes.join(", ")));
        }
        for (k, v) in &self.extra {
            kv.push((k, v.clone()));
        }
        if let Some(v) = &self.version {
            kv.push(("Version", v.clone()));
        }
        let line: Vec<String> = kv
            .iter()
            .map(|(k, v)| format!("{k}: {}", quote(v)))
            .collect();
        out.push('\n');
        out.push_str(&line.join(", "));
        out
    }

    /// Parses an A1111/Forge/nijigen infotext. Fields missing from the text keep the defaults of
    /// [`GenerationParams::new`] except `version`, which is `None` unless present. Unknown keys
    /// go to `extra` in order. `<lora:name:weight>` tags are moved from the prompt to `loras`.
    pub fn parse_a1111(text: &str) -> Result<GenerationParams> {
        let mut p = GenerationParams::new("");
        p.version = None;
        let mut lines: Vec<&str> = text.trim().split('\n').collect();
        let last = lines.last().copied().unwrap_or("");
        let pairs: Vec<(String, String)> = re_param()
            .captures_iter(last)
            .map(|c| (c[1].trim().to_string(), c[2].to_string()))
            .collect();
        let pairs = if pairs.len() >= 3 {
            lines.pop();
            pairs
        } else {
            Vec::new()
        };

        let (mut prompt, mut negative) = (String::new(), String::new());
        let mut in_negative = false;
        for line in lines {
            let mut line = line.trim();
            if let Some(rest) = line.strip_prefix("Negative prompt:") {
                in_negative = true;
                line = rest.trim();
            }
            let dst = if in_negative {
                &mut negative
            } else {
                &mut prompt
            };
            if !dst.is_empty() {
                dst.push('\n');
            }
            dst.push_str(line);
        }
        let (prompt, loras) = take_lora_tags(&prompt)?;
        p.prompt = prompt;
        p.negative = negative;
        p.loras = loras;

        let mut scheduler_seen = false;
        for (k, raw) in pairs {
            let v = unquote(&raw);
            let bad = |what: &str| MediaError::Parameters(format!("{what}: cannot parse {v:?}"));
            match k.as_str() {
                "Steps" => p.steps = v.trim().parse().map_err(|_| bad("Steps"))?,
                "Sampler" => p.sampler = v,
                "Schedule type" => {
                    p.scheduler = scheduler_from_display(&v);
                    scheduler_seen = true;
                }
                "CFG scale" => p.cfg = v.trim().parse().map_err(|_| bad("CFG scale"))?,
                "Seed" => p.seed = parse_seed(&v).ok_or_else(|| bad("Seed"))?,
                "Size" => {
                    let (w, h) = v.trim().split_once('x').ok_or_else(|| bad("Size"))?;
                    p.width = w.trim().parse().map_err(|_| bad("Size"))?;
                    p.height = h.trim().parse().map_err(|_| bad("Size"))?;
                }
                "Model hash" => p.model_hash = Some(v),
                "Model" => p.model = v,
                "Lora hashes" => {
                    for item in v.split(',') {
                        let Some((name, hash)) = item.split_once(':') else {
                            continue;
                        };
                        let (name, hash) = (name.trim(), hash.trim().to_string());
                        match p.loras.iter_mut().find(|l| l.name == name) {
                            Some(l) => l.hash = Some(hash),
                            None => p.loras.push(LoraRef {
                                name: name.to_string(),
                                weight: 1.0,
                                hash: Some(hash),
                            }),
                        }
                    }
                }
                "Version" => p.version = Some(v),
                _ => p.extra.push((k, v)),
            }
        }
        // Older A1111 wrote "Sampler: DPM++ 2M Karras" with no "Schedule type".
        let display = std::mem::take(&mut p.sampler);
        let (display, legacy_sched) = split_legacy_sampler(&display, scheduler_seen);
        p.sampler = sampler_from_display(display);
        if let Some(s) = legacy_sched {
            p.scheduler = s.to_string();
        }
        Ok(p)
    }
}

fn re_param() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    // A1111 modules/infotext_utils.py re_param.
    RE.get_or_init(|| {
        Regex::new(r#"\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)"#).expect("valid regex")
    })
}

fn re_lora() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"<lora:([^:>]+):([^:>]+)(?::[^>]*)?>").expect("valid regex"))
}

fn take_lora_tags(prompt: &str) -> Result<(String, Vec<LoraRef>)> {
    let mut loras = Vec::new();
    for c in re_lora().captures_iter(prompt) {
        let weight: f32 = c[2]
            .trim()
            .parse()
            .map_err(|_| MediaError::Parameters(format!("LoRA tag {:?}: bad weight", &c[0])))?;
        loras.push(LoraRef {
            name: c[1].to_string(),
            weight,
            hash: None,
        });
    }
    if loras.is_empty() {
        return Ok((prompt.to_string(), loras));
    }
    let stripped = re_lora().replace_all(prompt, "");
    let lines: Vec<&str> = stripped.split('\n').map(str::trim).collect();
    Ok((lines.join("\n").trim().to_string(), loras))
}

fn parse_seed(v: &str) -> Option<u64> {
    let v = v.trim();
    v.parse::<u64>()
        .ok()
        // A1111 seeds are signed in places (-1 means random); keep the bits.
        .or_else(|| v.parse::<i64>().ok().map(|s| s as u64))
}

/// A1111 `quote()`: plain unless the value contains `,`, `:`, a newline (or `"`), then a JSON
/// string (non-ASCII kept as is).
fn quote(v: &str) -> String {
    if !v.contains([',', ':', '\n', '"']) {
        return v.to_string();
    }
    serde_json::to_string(v).unwrap_or_else(|_| v.to_string())
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        if let Ok(s) = serde_json::from_str::<String>(v) {
            return s;
        }
    }
    v.to_string()
}

/// Shortest decimal that round-trips (`6`, `5.5`, `0.75`).
fn fmt_f32(x: f32) -> String {
    format!("{x}")
}

/// ComfyUI sampler name → A1111 display name.
const SAMPLERS: &[(&str, &str)] = &[
    ("euler", "Euler"),
    ("euler_ancestral", "Euler a"),
    ("heun", "Heun"),
    ("dpm_2", "DPM2"),
    ("dpm_2_ancestral", "DPM2 a"),
    ("lms", "LMS"),
    ("dpm_fast", "DPM fast"),
    ("dpm_adaptive", "DPM adaptive"),
    ("dpmpp_2s_ancestral", "DPM++ 2S a"),
    ("dpmpp_sde", "DPM++ SDE"),
    ("dpmpp_2m", "DPM++ 2M"),
    ("dpmpp_2m_sde", "DPM++ 2M SDE"),
    ("dpmpp_3m_sde", "DPM++ 3M SDE"),
    ("ddim", "DDIM"),
    ("uni_pc", "UniPC"),
    ("lcm", "LCM"),
];

/// ComfyUI scheduler name → A1111 "Schedule type" display name (A1111 >= 1.9, Forge).
const SCHEDULERS: &[(&str, &str)] = &[
    ("", "Automatic"),
    ("normal", "Normal"),
    ("karras", "Karras"),
    ("exponential", "Exponential"),
    ("sgm_uniform", "SGM Uniform"),
    ("simple", "Simple"),
    ("ddim_uniform", "DDIM"),
    ("beta", "Beta"),
    ("kl_optimal", "KL Optimal"),
    ("uniform", "Uniform"),
    ("polyexponential", "Polyexponential"),
    ("align_your_steps", "Align Your Steps"),
];

fn lookup<'a>(table: &[(&'a str, &'a str)], comfy: &'a str) -> std::borrow::Cow<'a, str> {
    table
        .iter()
        .find(|(c, _)| *c == comfy)
        .map(|(_, d)| std::borrow::Cow::Borrowed(*d))
        .unwrap_or(std::borrow::Cow::Borrowed(comfy))
}

fn reverse(table: &[(&str, &str)], display: &str) -> String {
    table
        .iter()
        .find(|(_, d)| d.eq_ignore_ascii_case(display.trim()))
        .map(|(c, _)| c.to_string())
        .unwrap_or_else(|| display.trim().to_string())
}

/// A1111 display name of a ComfyUI sampler name (unknown names unchanged).
pub fn sampler_display(comfy: &str) -> std::borrow::Cow<'_, str> {
    lookup(SAMPLERS, comfy)
}

/// A1111 "Schedule type" of a ComfyUI scheduler name (empty → `Automatic`).
pub fn scheduler_display(comfy: &str) -> std::borrow::Cow<'_, str> {
    lookup(SCHEDULERS, comfy)
}

/// ComfyUI name of an A1111 sampler display name (unknown names unchanged).
pub fn sampler_from_display(display: &str) -> String {
    reverse(SAMPLERS, display)
}

/// ComfyUI name of an A1111 "Schedule type" (`Automatic` → empty).
pub fn scheduler_from_display(display: &str) -> String {
    reverse(SCHEDULERS, display)
}

fn split_legacy_sampler(display: &str, scheduler_seen: bool) -> (&str, Option<&'static str>) {
    if scheduler_seen {
        return (display, None);
    }
    for (suffix, comfy) in [(" Karras", "karras"), (" Exponential", "exponential")] {
        if let Some(base) = display.strip_suffix(suffix) {
            return (base, Some(comfy));
        }
    }
    (display, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> GenerationParams {
        let mut p =
            GenerationParams::new("1girl, solo, (cherry blossoms:1.2)\nsecond line, 日本語");
        p.negative = "lowres, bad anatomy".into();
        p.steps = 25;
        p.sampler = "euler_ancestral".into();
        p.scheduler = "karras".into();
        p.cfg = 6.0;
        p.seed = 123;
        p.width = 832;
        p.height = 1216;
        p.model = "animagine-xl-4.0".into();
        p.model_hash = Some("6327eca98b".into());
        p.loras = vec![LoraRef {
            name: "detail".into(),
            weight: 0.8,
            hash: Some("1a2b3c4d5e6f".into()),
        }];
        p.extra = vec![
            ("Denoising strength".into(), "0.5".into()),
            ("Note".into(), "a, \"b\"".into()),
        ];
        p
    }

    #[test]
    fn writes_a1111_layout() {
        let s = sample().to_a1111();
        let expected =
            "1girl, solo, (cherry blossoms:1.2)\nsecond line, 日本語 <lora:detail:0.8>\n\
Negative prompt: lowres, bad anatomy\n\
Steps: 25, Sampler: Euler a, Schedule type: Karras, CFG scale: 6, Seed: 123, Size: 832x1216, \
Model hash: 6327eca98b, Model: animagine-xl-4.0, Lora hashes: \"detail: 1a2b3c4d5e6f\", \
Denoising strength: 0.5, Note: \"a, \\\"b\\\"\", Version: nijigen 0.1.0";
        assert_eq!(s, expected);
    }

    #[test]
    fn round_trip() {
        let p = sample();
        let back = GenerationParams::parse_a1111(&p.to_a1111()).unwrap();
        assert_eq!(back, p);
        // Minimal: empty prompt and negative, no model.
        let mut q = GenerationParams::new("");
        q.sampler = "dpmpp_2m_sde".into();
        q.scheduler = "sgm_uniform".into();
        q.cfg = 5.5;
        let s = q.to_a1111();
        assert!(!s.contains("Negative prompt"));
        assert_eq!(GenerationParams::parse_a1111(&s).unwrap(), q);
    }

    #[test]
    fn parses_a1111_written_text() {
        // As written by A1111 1.10 (with a multi-line prompt and LoRA tag).
        let text = "masterpiece, best quality, 1girl, <lora:add_detail:0.6>\nupper body\n\
Negative prompt: worst quality, low quality\nwatermark\n\
Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3840938485, \
Size: 832x1216, Model hash: 1449e5b0b9, Model: animagineXLV31_v31, Denoising strength: 0.35, \
Hires upscale: 1.5, Hires upscaler: R-ESRGAN 4x+ Anime6B, \
Lora hashes: \"add_detail: 7c6bad76eb54\", TI hashes: \"EasyNegative: c74b4e810b03\", Version: v1.10.1";
        let p = GenerationParams::parse_a1111(text).unwrap();
        assert_eq!(p.prompt, "masterpiece, best quality, 1girl,\nupper body");
        assert_eq!(p.negative, "worst quality, low quality\nwatermark");
        assert_eq!(p.steps, 28);
        assert_eq!(p.sampler, "dpmpp_2m");
        assert_eq!(p.scheduler, "karras");
        assert_eq!(p.cfg, 7.0);
        assert_eq!(p.seed, 3840938485);
        assert_eq!((p.width, p.height), (832, 1216));
        assert_eq!(p.model, "animagineXLV31_v31");
        assert_eq!(p.model_hash.as_deref(), Some("1449e5b0b9"));
        assert_eq!(
            p.loras,
            vec![LoraRef {
                name: "add_detail".into(),
                weight: 0.6,
                hash: Some("7c6bad76eb54".into())
            }]
        );
        assert_eq!(p.version.as_deref(), Some("v1.10.1"));
        assert_eq!(
            p.extra,
            vec![
                ("Denoising strength".to_string(), "0.35".to_string()),
                ("Hires upscale".into(), "1.5".into()),
                ("Hires upscaler".into(), "R-ESRGAN 4x+ Anime6B".into()),
                ("TI hashes".into(), "EasyNegative: c74b4e810b03".into()),
            ]
        );
    }

    #[test]
    fn parses_legacy_sampler_and_no_params() {
        let p = GenerationParams::parse_a1111(
            "a cat\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: -1, Size: 512x512",
        )
        .unwrap();
        assert_eq!(p.sampler, "dpmpp_2m");
        assert_eq!(p.scheduler, "karras");
        assert_eq!(p.seed, u64::MAX);
        let p = GenerationParams::parse_a1111("just a prompt, nothing else").unwrap();
        assert_eq!(p.prompt, "just a prompt, nothing else");
        assert_eq!(p.steps, 25);
    }

    #[test]
    fn bad_numbers_are_errors() {
        let e = GenerationParams::parse_a1111("x\nSteps: many, Sampler: Euler, CFG scale: 7")
            .unwrap_err();
        assert!(e.to_string().contains("Steps"), "{e}");
    }

    #[test]
    fn names_map_both_ways() {
        for (c, d) in SAMPLERS {
            assert_eq!(sampler_display(c), *d);
            assert_eq!(sampler_from_display(d), *c);
        }
        for (c, d) in SCHEDULERS {
            assert_eq!(scheduler_display(c), *d);
            assert_eq!(scheduler_from_display(d), *c);
        }
        assert_eq!(sampler_display("res_multistep"), "res_multistep");
    }
}
