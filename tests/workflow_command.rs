//! Translating ComfyUI workflows into nijigen command lines: the real templates (every switch
//! setting of the Wan2.2 one) and the refusals.

use std::path::{Path, PathBuf};

use nijigen::workflow::{
    self, commands, commands_with, shell_line, CommandOptions, DateTime, Graph, Vocabulary,
    Workflow, WorkflowCommand, WorkflowError,
};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Helpers.

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/workflows")
        .join(name)
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

/// Options that touch no disk: ComfyUI at /comfy, counters from 1.
fn opts() -> CommandOptions {
    CommandOptions {
        input_dir: Some("/comfy/input".into()),
        output_dir: "/comfy/output".into(),
        counter_start: Some(1),
        ..Default::default()
    }
}

fn graph_of(v: Value) -> Graph {
    Workflow::from_value(v)
        .unwrap_or_else(|e| panic!("{e}"))
        .graph
}

fn one(g: &Graph, o: &CommandOptions) -> WorkflowCommand {
    let mut cmds = commands(g, o).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cmds.len(), 1, "{cmds:?}");
    cmds.remove(0)
}

fn refused(g: &Graph) -> String {
    commands(g, &opts())
        .expect_err("should be refused")
        .to_string()
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn has_note(c: &WorkflowCommand, part: &str) -> bool {
    c.notes.iter().any(|n| n.contains(part))
}

/// The value after `flag` (panics if absent).
fn flag<'a>(c: &'a WorkflowCommand, flag: &str) -> &'a str {
    let i = c
        .args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {:?}", c.args));
    &c.args[i + 1]
}

fn flags<'a>(c: &'a WorkflowCommand, name: &str) -> Vec<&'a str> {
    c.args
        .windows(2)
        .filter(|w| w[0] == name)
        .map(|w| w[1].as_str())
        .collect()
}

/// The normalized graph as API JSON, to edit and load again.
fn api_of(g: &Graph) -> Value {
    g.to_api_json()
}

fn set(api: &mut Value, id: &str, input: &str, v: Value) {
    api[id]["inputs"][input] = v;
}

fn remove(api: &mut Value, id: &str, input: &str) {
    api[id]["inputs"].as_object_mut().unwrap().remove(input);
}

fn add(api: &mut Value, id: &str, class: &str, inputs: Value) {
    api[id] = json!({"class_type": class, "inputs": inputs});
}

/// A scratch folder under the target dir, emptied first.
fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A `w` x `h` PNG (grey).
fn png_header(path: &Path, w: u32, h: u32) {
    image::GrayImage::from_pixel(w, h, image::Luma([128]))
        .save(path)
        .unwrap();
}

const WAN_NEG: &str = "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走";

fn wan22(edit: impl FnOnce(&mut Value)) -> Graph {
    let mut v = fixture_json("video_wan2_2_14B_i2v.json");
    edit(&mut v);
    graph_of(v)
}

fn wan22_instance(v: &mut Value) -> &mut Value {
    v["nodes"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|n| n["id"] == 129)
        .unwrap()
}

fn wan21() -> Graph {
    workflow::load(fixture("image_to_video_wan.json"))
        .unwrap()
        .graph
}

fn sdxl() -> Graph {
    workflow::load(fixture("image_sdxl_simple.json"))
        .unwrap()
        .graph
}

// ---------------------------------------------------------------------------------------------
// The templates.

#[test]
fn sdxl_simple_template() {
    let c = one(&sdxl(), &opts());
    let neg = "color, colored, lowres, blurry, out of focus, deformed, bad anatomy, extra limbs, \
               mutated, watermark, text, logo, signature\n";
    assert_eq!(
        c.args,
        args(&[
            "image",
            "--model",
            "sd_xl_base_1.0.safetensors",
            "--prompt",
            "a giant classical marble statue standing alone in a pure white empty void, soft \
             diffused lighting, subtle shadows, surreal, minimalist, fine art photography, quiet \
             atmosphere, sense of scale",
            "--negative-prompt",
            neg,
            "--width",
            "1024",
            "--height",
            "1024",
            "--steps",
            "25",
            "--cfg",
            "7",
            "--sampler",
            "dpmpp_2m",
            "--scheduler",
            "karras",
            "--seed",
            "812045847300606",
            "-o",
            "/comfy/output/sdxl_simple_00001_.png",
        ])
    );
    assert_eq!(c.output, Path::new("/comfy/output/sdxl_simple_00001_.png"));
    assert_eq!(c.output_node.as_str(), "7");
    assert!(has_note(&c, "control_after_generate"), "{:?}", c.notes);
}

#[test]
fn wan21_i2v_template() {
    let c = one(&wan21(), &opts());
    assert_eq!(
        c.args,
        args(&[
            "video",
            "--model",
            "wan2.1_i2v_480p_14B_fp16.safetensors",
            "--t5",
            "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
            "--clip-vision",
            "clip_vision_h.safetensors",
            "--vae",
            "wan_2.1_vae.safetensors",
            "--image",
            "/comfy/input/image_to_video_wan_start_image.png",
            "--prompt",
            "a cute anime girl with massive fennec ears and a big fluffy tail wearing a maid \
             outfit turning around",
            "--negative-prompt",
            WAN_NEG,
            "--width",
            "512",
            "--height",
            "512",
            "--frames",
            "33",
            "--fps",
            "16",
            "--steps",
            "20",
            "--cfg",
            "6",
            "--shift",
            "8",
            "--sampler",
            "uni_pc",
            "--scheduler",
            "simple",
            "--seed",
            "987948718394761",
            "--cache",
            "off",
            "-o",
            "/comfy/output/video/ComfyUI_00001_.mp4",
        ])
    );
    assert_eq!(c.output_node.as_str(), "56");
    // What nijigen does differently is said.
    assert!(has_note(&c, "crop none"), "{:?}", c.notes);
    assert!(has_note(&c, "bilinear"), "{:?}", c.notes);
    assert!(has_note(&c, "OpenH264"), "{:?}", c.notes);
}

#[test]
fn wan21_webp_saved_by_comfyui() {
    // The API prompt inside the WebP: SaveAnimatedWEBP, lossy quality 90 (nijigen's own).
    let g = workflow::load(fixture("image_to_video_wan-1.metadata_only.webp"))
        .unwrap()
        .graph;
    let c = one(&g, &opts());
    assert_eq!(flag(&c, "-o"), "/comfy/output/ComfyUI_00001_.webp");
    assert_eq!(flag(&c, "--fps"), "16");
    assert_eq!(flag(&c, "--image"), "/comfy/input/flux_dev_example.png");
    assert!(!has_note(&c, "quality"), "{:?}", c.notes);
    assert!(has_note(&c, "62 ms"), "{:?}", c.notes);
}

const WAN22_PROMPT: &str = "The white dragon warrior stands still, eyes full of determination \
    and strength. The camera slowly moves closer or circles around the warrior, highlighting the \
    powerful presence and heroic spirit of the character.";

fn wan22_args(extra_models: &[&str], sampling: &[&str]) -> Vec<String> {
    let mut v = args(&[
        "video",
        "--model",
        "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors",
        "--high-noise-model",
        "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
        "--t5",
        "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
        "--vae",
        "wan_2.1_vae.safetensors",
    ]);
    v.extend(args(extra_models));
    v.extend(args(&[
        "--image",
        "/comfy/input/video_wan2_2_14B_i2v_input_image.jpg",
        "--prompt",
        WAN22_PROMPT,
        "--negative-prompt",
        WAN_NEG,
        "--width",
        "640",
        "--height",
        "640",
        "--frames",
        "81",
        "--fps",
        "16",
    ]));
    v.extend(args(sampling));
    v.extend(args(&[
        "--cache",
        "off",
        "-o",
        "/comfy/output/video/Wan2.2_i2v_00001_.mp4",
    ]));
    v
}

#[test]
fn wan22_template_as_shipped() {
    // "Enable 4steps LoRA?" off: 20 steps, cfg 3.5, switch at step 10, no LoRA.
    let c = one(&wan22(|_| {}), &opts());
    assert_eq!(
        c.args,
        wan22_args(
            &[],
            &[
                "--steps",
                "20",
                "--cfg",
                "3.5",
                // The template's own float drift, kept: nijigen reads --shift as f64.
                "--shift",
                "5.000000000000001",
                "--sampler",
                "euler",
                "--scheduler",
                "simple",
                "--seed",
                "264244520398999",
                "--high-noise-steps",
                "10",
                "--high-noise-cfg",
                "3.5",
                "--high-noise-sampler",
                "euler",
            ]
        )
    );
    assert_eq!(c.output_node.as_str(), "108");
    // The second sampler's seed 0 is unused (euler draws no noise).
    assert!(has_note(&c, "noise_seed 0 is unused"), "{:?}", c.notes);
    assert!(has_note(&c, "JPEG"), "{:?}", c.notes);
    // No CLIP vision for Wan2.2, and no note asking for one.
    assert!(!has_note(&c, "clip_vision_output"), "{:?}", c.notes);
}

#[test]
fn wan22_template_with_4step_lora() {
    let c = one(
        &wan22(|v| wan22_instance(v)["widgets_values"][11] = json!(true)),
        &opts(),
    );
    assert_eq!(
        c.args,
        wan22_args(
            &[
                // 1.0000000000000002 in the file: the float32 nijigen (and ComfyUI) computes with.
                "--lora",
                "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors:1",
                "--high-noise-lora",
                "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors:1",
            ],
            &[
                "--steps",
                "4",
                "--cfg",
                "1",
                "--shift",
                "5.000000000000001",
                "--sampler",
                "euler",
                "--scheduler",
                "simple",
                "--seed",
                "264244520398999",
                "--high-noise-steps",
                "2",
                "--high-noise-cfg",
                "1",
                "--high-noise-sampler",
                "euler",
            ]
        )
    );
}

#[test]
fn wan22_promoted_widgets_reach_the_command() {
    let g = wan22(|v| {
        let wv = &mut wan22_instance(v)["widgets_values"];
        wv[0] = json!("a red fox in the snow");
        wv[1] = json!(832);
        wv[2] = json!(480);
        wv[3] = json!(3);
        wv[4] = json!(7);
        wv[5] = json!("high.gguf");
    });
    let c = one(&g, &opts());
    assert_eq!(flag(&c, "--prompt"), "a red fox in the snow");
    assert_eq!(flag(&c, "--width"), "832");
    assert_eq!(flag(&c, "--height"), "480");
    assert_eq!(flag(&c, "--frames"), "49");
    assert_eq!(flag(&c, "--seed"), "7");
    assert_eq!(flag(&c, "--high-noise-model"), "high.gguf");
}

#[test]
fn sdxl_base_refiner_is_refused() {
    let g = workflow::load(fixture("sdxl_simple_example.json"))
        .unwrap()
        .graph;
    let e = refused(&g);
    assert_eq!(
        e,
        "node 11 (KSamplerAdvanced): continues the latent of node 10 (KSamplerAdvanced) with \
         another model: an SDXL base + refiner workflow; nijigen has no refiner stage (delete \
         the refiner sampler and decode the base sampler's latent)"
    );
}

// ---------------------------------------------------------------------------------------------
// Options.

#[test]
fn seed_override_and_output_override() {
    let o = CommandOptions {
        seed_override: Some(42),
        output_override: Some("clip.mp4".into()),
        ..opts()
    };
    let c = one(&wan21(), &o);
    assert_eq!(flag(&c, "--seed"), "42");
    assert_eq!(flag(&c, "-o"), "clip.mp4");
    assert_eq!(c.output, Path::new("clip.mp4"));
    assert!(!has_note(&c, "control_after_generate"));
}

#[test]
fn input_dir_and_annotations() {
    let mut api = api_of(&wan21());
    let o = CommandOptions {
        input_dir: None,
        ..opts()
    };
    let c = one(&graph_of(api.clone()), &o);
    assert_eq!(flag(&c, "--image"), "image_to_video_wan_start_image.png");
    set(&mut api, "52", "image", json!("still_00003_.png [output]"));
    let c = one(&graph_of(api.clone()), &opts());
    assert_eq!(flag(&c, "--image"), "/comfy/output/still_00003_.png");
    set(&mut api, "52", "image", json!("x.png [temp]"));
    assert!(refused(&graph_of(api)).contains("temp folder"));
}

#[test]
fn counters_follow_the_output_folder() {
    let out = scratch("counters");
    std::fs::create_dir_all(out.join("video")).unwrap();
    for f in [
        "video/ComfyUI_00003_.mp4",
        "video/ComfyUI_00009_.png",
        "video/ComfyUI_x_.mp4",
        "video/ComfyUIx_00020_.mp4",
        "sdxl_simple_00002_.png",
    ] {
        std::fs::write(out.join(f), b"").unwrap();
    }
    let o = CommandOptions {
        output_dir: out.clone(),
        counter_start: None,
        ..opts()
    };
    // ComfyUI counts every extension: 9 + 1.
    let c = one(&wan21(), &o);
    assert_eq!(c.output, out.join("video/ComfyUI_00010_.mp4"));
    let c = one(&sdxl(), &o);
    assert_eq!(c.output, out.join("sdxl_simple_00003_.png"));
    // A folder that does not exist yet starts at 1.
    let o = CommandOptions {
        output_dir: out.join("new"),
        ..o
    };
    let c = one(&sdxl(), &o);
    assert_eq!(c.output, out.join("new/sdxl_simple_00001_.png"));
}

#[test]
fn prefix_variables_and_escapes() {
    let mut api = api_of(&sdxl());
    set(
        &mut api,
        "7",
        "filename_prefix",
        json!("%date:yyyy-MM-dd%/sdxl_%width%x%height%"),
    );
    let o = CommandOptions {
        now: Some(DateTime {
            year: 2025,
            month: 1,
            day: 2,
            hour: 3,
            minute: 4,
            second: 5,
        }),
        ..opts()
    };
    let c = one(&graph_of(api.clone()), &o);
    assert_eq!(
        c.output,
        Path::new("/comfy/output/2025-01-02/sdxl_1024x1024_00001_.png")
    );
    set(&mut api, "7", "filename_prefix", json!("../outside"));
    let e = commands(&graph_of(api.clone()), &o).unwrap_err();
    assert!(matches!(e, WorkflowError::InvalidValue { .. }), "{e}");
    assert!(e.to_string().contains("leaves the output folder"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Outputs.

#[test]
fn two_outputs_become_two_commands() {
    let mut api = api_of(&wan21());
    add(
        &mut api,
        "60",
        "SaveAnimatedWEBP",
        json!({"images": ["8", 0], "filename_prefix": "video/ComfyUI", "fps": 16.0,
               "lossless": true, "quality": 80, "method": "default"}),
    );
    add(
        &mut api,
        "61",
        "SaveVideo",
        json!({"video": ["55", 0], "filename_prefix": "video/ComfyUI", "format": "auto",
               "codec": "auto"}),
    );
    let g = graph_of(api);
    let cmds = commands(&g, &opts()).unwrap();
    let outs: Vec<(&str, &Path)> = cmds
        .iter()
        .map(|c| (c.output_node.as_str(), c.output.as_path()))
        .collect();
    // One counter for the folder and name, whatever the extension, in node order.
    assert_eq!(
        outs,
        [
            ("56", Path::new("/comfy/output/video/ComfyUI_00001_.mp4")),
            ("60", Path::new("/comfy/output/video/ComfyUI_00002_.webp")),
            ("61", Path::new("/comfy/output/video/ComfyUI_00003_.mp4")),
        ]
    );
    assert!(has_note(
        &cmds[1],
        "computes the same frames as the command of node 56"
    ));
    assert!(has_note(&cmds[1], "lossless"), "{:?}", cmds[1].notes);
    // Same arguments but the output.
    assert_eq!(
        cmds[0].args[..cmds[0].args.len() - 2],
        cmds[2].args[..cmds[2].args.len() - 2]
    );
    // -o names one file.
    let o = CommandOptions {
        output_override: Some("x.mp4".into()),
        ..opts()
    };
    let e = commands(&g, &o).unwrap_err().to_string();
    assert!(e.contains("3 outputs (nodes 56, 60, 61)"), "{e}");
}

#[test]
fn preview_image() {
    // Beside a SaveImage: skipped.
    let mut api = api_of(&sdxl());
    add(&mut api, "20", "PreviewImage", json!({"images": ["14", 0]}));
    let cmds = commands(&graph_of(api.clone()), &opts()).unwrap();
    assert_eq!(cmds.len(), 1);
    assert!(has_note(&cmds[0], "PreviewImage node 20 skipped"));
    // Alone: written to the output folder.
    api.as_object_mut().unwrap().remove("7");
    let c = one(&graph_of(api), &opts());
    assert_eq!(c.output, Path::new("/comfy/output/ComfyUI_temp_00001_.png"));
}

#[test]
fn vhs_video_combine() {
    let mut api = api_of(&wan21());
    api.as_object_mut().unwrap().remove("56");
    api.as_object_mut().unwrap().remove("55");
    add(
        &mut api,
        "70",
        "VHS_VideoCombine",
        json!({"images": ["8", 0], "frame_rate": 16, "loop_count": 0,
               "filename_prefix": "wan/clip", "format": "video/h264-mp4", "pingpong": false,
               "save_output": true, "pix_fmt": "yuv420p", "crf": 19}),
    );
    let out = scratch("vhs");
    std::fs::create_dir_all(out.join("wan")).unwrap();
    for f in [
        "wan/clip_00004.mp4",
        "wan/clip_00004.png",
        "wan/CLIP_00006-audio.mp4",
    ] {
        std::fs::write(out.join(f), b"").unwrap();
    }
    let o = CommandOptions {
        output_dir: out.clone(),
        counter_start: None,
        ..opts()
    };
    let c = one(&graph_of(api.clone()), &o);
    assert_eq!(c.output, out.join("wan/clip_00007.mp4"));
    assert!(has_note(&c, "crf 19"), "{:?}", c.notes);
    // GIF; pingpong and other formats are refused.
    set(&mut api, "70", "format", json!("image/gif"));
    let c = one(&graph_of(api.clone()), &opts());
    assert_eq!(c.output, Path::new("/comfy/output/wan/clip_00001.gif"));
    set(&mut api, "70", "pingpong", json!(true));
    assert!(refused(&graph_of(api.clone())).contains("pingpong"));
    set(&mut api, "70", "pingpong", json!(false));
    set(&mut api, "70", "format", json!("video/h265-mp4"));
    let e = refused(&graph_of(api));
    assert!(
        e.starts_with("node 70 (VHS_VideoCombine) input `format`: \"video/h265-mp4\""),
        "{e}"
    );
}

#[test]
fn fractional_fps_is_refused() {
    let mut api = api_of(&wan21());
    set(&mut api, "55", "fps", json!(23.976));
    let e = refused(&graph_of(api));
    assert!(e.contains("23.976 fps"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// SDXL variants.

/// The SDXL template with a LoraLoader between the checkpoint and the sampler and encoders.
fn sdxl_with_lora(strength_model: f64, strength_clip: f64) -> Value {
    let mut api = api_of(&sdxl());
    add(
        &mut api,
        "30",
        "LoraLoader",
        json!({"model": ["15", 0], "clip": ["15", 1], "lora_name": "style.safetensors",
               "strength_model": strength_model, "strength_clip": strength_clip}),
    );
    set(&mut api, "12", "model", json!(["30", 0]));
    set(&mut api, "10", "clip", json!(["30", 1]));
    set(&mut api, "11", "clip", json!(["30", 1]));
    api
}

#[test]
fn sdxl_loras() {
    let c = one(&graph_of(sdxl_with_lora(0.8, 0.8)), &opts());
    assert_eq!(flags(&c, "--lora"), ["style.safetensors:0.8"]);
    // UNet only: applied, with a note.
    let c = one(&graph_of(sdxl_with_lora(0.8, 0.0)), &opts());
    assert_eq!(flags(&c, "--lora"), ["style.safetensors:0.8"]);
    assert!(has_note(&c, "UNet only"), "{:?}", c.notes);
    // Both 0: left out.
    let c = one(&graph_of(sdxl_with_lora(0.0, 0.0)), &opts());
    assert!(flags(&c, "--lora").is_empty());
    // Different weights: nijigen has one.
    let e = refused(&graph_of(sdxl_with_lora(0.8, 0.5)));
    assert!(
        e.starts_with(
            "node 30 (LoraLoader): applies style.safetensors with strength_model 0.8 \
                       and strength_clip 0.5; nijigen's --lora FILE:W applies one weight"
        ),
        "{e}"
    );
    // The negative prompt without the LoRA: not the same text encoding.
    let mut api = sdxl_with_lora(0.8, 0.8);
    set(&mut api, "11", "clip", json!(["15", 1]));
    let e = refused(&graph_of(api));
    assert!(
        e.starts_with("node 11 (CLIPTextEncode): encodes the negative prompt"),
        "{e}"
    );
}

#[test]
fn sdxl_clip_skip_vae_and_tiles() {
    let mut api = api_of(&sdxl());
    add(
        &mut api,
        "31",
        "CLIPSetLastLayer",
        json!({"clip": ["15", 1], "stop_at_clip_layer": -2}),
    );
    set(&mut api, "10", "clip", json!(["31", 0]));
    set(&mut api, "11", "clip", json!(["31", 0]));
    add(
        &mut api,
        "32",
        "VAELoader",
        json!({"vae_name": "sdxl_vae_fp16_fix.safetensors"}),
    );
    set(&mut api, "14", "vae", json!(["32", 0]));
    api["14"]["class_type"] = json!("VAEDecodeTiled");
    set(&mut api, "14", "tile_size", json!(512));
    set(&mut api, "14", "overlap", json!(64));
    set(&mut api, "14", "temporal_size", json!(64));
    set(&mut api, "14", "temporal_overlap", json!(8));
    let c = one(&graph_of(api.clone()), &opts());
    assert_eq!(flag(&c, "--vae"), "sdxl_vae_fp16_fix.safetensors");
    assert_eq!(flag(&c, "--vae-tile"), "512");
    assert!(has_note(&c, "VAEDecodeTiled"), "{:?}", c.notes);
    set(&mut api, "31", "stop_at_clip_layer", json!(-1));
    let e = refused(&graph_of(api));
    assert_eq!(
        e,
        "node 31 (CLIPSetLastLayer) input `stop_at_clip_layer`: -1: nijigen's SDXL text encoders \
         always use the penultimate layer (-2, SDXL's own); it has no clip-skip flag"
    );
}

#[test]
fn sdxl_unet_only_with_dual_clip() {
    let mut api = api_of(&sdxl());
    add(
        &mut api,
        "40",
        "UnetLoaderGGUF",
        json!({"unet_name": "sdxl-unet-Q4_K_M.gguf"}),
    );
    add(
        &mut api,
        "41",
        "DualCLIPLoader",
        json!({"clip_name1": "clip_g.safetensors", "clip_name2": "clip_l.safetensors",
               "type": "sdxl"}),
    );
    add(
        &mut api,
        "42",
        "VAELoader",
        json!({"vae_name": "sdxl_vae.safetensors"}),
    );
    set(&mut api, "12", "model", json!(["40", 0]));
    set(&mut api, "10", "clip", json!(["41", 0]));
    set(&mut api, "11", "clip", json!(["41", 0]));
    set(&mut api, "14", "vae", json!(["42", 0]));
    let c = one(&graph_of(api.clone()), &opts());
    assert_eq!(
        c.args[..9],
        args(&[
            "image",
            "--model",
            "sdxl-unet-Q4_K_M.gguf",
            "--clip-l",
            "clip_l.safetensors",
            "--clip-g",
            "clip_g.safetensors",
            "--vae",
            "sdxl_vae.safetensors",
        ])
    );
    // A checkpoint with other text encoders: they replace its own.
    let mut ck = api.clone();
    set(&mut ck, "12", "model", json!(["15", 0]));
    let c = one(&graph_of(ck.clone()), &opts());
    assert_eq!(flag(&c, "--model"), "sd_xl_base_1.0.safetensors");
    assert_eq!(flag(&c, "--clip-l"), "clip_l.safetensors");
    // One CLIPLoader is not SDXL's pair.
    add(
        &mut ck,
        "43",
        "CLIPLoader",
        json!({"clip_name": "clip_l.safetensors", "type": "sdxl"}),
    );
    set(&mut ck, "10", "clip", json!(["43", 0]));
    set(&mut ck, "11", "clip", json!(["43", 0]));
    let e = refused(&graph_of(ck));
    assert!(
        e.starts_with("node 43 (CLIPLoader): gives the text encoders"),
        "{e}"
    );
    // The checkpoint's VAE with a UNet-only model: refused.
    set(&mut api, "14", "vae", json!(["15", 2]));
    assert!(refused(&graph_of(api)).contains("use a VAELoader"));
}

#[test]
fn sdxl_batch_size_brackets_and_denoise() {
    let mut api = api_of(&sdxl());
    set(&mut api, "13", "batch_size", json!(2));
    set(
        &mut api,
        "10",
        "text",
        json!("a [red] cat, (masterpiece:1.2)"),
    );
    let c = one(&graph_of(api.clone()), &opts());
    assert_eq!(flag(&c, "--batch"), "2");
    assert!(has_note(&c, "_01, _02"), "{:?}", c.notes);
    // ComfyUI reads [red] as text; nijigen as a weight unless escaped.
    assert_eq!(flag(&c, "--prompt"), r"a \[red\] cat, (masterpiece:1.2)");
    assert!(has_note(&c, "square brackets"), "{:?}", c.notes);
    // Partial denoise of an empty latent.
    set(&mut api, "12", "denoise", json!(0.8));
    let e = refused(&graph_of(api));
    assert_eq!(
        e,
        "node 12 (KSampler) input `denoise`: 0.8 on an empty latent: nijigen's txt2img always \
         denoises fully (no flag)"
    );
}

#[test]
fn sdxl_img2img() {
    let input = scratch("img2img");
    png_header(&input.join("sketch.png"), 1000, 750);
    let mut api = api_of(&sdxl());
    add(&mut api, "50", "LoadImage", json!({"image": "sketch.png"}));
    add(
        &mut api,
        "51",
        "VAEEncode",
        json!({"pixels": ["50", 0], "vae": ["15", 2]}),
    );
    set(&mut api, "12", "latent_image", json!(["51", 0]));
    set(&mut api, "12", "denoise", json!(0.6));
    api.as_object_mut().unwrap().remove("13");
    let o = CommandOptions {
        input_dir: Some(input.clone()),
        ..opts()
    };
    let c = one(&graph_of(api.clone()), &o);
    let path = input.join("sketch.png");
    // VAEEncode crops 750 to 744; nijigen's fit gives the same crop.
    assert_eq!(flag(&c, "--width"), "1000");
    assert_eq!(flag(&c, "--height"), "744");
    assert_eq!(flag(&c, "--init-image"), path.to_str().unwrap());
    assert_eq!(flag(&c, "--strength"), "0.6");
    assert!(!has_note(&c, "Lanczos"), "{:?}", c.notes);
    // Through ImageScale: its size.
    add(
        &mut api,
        "52",
        "ImageScale",
        json!({"image": ["50", 0], "upscale_method": "lanczos", "width": 1024,
               "height": 768, "crop": "center"}),
    );
    set(&mut api, "51", "pixels", json!(["52", 0]));
    let c = one(&graph_of(api.clone()), &o);
    assert_eq!((flag(&c, "--width"), flag(&c, "--height")), ("1024", "768"));
    assert!(has_note(&c, "ImageScale"), "{:?}", c.notes);
    // A missing image cannot be measured.
    set(&mut api, "51", "pixels", json!(["50", 0]));
    set(&mut api, "50", "image", json!("nope.png"));
    let e = commands(&graph_of(api), &o).unwrap_err().to_string();
    assert!(
        e.starts_with("node 50 (LoadImage): cannot read the size of"),
        "{e}"
    );
}

#[test]
fn unknown_sampler_and_scheduler() {
    let mut api = api_of(&sdxl());
    set(&mut api, "12", "sampler_name", json!("dpmpp_2s_ancestral"));
    let e = refused(&graph_of(api.clone()));
    assert!(
        e.starts_with(
            "node 12 (KSampler) input `sampler_name`: \"dpmpp_2s_ancestral\" is not a nijigen \
             sampler; supported: euler, euler_ancestral, heun, dpmpp_2m,"
        ),
        "{e}"
    );
    set(&mut api, "12", "sampler_name", json!("dpmpp_2m_sde_gpu"));
    let e = refused(&graph_of(api.clone()));
    assert!(
        e.contains("dpmpp_2m_sde is the same sampler with CPU noise"),
        "{e}"
    );
    set(&mut api, "12", "sampler_name", json!("euler"));
    set(&mut api, "12", "scheduler", json!("AYS SDXL"));
    let e = refused(&graph_of(api));
    assert!(
        e.starts_with(
            "node 12 (KSampler) input `scheduler`: \"AYS SDXL\" is not a nijigen scheduler"
        ),
        "{e}"
    );
}

#[test]
fn vocabulary_is_a_parameter() {
    struct Only;
    impl Vocabulary for Only {
        fn samplers(&self) -> Vec<&'static str> {
            vec!["euler"]
        }
        fn schedulers(&self) -> Vec<&'static str> {
            vec!["normal"]
        }
        fn is_stochastic(&self, _: &str) -> bool {
            false
        }
    }
    let e = commands_with(&sdxl(), &opts(), &Only)
        .unwrap_err()
        .to_string();
    assert!(e.ends_with("supported: euler"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Wan variants.

#[test]
fn wan22_mismatched_steps_scheduler_and_switch() {
    let base = api_of(&wan22(|_| {}));
    let mut api = base.clone();
    set(&mut api, "129:85", "steps", json!(30));
    let e = refused(&graph_of(api));
    assert_eq!(
        e,
        "node 129:85 (KSamplerAdvanced) input `steps`: 30 but node 129:86 has 20: nijigen's \
         experts share one schedule (--steps)"
    );
    let mut api = base.clone();
    set(&mut api, "129:85", "scheduler", json!("beta"));
    assert!(refused(&graph_of(api)).contains("share one --scheduler"));
    let mut api = base.clone();
    set(&mut api, "129:85", "start_at_step", json!(12));
    assert!(refused(&graph_of(api)).contains("continues where the high-noise one stops"));
    let mut api = base.clone();
    set(
        &mut api,
        "129:86",
        "return_with_leftover_noise",
        json!("disable"),
    );
    assert!(refused(&graph_of(api)).contains("return_with_leftover_noise"));
    let mut api = base.clone();
    set(&mut api, "129:85", "add_noise", json!("enable"));
    assert!(refused(&graph_of(api)).contains("fresh noise"));
    // Different shifts: nijigen has one.
    let mut api = base;
    set(&mut api, "129:104", "shift", json!(8.0));
    let e = refused(&graph_of(api));
    assert!(
        e.starts_with("node 129:104 (ModelSamplingSD3): gives the high-noise expert shift 8"),
        "{e}"
    );
}

#[test]
fn wan22_stochastic_second_sampler_needs_the_same_seed() {
    let mut api = api_of(&wan22(|_| {}));
    set(&mut api, "129:85", "sampler_name", json!("euler_ancestral"));
    let e = refused(&graph_of(api.clone()));
    assert_eq!(
        e,
        "node 129:85 (KSamplerAdvanced) input `noise_seed`: 0 differs from the first sampler's \
         264244520398999 and euler_ancestral draws noise on every step: ComfyUI seeds it with \
         its own noise_seed, nijigen with --seed (set both to the same seed, or use a sampler \
         without noise)"
    );
    set(&mut api, "129:85", "noise_seed", json!(264244520398999u64));
    let c = one(&graph_of(api), &opts());
    assert_eq!(flag(&c, "--sampler"), "euler_ancestral");
    assert_eq!(flag(&c, "--high-noise-sampler"), "euler");
}

#[test]
fn wan_without_start_image_is_refused() {
    let mut api = api_of(&wan21());
    remove(&mut api, "50", "start_image");
    remove(&mut api, "50", "clip_vision_output");
    let e = refused(&graph_of(api));
    assert_eq!(
        e,
        "node 50 (WanImageToVideo): has no start_image: nijigen runs Wan image-to-video from a \
         LoadImage first frame"
    );
}

#[test]
fn wan_frame_count_size_batch_and_denoise() {
    let base = api_of(&wan21());
    let mut api = base.clone();
    set(&mut api, "50", "length", json!(32));
    let e = refused(&graph_of(api));
    assert!(
        e.contains("32 frames: nijigen needs 4n + 1 (e.g. 29 or 33)"),
        "{e}"
    );
    let mut api = base.clone();
    set(&mut api, "50", "batch_size", json!(2));
    assert!(refused(&graph_of(api)).contains("one clip per run"));
    let mut api = base.clone();
    set(&mut api, "3", "denoise", json!(0.7));
    assert!(refused(&graph_of(api)).contains("always denoises fully"));
    // No ModelSamplingSD3: ComfyUI's default shift for Wan, 8.
    let mut api = base;
    set(&mut api, "3", "model", json!(["37", 0]));
    let c = one(&graph_of(api), &opts());
    assert_eq!(flag(&c, "--shift"), "8");
    assert!(has_note(&c, "no ModelSamplingSD3"), "{:?}", c.notes);
}

#[test]
fn wan_easycache_and_lora() {
    let mut api = api_of(&wan21());
    add(
        &mut api,
        "80",
        "LoraLoaderModelOnly",
        json!({"model": ["37", 0], "lora_name": "lightx2v_I2V_14B_480p_cfg_step_distill_rank64.safetensors",
               "strength_model": 0.75}),
    );
    set(&mut api, "54", "model", json!(["80", 0]));
    add(
        &mut api,
        "81",
        "EasyCache",
        json!({"model": ["54", 0], "reuse_threshold": 0.2, "start_percent": 0.15,
               "end_percent": 0.95, "verbose": false}),
    );
    set(&mut api, "3", "model", json!(["81", 0]));
    let c = one(&graph_of(api.clone()), &opts());
    assert_eq!(
        flags(&c, "--lora"),
        ["lightx2v_I2V_14B_480p_cfg_step_distill_rank64.safetensors:0.75"]
    );
    assert_eq!(flag(&c, "--cache"), "easycache:0.2");
    assert!(
        has_note(&c, "EasyCache's published script"),
        "{:?}",
        c.notes
    );
    set(&mut api, "81", "start_percent", json!(0.3));
    let e = refused(&graph_of(api.clone()));
    assert!(
        e.starts_with("node 81 (EasyCache): start_percent 0.3: nijigen's easycache always"),
        "{e}"
    );
    // A window that never opens: no cache.
    set(&mut api, "81", "start_percent", json!(0.95));
    let c = one(&graph_of(api), &opts());
    assert_eq!(flag(&c, "--cache"), "off");
}

#[test]
fn wan_clip_vision_of_another_image_is_refused() {
    let mut api = api_of(&wan21());
    add(&mut api, "90", "LoadImage", json!({"image": "other.png"}));
    set(&mut api, "51", "image", json!(["90", 0]));
    let e = refused(&graph_of(api));
    assert!(
        e.starts_with("node 51 (CLIPVisionEncode): encodes another image"),
        "{e}"
    );
}

#[test]
fn sdxl_image_into_wan_is_refused() {
    // An SDXL still generated in the same workflow as the first frame.
    let mut api = api_of(&wan21());
    for (id, n) in api_of(&sdxl()).as_object().unwrap() {
        if id != "7" {
            api[format!("s{id}")] = n.clone();
        }
    }
    let text = serde_json::to_string(&api).unwrap();
    // Re-link the copied SDXL nodes among themselves.
    let mut api: Value = serde_json::from_str(&text).unwrap();
    for id in ["s10", "s11", "s12", "s14"] {
        for (_, v) in api[id]["inputs"].as_object_mut().unwrap() {
            if let Some(a) = v.as_array_mut() {
                a[0] = json!(format!("s{}", a[0].as_str().unwrap()));
            }
        }
    }
    set(&mut api, "50", "start_image", json!(["s14", 0]));
    set(&mut api, "51", "image", json!(["s14", 0]));
    api.as_object_mut().unwrap().remove("52");
    let e = refused(&graph_of(api));
    assert!(
        e.starts_with(
            "node s14 (VAEDecode): feeds input `start_image` of node 50 \
                       (WanImageToVideo); an image generated in the same workflow"
        ),
        "{e}"
    );
}

#[test]
fn values_starting_with_a_dash_are_joined_to_their_flag() {
    let mut api = api_of(&sdxl());
    set(&mut api, "11", "text", json!("-blurry"));
    let c = one(&graph_of(api), &opts());
    assert!(
        c.args.contains(&"--negative-prompt=-blurry".to_string()),
        "{:?}",
        c.args
    );
    assert!(shell_line(&c.args).contains(" --negative-prompt=-blurry "));
}

#[test]
fn shell_line_quotes_prompts() {
    let c = one(&sdxl(), &opts());
    let line = shell_line(&c.args);
    assert!(line.starts_with(
        "nijigen image --model sd_xl_base_1.0.safetensors --prompt 'a giant classical marble"
    ));
    assert!(line.ends_with(" -o /comfy/output/sdxl_simple_00001_.png"));
}

#[test]
fn shell_line_round_trips_through_sh() {
    let sh = Path::new("/bin/sh");
    if !sh.exists() {
        return;
    }
    for g in [sdxl(), wan21(), wan22(|_| {})] {
        let mut c = one(&g, &opts());
        c.args.push("it's \"$x\" `y` \\ \n end".into());
        let line = shell_line(&c.args);
        // Replace the program name by a printer of its arguments, NUL-separated.
        let script = format!(
            "f() {{ printf '%s\\0' \"$@\"; }}; f{}",
            line.strip_prefix("nijigen").unwrap()
        );
        let out = std::process::Command::new(sh)
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        let got: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .split_terminator('\0')
            .map(String::from)
            .collect();
        assert_eq!(got, c.args);
    }
}
