//! What a user sees without any model weights, compared with the files in tests/snapshots/:
//! `--help` and `-h` of every command and subcommand (enumerated from clap, so a new one
//! cannot be left out), and the messages of bad command lines and bad files.
//!
//! A mismatch fails with a line diff. `NIJIGEN_UPDATE_SNAPSHOTS=1 cargo test --test
//! cli_snapshots` rewrites the snapshots (and deletes those no command produces any more);
//! review the change with `git diff tests/snapshots`.
//!
//! `NIJIGEN_BIN=FILE` tests that binary instead of cargo's.
//!
//! The runs are made deterministic: help wrapped at 100 columns (`COLUMNS`, with no terminal
//! on stdin, stdout or stderr for clap to measure), no colours, no config file or models
//! folders from the environment, and the temporary folder shown as `[TMP]`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use clap::CommandFactory;
use common::{tiny_wan_i2v, write_safetensors, St};

/// Set (to anything but empty or 0) to rewrite the snapshots instead of comparing.
const UPDATE_VAR: &str = "NIJIGEN_UPDATE_SNAPSHOTS";

fn updating() -> bool {
    std::env::var(UPDATE_VAR).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn snapshot_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(kind)
}

/// One run of the binary: its arguments and extra environment, shown in the snapshot.
struct Case {
    name: String,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
}

impl Case {
    fn new(name: &str, args: &[&str]) -> Self {
        Case {
            name: name.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
        }
    }

    /// A case from a command line split at spaces; a word `@NAME` is the file NAME in `tmp`.
    fn line(name: &str, line: &str, tmp: &Path) -> Self {
        Case {
            name: name.into(),
            args: line.split_whitespace().map(|w| at(w, tmp)).collect(),
            env: Vec::new(),
        }
    }

    /// Sets `key` to `value` (`@NAME`: the file NAME in `tmp`).
    fn env(mut self, key: &'static str, value: &str, tmp: &Path) -> Self {
        self.env.push((key, at(value, tmp)));
        self
    }
}

/// `word`, or the path of file NAME in `tmp` for `@NAME`.
fn at(word: &str, tmp: &Path) -> String {
    match word.strip_prefix('@') {
        Some(name) => tmp.join(name).to_string_lossy().into_owned(),
        None => word.into(),
    }
}

/// `s` as a shell word.
fn quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=,[]@%+".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.into()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Replaces the temporary folder (as given and canonical) with `[TMP]`.
fn scrub(text: &str, tmp: &Path) -> String {
    let mut out = text.to_string();
    let canonical = tmp.canonicalize().unwrap_or_else(|_| tmp.to_path_buf());
    for p in [canonical, tmp.to_path_buf()] {
        let s = p.to_string_lossy();
        if !s.is_empty() {
            out = out.replace(s.as_ref(), "[TMP]");
        }
    }
    out
}

/// The binary under test: cargo's, or `NIJIGEN_BIN` (a copy of it, where other checkouts
/// share the target folder and may rebuild cargo's from their sources while the tests run).
fn binary() -> PathBuf {
    std::env::var_os("NIJIGEN_BIN")
        .filter(|v| !v.is_empty())
        .map_or_else(|| env!("CARGO_BIN_EXE_nijigen").into(), PathBuf::from)
}

/// Runs `case` in `cwd` and renders the command, exit status, stdout and stderr.
fn render(case: &Case, cwd: &Path) -> String {
    let mut cmd = Command::new(binary());
    cmd.args(&case.args)
        .current_dir(cwd)
        // No terminal anywhere, so clap wraps at COLUMNS and nothing is coloured.
        .stdin(Stdio::null())
        .env("COLUMNS", "100")
        .env_remove("LINES")
        .env("NO_COLOR", "1")
        .env_remove("CLICOLOR")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        // The user's settings stay out: no config file, no models folders.
        .env("NIJIGEN_CONFIG", "")
        .env_remove("NIJIGEN_MODELS")
        .env_remove("NIJIGEN_COMFYUI")
        .env("HOME", cwd)
        .env("XDG_CONFIG_HOME", cwd.join("config"))
        .env("XDG_CACHE_HOME", cwd.join("cache"));
    for (k, v) in &case.env {
        cmd.env(k, v);
    }
    let o = cmd.output().expect("run nijigen");
    let mut line = String::from("$");
    for (k, v) in &case.env {
        line.push_str(&format!(" {k}={}", quote(v)));
    }
    line.push_str(" nijigen");
    for a in &case.args {
        line.push(' ');
        line.push_str(&quote(a));
    }
    let mut text = format!("{line}\nexit status: {}\n", o.status.code().unwrap_or(-1));
    for (name, bytes) in [("stdout", &o.stdout), ("stderr", &o.stderr)] {
        if !bytes.is_empty() {
            let s = String::from_utf8_lossy(bytes);
            text.push_str(&format!("--- {name}\n{s}"));
            if !s.ends_with('\n') {
                text.push_str("\n(no newline at the end)\n");
            }
        }
    }
    scrub(&text, cwd)
}

/// A line diff of `old` to `new` (longest common subsequence), with two lines of context.
fn diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((' ', a[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', a[i]));
            i += 1;
        } else {
            ops.push(('+', b[j]));
            j += 1;
        }
    }
    let changed: Vec<usize> = (0..ops.len()).filter(|&k| ops[k].0 != ' ').collect();
    let near = |k: usize| changed.iter().any(|&c| c.abs_diff(k) <= 2);
    let mut out = String::new();
    let mut skipped = false;
    for (k, (tag, line)) in ops.iter().enumerate() {
        if near(k) {
            if skipped {
                out.push_str("  ...\n");
                skipped = false;
            }
            out.push_str(&format!("{tag} {line}\n"));
        } else {
            skipped = true;
        }
    }
    if out.is_empty() {
        out.push_str("(the same lines; the line endings differ)\n");
    }
    out
}

/// Compares each (file name, text) with its snapshot in tests/snapshots/`kind`, or writes them
/// when updating. Snapshot files no case produced fail too (or are deleted when updating),
/// except the names in `skipped` (cases this build does not run).
fn check(kind: &str, outputs: &[(String, String)], skipped: &[String]) {
    let dir = snapshot_dir(kind);
    let update = updating();
    if update {
        std::fs::create_dir_all(&dir).unwrap();
    }
    let mut failures = Vec::new();
    for (file, text) in outputs {
        let path = dir.join(file);
        let shown = format!("tests/snapshots/{kind}/{file}");
        match std::fs::read_to_string(&path) {
            Ok(old) if old.replace("\r\n", "\n") == *text => {}
            Ok(old) if !update => failures.push(format!(
                "{shown} differs (- snapshot, + now):\n{}",
                diff(&old, text)
            )),
            Err(_) if !update => failures.push(format!("{shown} is missing; the output:\n{text}")),
            _ => std::fs::write(&path, text).unwrap(),
        }
    }
    let produced: BTreeSet<&str> = outputs
        .iter()
        .map(|(f, _)| f.as_str())
        .chain(skipped.iter().map(|s| s.as_str()))
        .collect();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            if !produced.contains(name.as_str()) {
                if update {
                    std::fs::remove_file(dir.join(&name)).unwrap();
                } else {
                    failures.push(format!(
                        "tests/snapshots/{kind}/{name}: no case produces it any more"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} snapshot(s) of {kind} do not match; if the change is intended, rerun with \
         {UPDATE_VAR}=1 and review `git diff tests/snapshots`\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every command path: `[]` (nijigen itself), `["convert"]`, ..., `["plan", "image"]`, ...
fn command_paths(cmd: &clap::Command, prefix: &[String], out: &mut Vec<Vec<String>>) {
    out.push(prefix.to_vec());
    for sub in cmd.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        let mut path = prefix.to_vec();
        path.push(sub.get_name().to_string());
        command_paths(sub, &path, out);
    }
}

#[test]
fn help_of_every_command() {
    let mut paths = Vec::new();
    command_paths(&nijigen::cli::Cli::command(), &[], &mut paths);
    // The commands the snapshots were first taken of must still be there.
    for want in [
        "convert",
        "info",
        "image",
        "video",
        "i2v",
        "demo",
        "config",
        "devices",
        "plan",
        "plan image",
        "plan video",
        "plan i2v",
    ] {
        assert!(
            paths.iter().any(|p| p.join(" ") == want),
            "no `nijigen {want}`"
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut outputs = Vec::new();
    for path in &paths {
        let stem = if path.is_empty() {
            "nijigen".to_string()
        } else {
            path.join("-")
        };
        for (flag, suffix) in [("--help", "long"), ("-h", "short")] {
            let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
            args.push(flag);
            let case = Case::new(&stem, &args);
            let text = render(&case, tmp.path());
            assert!(text.contains("\nexit status: 0\n"), "{text}");
            outputs.push((format!("{stem}.{suffix}.txt"), text));
        }
    }
    check("help", &outputs, &[]);
}

/// Files the error cases refer to, in `dir`.
fn write_fixtures(dir: &Path) {
    write_safetensors(&dir.join("wan_tiny.safetensors"), &tiny_wan_i2v(), St::F32);
    std::fs::write(dir.join("garbage.gguf"), b"GGUX\x03\0\0\0").unwrap();
    std::fs::write(dir.join("empty.safetensors"), b"").unwrap();
    std::fs::create_dir(dir.join("folder.gguf")).unwrap();
    std::fs::create_dir(dir.join("models")).unwrap();
    std::fs::write(dir.join("bad.toml"), "threads = \"many\"\n").unwrap();
    std::fs::write(dir.join("broken.toml"), "[image\nsteps = 3\n").unwrap();
    std::fs::write(
        dir.join("settings.toml"),
        format!(
            "models_dir = \"{}\"\nthreads = 3\nvram_budget = \"10G\"\n\n[image]\n\
             model = \"missing.safetensors\"\nsteps = 30\nsampler = \"dpmpp_2m\"\n\n[video]\n\
             model = \"{}\"\nframes = 33\n",
            dir.join("models").display(),
            dir.join("wan_tiny.safetensors").display()
        ),
    )
    .unwrap();
}

/// Bad command lines and bad files: every case runs without model weights (the tiny Wan
/// file is a few MB of random values) and fails before computing anything, except the
/// `config` listings, which are also shown here.
fn error_cases(tmp: &Path) -> (Vec<Case>, Vec<String>) {
    let c = |name: &str, line: &str| Case::line(name, line, tmp);
    let mut cases = vec![
        // clap: usage errors (exit status 2).
        c("no-command", ""),
        c("unknown-command", "imagine"),
        c("unknown-flag", "image --colour red"),
        c("plan-no-what", "plan"),
        c("info-no-file", "info"),
        c("image-sampler", "image --sampler euler_b"),
        c("image-scheduler", "image --scheduler linear"),
        c("image-width-text", "image -W wide"),
        c("image-crop", "image --crop 12"),
        c("image-lora-spec", "image --lora :0.5"),
        c("image-vram-budget", "image --vram-budget 12X"),
        c("image-offload", "image --offload disk"),
        c("image-encoder-device", "image --text-encoder-device tpu"),
        c("image-rng", "image --rng philox"),
        c("video-rng", "video --rng philox"),
        c("i2v-rng", "i2v --rng philox"),
        c("video-sampler", "video --sampler dpm_adaptive"),
        c("video-qp", "video --qp 300"),
        c("i2v-vram-budget", "i2v --vram-budget lots"),
        c("plan-video-vram-budget", "plan video --vram-budget=-1G"),
        c(
            "convert-type",
            "convert @wan_tiny.safetensors -o out.gguf --type q4_k_z",
        ),
        c(
            "convert-imatrix-type",
            "convert @wan_tiny.safetensors -o out.gguf --type iq2_xxs",
        ),
        // nijigen: one line (and a hint), exit status 1.
        c("device-unknown", "image --device vulkan0 -m @missing.gguf"),
        c(
            "video-device-unknown",
            "video --device gpu -m @missing.gguf",
        ),
        c("i2v-device-unknown", "i2v --device cuda:x"),
        c(
            "image-width",
            "image -m @wan_tiny.safetensors -W 1001 -p x --seed 1",
        ),
        c(
            "image-steps",
            "image -m @wan_tiny.safetensors --steps 0 -p x --seed 1",
        ),
        c(
            "image-strength",
            "image -m @wan_tiny.safetensors --strength 1.5 -p x --seed 1",
        ),
        c(
            "video-size",
            "video -m @wan_tiny.safetensors -W 830 -H 480 -p x --seed 1",
        ),
        c(
            "video-frames",
            "video -m @wan_tiny.safetensors --frames 80 -p x --seed 1",
        ),
        c(
            "i2v-size",
            "i2v --image-model @wan_tiny.safetensors --video-model @wan_tiny.safetensors \
             -W 830 -p x --seed 1",
        ),
        c("i2v-no-image-model", "i2v -p x"),
        c("i2v-no-video-model", "i2v --image-model @missing.gguf -p x"),
        c("image-no-model", "image -p x --device cpu"),
        c(
            "image-missing-model",
            "image -m @missing.gguf -p x --device cpu",
        ),
        c(
            "image-missing-model-budget",
            "image -m @missing.gguf -p x --device cpu --vram-budget 8G",
        ),
        c(
            "image-garbage-model-budget",
            "image -m @garbage.gguf -p x --device cpu --vram-budget 8G --seed 1",
        ),
        c(
            "image-wrong-model",
            "image -m @wan_tiny.safetensors -p x --device cpu --seed 1",
        ),
        c(
            "video-missing-model",
            "video -m @missing.gguf -p x --device cpu",
        ),
        c(
            "video-garbage-model",
            "video -m @garbage.gguf -p x --device cpu --seed 1",
        ),
        c(
            "video-bare-name",
            "video -m wan.gguf -p x --device cpu --models-dir @models",
        ),
        c(
            "plan-image-missing",
            "plan image -m @missing.gguf --device cpu",
        ),
        c(
            "plan-image-garbage",
            "plan image -m @garbage.gguf --device cpu",
        ),
        c(
            "plan-image-wrong-model",
            "plan image -m @wan_tiny.safetensors --device cpu",
        ),
        c("info-missing", "info @missing.gguf"),
        c("info-folder", "info @folder.gguf"),
        c("info-garbage", "info @garbage.gguf"),
        c("info-empty", "info @empty.safetensors"),
        c(
            "convert-missing",
            "convert @missing.gguf -o out.gguf --type q8_0",
        ),
        c(
            "convert-onto-input",
            "convert @wan_tiny.safetensors -o @wan_tiny.safetensors --type q8_0 --overwrite",
        ),
        c(
            "convert-existing-output",
            "convert @wan_tiny.safetensors -o @garbage.gguf --type q8_0",
        ),
        c(
            "convert-no-folder",
            "convert @wan_tiny.safetensors -o @no/such/out.gguf --type q8_0",
        ),
        c("config-missing-file", "config").env("NIJIGEN_CONFIG", "@nope.toml", tmp),
        c("config-bad-value", "config").env("NIJIGEN_CONFIG", "@bad.toml", tmp),
        c("config-broken-toml", "config").env("NIJIGEN_CONFIG", "@broken.toml", tmp),
        c("image-bad-config", "image -p x").env("NIJIGEN_CONFIG", "@bad.toml", tmp),
        // Not errors: the settings in effect.
        c("config-defaults", "config"),
        c("config-file", "config").env("NIJIGEN_CONFIG", "@settings.toml", tmp),
        c("config-file-json", "config --json").env("NIJIGEN_CONFIG", "@settings.toml", tmp),
    ];
    // Without CUDA in the build, asking for a GPU says how to get one.
    let cuda = [
        (
            "image-cuda-unbuilt",
            "image --device cuda:0 -m @missing.gguf",
        ),
        ("i2v-cuda-unbuilt", "i2v --device cuda"),
    ];
    let mut skipped = Vec::new();
    for (name, line) in cuda {
        if cfg!(feature = "cuda") {
            skipped.push(format!("{name}.txt"));
        } else {
            cases.push(c(name, line));
        }
    }
    (cases, skipped)
}

#[test]
fn errors_and_settings() {
    let tmp = tempfile::tempdir().unwrap();
    write_fixtures(tmp.path());
    let (cases, skipped) = error_cases(tmp.path());
    let mut names = BTreeSet::new();
    let outputs: Vec<(String, String)> = cases
        .iter()
        .map(|c| {
            assert!(names.insert(&c.name), "two cases named {}", c.name);
            (format!("{}.txt", c.name), render(c, tmp.path()))
        })
        .collect();
    for (file, text) in &outputs {
        assert!(!text.contains("panicked"), "{file}: {text}");
    }
    check("errors", &outputs, &skipped);
}

/// An error says why: "error: opening FILE" goes on with the reason, on the same line.
#[test]
fn errors_show_their_cause() {
    let tmp = tempfile::tempdir().unwrap();
    write_fixtures(tmp.path());
    for (file, reason) in [
        ("garbage.gguf", "not a GGUF or safetensors file"),
        ("folder.gguf", "is a folder"),
    ] {
        for line in [
            format!("plan image -m @{file} --device cpu"),
            format!("image -m @{file} -p x --device cpu --vram-budget 8G"),
        ] {
            let text = render(&Case::line(file, &line, tmp.path()), tmp.path());
            let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("error:")).collect();
            assert!(text.contains("\nexit status: 1\n"), "{text}");
            assert_eq!(errors.len(), 1, "{text}");
            assert!(
                errors[0].starts_with(&format!("error: opening [TMP]/{file}: "))
                    && errors[0].contains(reason),
                "{text}"
            );
        }
    }
}

/// `--rng` names the noise generator wherever noise is drawn (image, video, i2v and their
/// plans); torch is the only one, any other value is a usage error.
#[test]
fn rng_flag_is_the_same_everywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |line: String| render(&Case::line("rng", &line, tmp.path()), tmp.path());
    for cmd in [
        "image",
        "video",
        "i2v",
        "plan image",
        "plan video",
        "plan i2v",
    ] {
        // Accepted: the run goes on and stops at the missing model.
        let torch = run(format!("{cmd} --rng torch"));
        let stderr = torch.split_once("--- stderr\n").map_or("", |(_, e)| e);
        assert!(torch.contains("\nexit status: 1\n"), "{torch}");
        assert!(
            stderr.starts_with("error: no ") && !stderr.contains("rng"),
            "{torch}"
        );
        let other = run(format!("{cmd} --rng cuda"));
        assert!(other.contains("\nexit status: 2\n"), "{other}");
        assert!(
            other.contains("error: invalid value 'cuda' for '--rng <RNG>'")
                && other.contains("[possible values: torch]"),
            "{other}"
        );
    }
}

/// The diff of a changed snapshot shows what changed, with context.
#[test]
fn diff_shows_changed_lines() {
    let d = diff("a\nb\nc\nd\ne\nf\ng\n", "a\nb\nc\nD\ne\nf\ng\nh\n");
    assert_eq!(d, "  ...\n  b\n  c\n- d\n+ D\n  e\n  f\n  g\n+ h\n");
    assert_eq!(
        diff("x\r\n", "x\n"),
        "(the same lines; the line endings differ)\n"
    );
}
