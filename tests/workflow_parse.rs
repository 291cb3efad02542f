//! Parsing real ComfyUI templates and hand-built workflows into normalized graphs.

use std::path::PathBuf;

use nijigen::workflow::{
    self, graph_from_ui, Container, Format, Graph, Input, NodeId, Workflow, WorkflowError,
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

fn link(node: &str, output: usize) -> Input {
    Input::Link {
        node: NodeId::from(node),
        output,
    }
}

/// The class_type of the node feeding `id`.`input`.
fn upstream_type<'a>(g: &'a Graph, id: &str, input: &str) -> &'a str {
    &g.upstream(id, input)
        .unwrap_or_else(|| panic!("{id}.{input} is not a link"))
        .class_type
}

fn f64_eq(a: Option<f64>, b: f64) {
    let a = a.expect("a number");
    assert!((a - b).abs() < 1e-9, "{a} != {b}");
}

fn ids(g: &Graph) -> Vec<&str> {
    g.nodes.keys().map(NodeId::as_str).collect()
}

const WIDGET_TYPES: [&str; 5] = ["INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"];

/// Builds small UI-format workflows.
#[derive(Default)]
struct Ui {
    nodes: Vec<Value>,
    links: Vec<Value>,
    next_link: i64,
}

impl Ui {
    fn new() -> Self {
        Ui {
            next_link: 100,
            ..Default::default()
        }
    }

    fn add(&mut self, id: i64, ty: &str, outputs: &[&str], widgets: Value) -> &mut Self {
        let outputs: Vec<Value> = outputs
            .iter()
            .map(|t| json!({"name": t, "type": t, "links": []}))
            .collect();
        self.nodes.push(json!({
            "id": id, "type": ty, "mode": 0, "inputs": [], "outputs": outputs,
            "widgets_values": widgets, "properties": {}
        }));
        self
    }

    fn node_mut(&mut self, id: i64) -> &mut Value {
        self.nodes.iter_mut().find(|n| n["id"] == id).unwrap()
    }

    /// Declares an input (unlinked) so input order can be chosen.
    fn input(&mut self, to: i64, name: &str, ty: &str) -> usize {
        let node = self.node_mut(to);
        let inputs = node["inputs"].as_array_mut().unwrap();
        if let Some(p) = inputs.iter().position(|i| i["name"] == name) {
            return p;
        }
        let mut i = json!({"name": name, "type": ty, "link": null});
        if WIDGET_TYPES.contains(&ty) {
            i["widget"] = json!({ "name": name });
        }
        inputs.push(i);
        inputs.len() - 1
    }

    fn link(&mut self, from: i64, slot: usize, to: i64, name: &str, ty: &str) -> &mut Self {
        let id = self.next_link;
        self.next_link += 1;
        let pos = self.input(to, name, ty);
        self.node_mut(to)["inputs"][pos]["link"] = json!(id);
        self.links.push(json!([id, from, slot, to, pos, ty]));
        self
    }

    fn mode(&mut self, id: i64, mode: i64) -> &mut Self {
        self.node_mut(id)["mode"] = json!(mode);
        self
    }

    fn json(&self) -> Value {
        json!({"nodes": self.nodes, "links": self.links, "groups": [], "version": 0.4})
    }
}

/// A plain SDXL text-to-image graph: 4 checkpoint, 5 latent, 6/7 prompts, 3 KSampler,
/// 8 VAEDecode, 9 SaveImage.
fn sdxl_ui() -> Ui {
    let mut u = Ui::new();
    u.add(
        4,
        "CheckpointLoaderSimple",
        &["MODEL", "CLIP", "VAE"],
        json!(["sd_xl_base_1.0.safetensors"]),
    )
    .add(5, "EmptyLatentImage", &["LATENT"], json!([1024, 1024, 1]))
    .add(6, "CLIPTextEncode", &["CONDITIONING"], json!(["a cat"]))
    .add(7, "CLIPTextEncode", &["CONDITIONING"], json!(["blurry"]))
    .add(
        3,
        "KSampler",
        &["LATENT"],
        json!([42, "fixed", 20, 7.5, "euler", "normal", 1.0]),
    )
    .add(8, "VAEDecode", &["IMAGE"], json!([]))
    .add(9, "SaveImage", &[], json!(["out"]));
    u.link(4, 1, 6, "clip", "CLIP")
        .link(4, 1, 7, "clip", "CLIP")
        .link(4, 0, 3, "model", "MODEL")
        .link(6, 0, 3, "positive", "CONDITIONING")
        .link(7, 0, 3, "negative", "CONDITIONING")
        .link(5, 0, 3, "latent_image", "LATENT")
        .link(3, 0, 8, "samples", "LATENT")
        .link(4, 2, 8, "vae", "VAE")
        .link(8, 0, 9, "images", "IMAGE");
    u
}

fn load_ui(v: Value) -> Workflow {
    Workflow::from_value(v).unwrap_or_else(|e| panic!("{e}"))
}

fn err_ui(v: Value) -> WorkflowError {
    Workflow::from_value(v).expect_err("should be refused")
}

// ---------------------------------------------------------------------------------------------
// Official templates.

#[test]
fn wan21_i2v_480p_template() {
    let w = workflow::load(fixture("image_to_video_wan.json")).unwrap();
    assert_eq!(w.source, Format::Ui);
    assert_eq!(w.container, Container::Json);
    assert!(w.api.is_none() && w.ui.is_some());
    let g = &w.graph;
    // Notes dropped, nothing else.
    assert_eq!(
        ids(g),
        ["3", "6", "7", "8", "37", "38", "39", "49", "50", "51", "52", "54", "55", "56"]
    );

    let ks = g.node("3").unwrap();
    assert_eq!(ks.class_type, "KSampler");
    assert_eq!(ks.value_i64("seed"), Some(987948718394761));
    assert_eq!(ks.value_i64("steps"), Some(20));
    f64_eq(ks.value_f64("cfg"), 6.0);
    assert_eq!(ks.value_str("sampler_name"), Some("uni_pc"));
    assert_eq!(ks.value_str("scheduler"), Some("simple"));
    f64_eq(ks.value_f64("denoise"), 1.0);
    assert!(ks.input("control_after_generate").is_none());

    // Model chain: KSampler <- ModelSamplingSD3(shift 8) <- UNETLoader.
    assert_eq!(upstream_type(g, "3", "model"), "ModelSamplingSD3");
    f64_eq(g.value_f64("54", "shift"), 8.0);
    assert_eq!(
        g.value_str("37", "unet_name"),
        Some("wan2.1_i2v_480p_14B_fp16.safetensors")
    );
    assert_eq!(g.value_str("37", "weight_dtype"), Some("default"));
    assert_eq!(
        g.value_str("38", "clip_name"),
        Some("umt5_xxl_fp8_e4m3fn_scaled.safetensors")
    );
    assert_eq!(g.value_str("38", "type"), Some("wan"));
    assert_eq!(
        g.value_str("39", "vae_name"),
        Some("wan_2.1_vae.safetensors")
    );
    assert_eq!(
        g.value_str("49", "clip_name"),
        Some("clip_vision_h.safetensors")
    );
    assert_eq!(g.value_str("51", "crop"), Some("none"));

    // WanImageToVideo 512x512, 33 frames, fed by the prompts, VAE, CLIP vision and the image.
    let wan = g.node("50").unwrap();
    assert_eq!(wan.value_i64("width"), Some(512));
    assert_eq!(wan.value_i64("height"), Some(512));
    assert_eq!(wan.value_i64("length"), Some(33));
    assert_eq!(wan.value_i64("batch_size"), Some(1));
    assert_eq!(wan.input("clip_vision_output"), Some(&link("51", 0)));
    assert_eq!(wan.input("start_image"), Some(&link("52", 0)));
    assert_eq!(ks.input("positive"), Some(&link("50", 0)));
    assert_eq!(ks.input("negative"), Some(&link("50", 1)));
    assert_eq!(ks.input("latent_image"), Some(&link("50", 2)));
    assert_eq!(
        g.value_str("52", "image"),
        Some("image_to_video_wan_start_image.png")
    );
    assert!(g
        .value_str("6", "text")
        .unwrap()
        .starts_with("a cute anime girl"));
    assert!(g.value_str("7", "text").unwrap().starts_with("色调艳丽"));

    // Output: CreateVideo(16 fps) -> SaveVideo "video/ComfyUI".
    let outs = g.outputs();
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].id.as_str(), "56");
    assert_eq!(outs[0].class_type, "SaveVideo");
    assert_eq!(outs[0].value_str("filename_prefix"), Some("video/ComfyUI"));
    assert_eq!(outs[0].value_str("format"), Some("auto"));
    assert_eq!(upstream_type(g, "56", "video"), "CreateVideo");
    f64_eq(g.value_f64("55", "fps"), 16.0);

    // Loaders come before their users.
    let order: Vec<&str> = g
        .topological_order()
        .unwrap()
        .iter()
        .map(|n| n.id.as_str())
        .collect();
    let pos = |id: &str| order.iter().position(|x| *x == id).unwrap();
    assert!(pos("37") < pos("54") && pos("54") < pos("3") && pos("3") < pos("8"));
    assert_eq!(*order.last().unwrap(), "56");
}

fn wan22(edit: impl FnOnce(&mut Value)) -> Workflow {
    let mut v = fixture_json("video_wan2_2_14B_i2v.json");
    edit(&mut v);
    load_ui(v)
}

fn wan22_instance(v: &mut Value) -> &mut Value {
    v["nodes"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|n| n["id"] == 129)
        .unwrap()
}

/// Facts that hold whatever the 4-step switch says.
fn wan22_common(g: &Graph) {
    // Subgraph nodes carry the frontend's execution ids.
    assert_eq!(g.node("129:98").unwrap().class_type, "WanImageToVideo");
    for n in g.nodes.values() {
        assert!(
            !matches!(
                n.class_type.as_str(),
                "ComfySwitchNode"
                    | "ComfyMathExpression"
                    | "PrimitiveInt"
                    | "PrimitiveFloat"
                    | "PrimitiveBoolean"
                    | "MarkdownNote"
            ),
            "{} ({}) should be folded away",
            n.id,
            n.class_type
        );
    }
    let wan = g.node("129:98").unwrap();
    assert_eq!(wan.value_i64("width"), Some(640));
    assert_eq!(wan.value_i64("height"), Some(640));
    // length = floor(duration 5 s * 16 fps + 1), a ComfyMathExpression.
    assert_eq!(wan.value_i64("length"), Some(81));
    assert_eq!(wan.input("start_image"), Some(&link("97", 0)));
    assert_eq!(
        g.value_str("97", "image"),
        Some("video_wan2_2_14B_i2v_input_image.jpg")
    );
    assert_eq!(
        g.value_str("129:84", "clip_name"),
        Some("umt5_xxl_fp8_e4m3fn_scaled.safetensors")
    );
    assert_eq!(g.value_str("129:84", "type"), Some("wan"));
    assert_eq!(
        g.value_str("129:90", "vae_name"),
        Some("wan_2.1_vae.safetensors")
    );
    assert!(g
        .value_str("129:93", "text")
        .unwrap()
        .starts_with("The white dragon warrior"));

    // Two experts: high noise first (adds noise, returns leftover), low noise second.
    let high = g.node("129:86").unwrap();
    let low = g.node("129:85").unwrap();
    assert_eq!(high.value_str("add_noise"), Some("enable"));
    assert_eq!(high.value_i64("noise_seed"), Some(264244520398999));
    assert_eq!(high.value_str("return_with_leftover_noise"), Some("enable"));
    assert_eq!(high.value_i64("start_at_step"), Some(0));
    assert_eq!(low.value_str("add_noise"), Some("disable"));
    assert_eq!(low.value_i64("noise_seed"), Some(0));
    assert_eq!(low.value_str("return_with_leftover_noise"), Some("disable"));
    for k in [high, low] {
        assert_eq!(k.value_str("sampler_name"), Some("euler"));
        assert_eq!(k.value_str("scheduler"), Some("simple"));
    }
    assert_eq!(low.input("latent_image"), Some(&link("129:86", 0)));
    assert_eq!(high.input("latent_image"), Some(&link("129:98", 2)));
    assert_eq!(upstream_type(g, "129:86", "model"), "ModelSamplingSD3");
    assert_eq!(upstream_type(g, "129:85", "model"), "ModelSamplingSD3");
    f64_eq(g.value_f64("129:104", "shift"), 5.0);
    f64_eq(g.value_f64("129:103", "shift"), 5.0);
    assert_eq!(
        g.value_str("129:95", "unet_name"),
        Some("wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors")
    );
    assert_eq!(
        g.value_str("129:96", "unet_name"),
        Some("wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors")
    );

    // Output: VAEDecode -> CreateVideo(16 fps) -> SaveVideo "video/Wan2.2_i2v" at top level.
    let outs = g.outputs();
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].id.as_str(), "108");
    assert_eq!(
        outs[0].value_str("filename_prefix"),
        Some("video/Wan2.2_i2v")
    );
    assert_eq!(outs[0].input("video"), Some(&link("129:94", 0)));
    f64_eq(g.value_f64("129:94", "fps"), 16.0);
    assert_eq!(
        g.node("129:87").unwrap().input("samples"),
        Some(&link("129:85", 0))
    );
    g.topological_order().unwrap();
}

#[test]
fn wan22_14b_i2v_template_as_shipped_full_steps() {
    // As shipped, "Enable 4steps LoRA?" is off: 20 steps, cfg 3.5, switch at step 10, no LoRA.
    let w = wan22(|_| {});
    let g = &w.graph;
    wan22_common(g);
    let (high, low) = (g.node("129:86").unwrap(), g.node("129:85").unwrap());
    assert_eq!(high.value_i64("steps"), Some(20));
    f64_eq(high.value_f64("cfg"), 3.5);
    assert_eq!(high.value_i64("end_at_step"), Some(10));
    assert_eq!(low.value_i64("steps"), Some(20));
    f64_eq(low.value_f64("cfg"), 3.5);
    assert_eq!(low.value_i64("start_at_step"), Some(10));
    assert_eq!(low.value_i64("end_at_step"), Some(20));
    // Experts load straight from the UNETs.
    assert_eq!(
        g.upstream("129:104", "model").unwrap().id.as_str(),
        "129:95"
    );
    assert_eq!(
        g.upstream("129:103", "model").unwrap().id.as_str(),
        "129:96"
    );
    assert_eq!(g.nodes_of_type("LoraLoaderModelOnly").count(), 0);
    assert!(w.notes.is_empty(), "{:?}", w.notes);
}

#[test]
fn wan22_14b_i2v_template_with_4step_lora() {
    // Turning the promoted "enable_turbo_mode" widget on selects the lightx2v branch.
    let w = wan22(|v| wan22_instance(v)["widgets_values"][11] = json!(true));
    let g = &w.graph;
    wan22_common(g);
    let (high, low) = (g.node("129:86").unwrap(), g.node("129:85").unwrap());
    assert_eq!(high.value_i64("steps"), Some(4));
    f64_eq(high.value_f64("cfg"), 1.0);
    assert_eq!(high.value_i64("end_at_step"), Some(2));
    assert_eq!(low.value_i64("steps"), Some(4));
    f64_eq(low.value_f64("cfg"), 1.0);
    assert_eq!(low.value_i64("start_at_step"), Some(2));
    assert_eq!(low.value_i64("end_at_step"), Some(4));
    // ModelSamplingSD3 <- LoraLoaderModelOnly <- UNETLoader, per expert.
    let lora_high = g.upstream("129:104", "model").unwrap();
    let lora_low = g.upstream("129:103", "model").unwrap();
    assert_eq!(lora_high.id.as_str(), "129:101");
    assert_eq!(lora_low.id.as_str(), "129:102");
    assert_eq!(
        lora_high.value_str("lora_name"),
        Some("wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors")
    );
    assert_eq!(
        lora_low.value_str("lora_name"),
        Some("wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors")
    );
    f64_eq(lora_high.value_f64("strength_model"), 1.0);
    f64_eq(lora_low.value_f64("strength_model"), 1.0);
    assert_eq!(lora_high.input("model"), Some(&link("129:95", 0)));
    assert_eq!(lora_low.input("model"), Some(&link("129:96", 0)));
}

#[test]
fn wan22_promoted_widgets_follow_the_instance() {
    // The instance's widgets_values (prompt, width, height, duration, seed, models, ...) are the
    // promoted widgets, in the subgraph's input order; they override the inner nodes' values.
    let w = wan22(|v| {
        let wv = &mut wan22_instance(v)["widgets_values"];
        wv[0] = json!("a red fox in the snow");
        wv[1] = json!(832);
        wv[2] = json!(480);
        wv[3] = json!(3); // seconds
        wv[4] = json!(7);
        wv[5] = json!("high.gguf");
        wv[9] = json!("umt5-q8.safetensors");
    });
    let g = &w.graph;
    assert_eq!(g.value_str("129:93", "text"), Some("a red fox in the snow"));
    let wan = g.node("129:98").unwrap();
    assert_eq!(wan.value_i64("width"), Some(832));
    assert_eq!(wan.value_i64("height"), Some(480));
    assert_eq!(wan.value_i64("length"), Some(49)); // floor(3 * 16 + 1)
    assert_eq!(g.value_i64("129:86", "noise_seed"), Some(7));
    assert_eq!(g.value_str("129:95", "unet_name"), Some("high.gguf"));
    assert_eq!(
        g.value_str("129:84", "clip_name"),
        Some("umt5-q8.safetensors")
    );
    // The negative prompt is not promoted and keeps the inner value.
    assert!(g
        .value_str("129:89", "text")
        .unwrap()
        .starts_with("色调艳丽"));
}

#[test]
fn wan22_bypassed_or_muted_instance() {
    // A muted subgraph instance runs nothing, and SaveVideo loses its only input.
    let e = Workflow::from_value({
        let mut v = fixture_json("video_wan2_2_14B_i2v.json");
        wan22_instance(&mut v)["mode"] = json!(2);
        v
    })
    .unwrap_err();
    assert!(matches!(e, WorkflowError::NoOutput { .. }), "{e}");
    assert!(e.to_string().contains("muted"), "{e}");
}

#[test]
fn sdxl_base_refiner_template() {
    let w = workflow::load(fixture("sdxl_simple_example.json")).unwrap();
    let g = &w.graph;
    // Notes, the unused VAE output and the frontend PrimitiveNodes are gone.
    assert_eq!(
        ids(g),
        ["4", "5", "6", "7", "10", "11", "12", "15", "16", "17", "19"]
    );
    assert_eq!(
        g.value_str("4", "ckpt_name"),
        Some("sd_xl_base_1.0.safetensors")
    );
    assert_eq!(
        g.value_str("12", "ckpt_name"),
        Some("sd_xl_refiner_1.0.safetensors")
    );
    let base = g.node("10").unwrap();
    assert_eq!(base.title.as_deref(), Some("KSampler (Advanced) - BASE"));
    assert_eq!(base.value_str("add_noise"), Some("enable"));
    assert_eq!(base.value_i64("noise_seed"), Some(721897303308196));
    assert_eq!(base.value_i64("steps"), Some(25)); // PrimitiveNode "steps"
    f64_eq(base.value_f64("cfg"), 8.0);
    assert_eq!(base.value_str("sampler_name"), Some("euler"));
    assert_eq!(base.value_str("scheduler"), Some("normal"));
    assert_eq!(base.value_i64("start_at_step"), Some(0));
    assert_eq!(base.value_i64("end_at_step"), Some(20)); // PrimitiveNode "end_at_step"
    assert_eq!(base.value_str("return_with_leftover_noise"), Some("enable"));
    assert_eq!(base.input("model"), Some(&link("4", 0)));
    assert_eq!(base.input("latent_image"), Some(&link("5", 0)));

    let refiner = g.node("11").unwrap();
    assert_eq!(refiner.value_str("add_noise"), Some("disable"));
    assert_eq!(refiner.value_i64("noise_seed"), Some(0));
    assert_eq!(refiner.value_i64("steps"), Some(25));
    assert_eq!(refiner.value_i64("start_at_step"), Some(20));
    assert_eq!(refiner.value_i64("end_at_step"), Some(10000));
    assert_eq!(
        refiner.value_str("return_with_leftover_noise"),
        Some("disable")
    );
    assert_eq!(refiner.input("model"), Some(&link("12", 0)));
    assert_eq!(refiner.input("latent_image"), Some(&link("10", 0)));

    // Prompts come from the two PrimitiveNodes, into both encoders each.
    for id in ["6", "15"] {
        assert_eq!(
            g.value_str(id, "text"),
            Some("evening sunset scenery blue sky nature, glass bottle with a galaxy in it")
        );
    }
    for id in ["7", "16"] {
        assert_eq!(g.value_str(id, "text"), Some("text, watermark"));
    }
    assert_eq!(g.node("15").unwrap().input("clip"), Some(&link("12", 1)));
    // Decoded with the refiner's VAE, saved as "ComfyUI".
    assert_eq!(g.node("17").unwrap().input("vae"), Some(&link("12", 2)));
    let outs = g.outputs();
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].class_type, "SaveImage");
    assert_eq!(outs[0].value_str("filename_prefix"), Some("ComfyUI"));
}

#[test]
fn sdxl_template_primitive_overrides_stale_widgets() {
    // The samplers' own widgets still say 25 steps / end 20; the PrimitiveNodes linked to them win.
    let mut v = fixture_json("sdxl_simple_example.json");
    for n in v["nodes"].as_array_mut().unwrap() {
        match n["id"].as_i64() {
            Some(45) => n["widgets_values"][0] = json!(40),
            Some(47) => n["widgets_values"][0] = json!(32),
            Some(51) => n["widgets_values"][0] = json!("a lighthouse"),
            _ => {}
        }
    }
    let g = load_ui(v).graph;
    assert_eq!(g.value_i64("10", "steps"), Some(40));
    assert_eq!(g.value_i64("10", "end_at_step"), Some(32));
    assert_eq!(g.value_i64("11", "steps"), Some(40));
    assert_eq!(g.value_i64("11", "start_at_step"), Some(32));
    assert_eq!(g.value_str("6", "text"), Some("a lighthouse"));
    assert_eq!(g.value_str("15", "text"), Some("a lighthouse"));
}

#[test]
fn sdxl_simple_template() {
    let g = workflow::load(fixture("image_sdxl_simple.json"))
        .unwrap()
        .graph;
    let ks = g.node("12").unwrap();
    assert_eq!(ks.value_i64("seed"), Some(812045847300606));
    assert_eq!(ks.value_i64("steps"), Some(25));
    f64_eq(ks.value_f64("cfg"), 7.0);
    assert_eq!(ks.value_str("sampler_name"), Some("dpmpp_2m"));
    assert_eq!(ks.value_str("scheduler"), Some("karras"));
    assert_eq!(ks.input("model"), Some(&link("15", 0)));
    assert_eq!(
        g.value_str("15", "ckpt_name"),
        Some("sd_xl_base_1.0.safetensors")
    );
    assert_eq!(g.value_i64("13", "width"), Some(1024));
    assert_eq!(g.value_i64("13", "height"), Some(1024));
    assert_eq!(g.value_str("7", "filename_prefix"), Some("sdxl_simple"));
}

#[test]
fn real_comfyui_webp_prefers_the_prompt() {
    // EXIF written by ComfyUI itself (big-endian TIFF, "Exif\0\0" prefix).
    let w = workflow::load(fixture("image_to_video_wan-1.metadata_only.webp")).unwrap();
    assert_eq!(w.container, Container::Webp);
    assert_eq!(w.source, Format::Api);
    assert!(w.ui.is_some() && w.api.is_some());
    let g = &w.graph;
    let ks = g.node("3").unwrap();
    assert_eq!(ks.value_i64("seed"), Some(987948718394761));
    assert_eq!(ks.value_str("sampler_name"), Some("uni_pc"));
    assert_eq!(g.value_i64("50", "length"), Some(33));
    let save = &g.outputs()[0];
    assert_eq!(save.class_type, "SaveAnimatedWEBP");
    f64_eq(save.value_f64("fps"), 16.0);
    assert_eq!(save.value_i64("quality"), Some(90));
    // The older frontend that wrote it let LoadImage's `upload` button through; it is dropped.
    assert!(g.input("52", "upload").is_none());
    // The UI workflow in the same file normalizes to the same graph.
    let ui = w.ui_graph().unwrap().unwrap();
    assert_eq!(ui.nodes.len(), g.nodes.len());
    for (id, n) in &g.nodes {
        let m = &ui.nodes[id];
        assert_eq!(n.class_type, m.class_type);
        assert_eq!(
            n.inputs.keys().collect::<Vec<_>>(),
            m.inputs.keys().collect::<Vec<_>>(),
            "{id}"
        );
        for (name, i) in &n.inputs {
            match (i, &m.inputs[name]) {
                (Input::Value(a), Input::Value(b)) if a.is_number() => {
                    assert_eq!(a.as_f64(), b.as_f64(), "{id}.{name}")
                }
                (a, b) => assert_eq!(a, b, "{id}.{name}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// API format.

fn sdxl_api() -> Value {
    json!({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 832, "height": 1216, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "_meta": {"title": "Sampler"}, "inputs": {
            "seed": 5, "steps": 30, "cfg": 6.5, "sampler_name": "dpmpp_2m", "scheduler": "karras",
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "api", "images": ["8", 0]}},
        "10": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    })
}

#[test]
fn api_format() {
    let w = Workflow::from_json(&sdxl_api().to_string()).unwrap();
    assert_eq!(w.source, Format::Api);
    assert!(w.ui.is_none());
    let g = &w.graph;
    assert_eq!(g.node("3").unwrap().title.as_deref(), Some("Sampler"));
    assert_eq!(g.input("3", "model"), Some(&link("4", 0)));
    assert_eq!(g.value_i64("3", "steps"), Some(30));
    assert_eq!(g.value_i64("5", "height"), Some(1216));
    let outs: Vec<&str> = g.outputs().iter().map(|n| n.id.as_str()).collect();
    assert_eq!(outs, ["9", "10"]);

    // to_api_json round-trips.
    let again = Workflow::from_value(g.to_api_json()).unwrap().graph;
    for (id, n) in &g.nodes {
        assert_eq!(n.inputs, again.nodes[id].inputs);
    }

    // A node id may be a number in a link; an array constant comes wrapped.
    let mut v = sdxl_api();
    v["3"]["inputs"]["model"] = json!([4, 0]);
    v["9"]["inputs"]["tags"] = json!({"__value__": ["a", "b"]});
    let g = Workflow::from_value(v).unwrap().graph;
    assert_eq!(g.input("3", "model"), Some(&link("4", 0)));
    // Inputs a node does not declare are kept (ComfyUI ignores them too).
    assert_eq!(g.node("9").unwrap().value("tags"), Some(&json!(["a", "b"])));
    assert_eq!(
        g.to_api_json()["9"]["inputs"]["tags"],
        json!({"__value__": ["a", "b"]})
    );
}

#[test]
fn api_switch_and_math_are_folded() {
    let mut v = sdxl_api();
    let m = v.as_object_mut().unwrap();
    m.insert(
        "20".into(),
        json!({"class_type": "PrimitiveBoolean", "inputs": {"value": true}}),
    );
    m.insert(
        "21".into(),
        json!({"class_type": "PrimitiveInt", "inputs": {"value": 20}}),
    );
    m.insert(
        "22".into(),
        json!({"class_type": "PrimitiveInt", "inputs": {"value": 4}}),
    );
    m.insert(
        "23".into(),
        json!({"class_type": "ComfySwitchNode",
        "inputs": {"switch": ["20", 0], "on_false": ["21", 0], "on_true": ["22", 0]}}),
    );
    m.insert(
        "24".into(),
        json!({"class_type": "ComfyMathExpression",
        "inputs": {"expression": "a * 2 + b", "values.a": ["23", 0], "values.b": 0.5}}),
    );
    m.insert(
        "25".into(),
        json!({"class_type": "ComfySwitchNode",
        "inputs": {"switch": false, "on_false": ["4", 0], "on_true": ["30", 0]}}),
    );
    m.insert(
        "30".into(),
        json!({"class_type": "LoraLoaderModelOnly",
        "inputs": {"model": ["4", 0], "lora_name": "turbo.safetensors", "strength_model": 1.0}}),
    );
    v["3"]["inputs"]["steps"] = json!(["23", 0]);
    v["3"]["inputs"]["cfg"] = json!(["24", 0]);
    v["5"]["inputs"]["batch_size"] = json!(["24", 1]);
    v["3"]["inputs"]["model"] = json!(["25", 0]);
    let g = Workflow::from_value(v).unwrap().graph;
    assert_eq!(g.value_i64("3", "steps"), Some(4));
    f64_eq(g.value_f64("3", "cfg"), 8.5);
    assert_eq!(g.value_i64("5", "batch_size"), Some(8)); // int(8.5)
    assert_eq!(g.input("3", "model"), Some(&link("4", 0)));
    assert!(g.node("30").is_none(), "the unused LoRA branch is dropped");
    for id in ["20", "21", "22", "23", "24", "25"] {
        assert!(g.node(id).is_none(), "{id} should be folded");
    }
}

#[test]
fn api_bad_expression_is_reported() {
    let mut v = sdxl_api();
    v.as_object_mut().unwrap().insert(
        "24".into(),
        json!({"class_type": "ComfyMathExpression", "inputs": {"expression": "a / 0", "values.a": 1}}),
    );
    v["3"]["inputs"]["steps"] = json!(["24", 1]);
    let e = Workflow::from_value(v).unwrap_err().to_string();
    assert_eq!(
        e,
        "node 24 (ComfyMathExpression) input `expression`: `a / 0`: division by zero"
    );
}

// ---------------------------------------------------------------------------------------------
// Refusals.

#[test]
fn unknown_node_is_refused_with_one_line() {
    let mut u = sdxl_ui();
    u.add(
        12,
        "UpscaleModelLoader",
        &["UPSCALE_MODEL"],
        json!(["4x.pth"]),
    );
    let e = err_ui(u.json());
    assert!(matches!(e, WorkflowError::UnsupportedNode { .. }));
    let msg = e.to_string();
    assert!(
        msg.starts_with(
            "node 12 (UpscaleModelLoader) is not supported by nijigen; supported node types: \
             CheckpointLoaderSimple, UNETLoader, UnetLoaderGGUF,"
        ),
        "{msg}"
    );
    assert!(msg.contains("VHS_VideoCombine"));
    assert!(
        msg.ends_with("Delete or mute it (Ctrl+M) in ComfyUI, or replace it with a supported node")
    );
    assert!(!msg.contains('\n'));

    // Muting or bypassing it makes the workflow acceptable.
    u.mode(12, 2);
    load_ui(u.json());
    u.mode(12, 4);
    load_ui(u.json());

    // In API format too.
    let mut v = sdxl_api();
    v.as_object_mut().unwrap().insert(
        "11".into(),
        json!({"class_type": "FaceDetailer", "inputs": {"image": ["8", 0]}}),
    );
    let e = Workflow::from_value(v).unwrap_err().to_string();
    assert!(
        e.starts_with("node 11 (FaceDetailer) is not supported"),
        "{e}"
    );
}

#[test]
fn clip_loader_type_must_be_supported() {
    let mut v = sdxl_api();
    v.as_object_mut().unwrap().insert(
        "40".into(),
        json!({"class_type": "CLIPLoader", "inputs": {"clip_name": "t5.safetensors", "type": "flux"}}),
    );
    v["6"]["inputs"]["clip"] = json!(["40", 0]);
    let e = Workflow::from_value(v).unwrap_err().to_string();
    assert_eq!(
        e,
        "node 40 (CLIPLoader) input `type`: \"flux\" is not supported by nijigen \
         (supported: stable_diffusion, sd, sdxl, wan)"
    );
}

#[test]
fn cycle_is_refused() {
    let v = json!({
        "1": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["3", 2]}},
        "2": {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["3", 2]}},
        "3": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "c"}}
    });
    let e = Workflow::from_value(v).unwrap_err();
    assert_eq!(e.to_string(), "the workflow has a cycle through nodes 1, 2");
}

#[test]
fn link_to_a_missing_node_is_refused() {
    let mut v = sdxl_api();
    v["3"]["inputs"]["model"] = json!(["99", 0]);
    let e = Workflow::from_value(v).unwrap_err().to_string();
    assert_eq!(
        e,
        "node 3 (KSampler) input `model` is linked to node 99, which does not exist"
    );

    // UI format: a link whose origin node was deleted.
    let mut u = sdxl_ui();
    u.link(77, 0, 3, "model", "MODEL");
    let e = err_ui(u.json()).to_string();
    assert_eq!(
        e,
        "node 3 (KSampler) input `model` is linked to node 77, which does not exist"
    );

    // UI format: an input naming a link id that is not in the link table.
    let mut v = sdxl_ui().json();
    v["links"].as_array_mut().unwrap().retain(|l| l[3] != 9);
    let e = err_ui(v).to_string();
    assert!(
        e.starts_with("node 9 (SaveImage) input `images`: link"),
        "{e}"
    );
}

#[test]
fn missing_required_input_and_wrong_types() {
    let mut v = sdxl_api();
    v["3"]["inputs"].as_object_mut().unwrap().remove("steps");
    let e = Workflow::from_value(v).unwrap_err().to_string();
    assert_eq!(e, "node 3 (KSampler) is missing its required input `steps`");

    let mut v = sdxl_api();
    v["3"]["inputs"]["model"] = json!(["4", 1]);
    let e = Workflow::from_value(v).unwrap_err().to_string();
    assert_eq!(
        e,
        "node 3 (KSampler) input `model`: expects MODEL, but output 1 of node 4 \
         (CheckpointLoaderSimple) is CLIP"
    );

    let mut v = sdxl_api();
    v["3"]["inputs"]["steps"] = json!("many");
    let e = Workflow::from_value(v).unwrap_err().to_string();
    assert_eq!(
        e,
        "node 3 (KSampler) input `steps`: expected INT, got \"many\""
    );

    let mut v = sdxl_api();
    v["3"]["inputs"]["model"] = json!("sdxl.safetensors");
    let e = Workflow::from_value(v).unwrap_err().to_string();
    assert!(e.contains("needs a link from a MODEL output"), "{e}");
}

#[test]
fn no_output_node() {
    let mut v = sdxl_api();
    let m = v.as_object_mut().unwrap();
    m.remove("9");
    m.remove("10");
    let e = Workflow::from_value(v).unwrap_err();
    assert!(matches!(e, WorkflowError::NoOutput { .. }), "{e}");
}

// ---------------------------------------------------------------------------------------------
// UI-format rules on small hand-built workflows.

#[test]
fn ui_basics_and_unused_nodes() {
    let mut u = sdxl_ui();
    // An unconnected loader and a note do not end up in the graph.
    u.add(30, "VAELoader", &["VAE"], json!(["spare.safetensors"]))
        .add(31, "Note", &[], json!(["hello"]));
    let w = load_ui(u.json());
    let g = &w.graph;
    assert_eq!(ids(g), ["3", "4", "5", "6", "7", "8", "9"]);
    let ks = g.node("3").unwrap();
    assert_eq!(ks.value_i64("seed"), Some(42));
    assert_eq!(ks.value_i64("steps"), Some(20));
    f64_eq(ks.value_f64("cfg"), 7.5);
    assert_eq!(ks.value_str("sampler_name"), Some("euler"));
    assert_eq!(ks.input("latent_image"), Some(&link("5", 0)));
}

#[test]
fn ui_bypass_passes_the_matching_input_through() {
    let mut u = sdxl_ui();
    u.add(
        10,
        "LoraLoader",
        &["MODEL", "CLIP"],
        json!(["style.safetensors", 0.8, 0.6]),
    );
    u.link(4, 0, 10, "model", "MODEL")
        .link(4, 1, 10, "clip", "CLIP")
        .link(10, 0, 3, "model", "MODEL")
        .link(10, 1, 6, "clip", "CLIP")
        .link(10, 1, 7, "clip", "CLIP");
    let g = load_ui(u.json()).graph;
    assert_eq!(g.input("3", "model"), Some(&link("10", 0)));
    assert_eq!(g.input("6", "clip"), Some(&link("10", 1)));
    f64_eq(g.value_f64("10", "strength_model"), 0.8);
    f64_eq(g.value_f64("10", "strength_clip"), 0.6);

    u.mode(10, 4);
    let g = load_ui(u.json()).graph;
    assert!(g.node("10").is_none());
    assert_eq!(g.input("3", "model"), Some(&link("4", 0)));
    assert_eq!(g.input("6", "clip"), Some(&link("4", 1)));
    assert_eq!(g.input("7", "clip"), Some(&link("4", 1)));

    // When the same-slot input has another type, the first input of the consumer's type wins.
    let mut u = sdxl_ui();
    u.add(
        11,
        "LoraLoader",
        &["MODEL", "CLIP"],
        json!(["x.safetensors", 1.0, 1.0]),
    );
    u.input(11, "clip", "CLIP");
    u.link(4, 0, 11, "model", "MODEL")
        .link(4, 1, 11, "clip", "CLIP")
        .link(11, 0, 3, "model", "MODEL")
        .mode(11, 4);
    let g = load_ui(u.json()).graph;
    assert_eq!(g.input("3", "model"), Some(&link("4", 0)));

    // Chains of bypassed nodes resolve through each of them.
    let mut u = sdxl_ui();
    u.add(
        12,
        "ImageScale",
        &["IMAGE"],
        json!(["lanczos", 512, 512, "disabled"]),
    )
    .add(
        13,
        "ImageScale",
        &["IMAGE"],
        json!(["lanczos", 256, 256, "disabled"]),
    );
    u.link(8, 0, 12, "image", "IMAGE")
        .link(12, 0, 13, "image", "IMAGE")
        .link(13, 0, 9, "images", "IMAGE")
        .mode(12, 4)
        .mode(13, 4);
    let g = load_ui(u.json()).graph;
    assert_eq!(g.input("9", "images"), Some(&link("8", 0)));
}

#[test]
fn ui_mute_drops_what_depends_on_it() {
    // 8 -> ImageScale 12 (muted) -> SaveImage 9, and 8 -> PreviewImage 11.
    let mut u = sdxl_ui();
    u.add(
        12,
        "ImageScale",
        &["IMAGE"],
        json!(["lanczos", 512, 512, "disabled"]),
    )
    .add(11, "PreviewImage", &[], json!([]));
    u.link(8, 0, 12, "image", "IMAGE")
        .link(12, 0, 9, "images", "IMAGE")
        .link(8, 0, 11, "images", "IMAGE")
        .mode(12, 2);
    let w = load_ui(u.json());
    let g = &w.graph;
    assert!(g.node("9").is_none() && g.node("12").is_none());
    assert_eq!(g.outputs()[0].id.as_str(), "11");
    assert_eq!(
        w.notes,
        ["node 9 (SaveImage) is skipped: its input `images` comes from muted node 12"]
    );

    // A muted output node is simply not run.
    let mut u = sdxl_ui();
    u.add(11, "PreviewImage", &[], json!([]));
    u.link(8, 0, 11, "images", "IMAGE").mode(9, 2);
    let g = load_ui(u.json()).graph;
    assert_eq!(ids(&g), ["3", "4", "5", "6", "7", "8", "11"]);

    // Muting the checkpoint leaves nothing to run.
    let mut u = sdxl_ui();
    u.mode(4, 2);
    let e = err_ui(u.json());
    assert_eq!(
        e.to_string(),
        "the workflow has no output node (SaveImage, SaveVideo, SaveAnimatedWEBP, \
         VHS_VideoCombine or PreviewImage); the output nodes depend on muted nodes"
    );

    // An optional input from a muted node is just left out.
    let mut u = sdxl_ui();
    u.add(
        40,
        "UNETLoader",
        &["MODEL"],
        json!(["wan.safetensors", "default"]),
    )
    .add(
        41,
        "CLIPLoader",
        &["CLIP"],
        json!(["umt5.safetensors", "wan"]),
    )
    .add(42, "VAELoader", &["VAE"], json!(["wan_vae.safetensors"]))
    .add(43, "CLIPTextEncode", &["CONDITIONING"], json!(["p"]))
    .add(44, "CLIPTextEncode", &["CONDITIONING"], json!(["n"]))
    .add(
        45,
        "LoadImage",
        &["IMAGE", "MASK"],
        json!(["in.png", "image"]),
    )
    .add(
        46,
        "WanImageToVideo",
        &["CONDITIONING", "CONDITIONING", "LATENT"],
        json!([480, 832, 33, 1]),
    )
    .add(
        47,
        "KSampler",
        &["LATENT"],
        json!([1, "fixed", 4, 1.0, "euler", "simple", 1.0]),
    )
    .add(48, "VAEDecode", &["IMAGE"], json!([]))
    .add(
        49,
        "SaveAnimatedWEBP",
        &[],
        json!(["wan", 16, false, 90, "default"]),
    );
    u.link(41, 0, 43, "clip", "CLIP")
        .link(41, 0, 44, "clip", "CLIP")
        .link(43, 0, 46, "positive", "CONDITIONING")
        .link(44, 0, 46, "negative", "CONDITIONING")
        .link(42, 0, 46, "vae", "VAE")
        .link(45, 0, 46, "start_image", "IMAGE")
        .link(40, 0, 47, "model", "MODEL")
        .link(46, 0, 47, "positive", "CONDITIONING")
        .link(46, 1, 47, "negative", "CONDITIONING")
        .link(46, 2, 47, "latent_image", "LATENT")
        .link(47, 0, 48, "samples", "LATENT")
        .link(42, 0, 48, "vae", "VAE")
        .link(48, 0, 49, "images", "IMAGE")
        .mode(45, 2);
    let w = load_ui(u.json());
    let wan = w.graph.node("46").unwrap();
    assert!(wan.input("start_image").is_none());
    assert_eq!(wan.value_i64("width"), Some(480));
    assert_eq!(w.graph.value_str("41", "device"), Some("default")); // default filled in
    assert_eq!(
        w.notes,
        ["node 46 (WanImageToVideo) runs without its optional input `start_image`, which comes from muted node 45"]
    );
}

#[test]
fn ui_reroutes_are_resolved() {
    let mut u = sdxl_ui();
    u.add(20, "Reroute", &["*"], Value::Null)
        .add(21, "Reroute", &["*"], Value::Null);
    u.link(4, 0, 20, "", "*")
        .link(20, 0, 21, "", "*")
        .link(21, 0, 3, "model", "MODEL");
    let g = load_ui(u.json()).graph;
    assert_eq!(g.input("3", "model"), Some(&link("4", 0)));
    assert!(g.node("20").is_none() && g.node("21").is_none());

    // A dangling reroute gives nothing: the required input is missing.
    let mut u = sdxl_ui();
    u.add(20, "Reroute", &["*"], Value::Null);
    u.input(20, "", "*");
    u.link(20, 0, 3, "model", "MODEL");
    let e = err_ui(u.json()).to_string();
    assert_eq!(e, "node 3 (KSampler) is missing its required input `model`");
}

#[test]
fn ui_set_get_nodes_are_named_wires() {
    let mut u = sdxl_ui();
    u.add(60, "SetNode", &["*"], json!(["base_model"])).add(
        61,
        "GetNode",
        &["MODEL"],
        json!(["base_model"]),
    );
    u.link(4, 0, 60, "MODEL", "MODEL")
        .link(61, 0, 3, "model", "MODEL");
    let g = load_ui(u.json()).graph;
    assert_eq!(g.input("3", "model"), Some(&link("4", 0)));

    u.node_mut(61)["widgets_values"] = json!(["nope"]);
    let e = err_ui(u.json()).to_string();
    assert_eq!(
        e,
        "node 3 (KSampler) input `model`: GetNode 61 reads \"nope\", but no SetNode has that name"
    );
}

#[test]
fn ui_subgraph_without_definition() {
    let mut u = sdxl_ui();
    u.add(
        70,
        "84e2cf3f-de93-40ef-ab22-b9375296917b",
        &["VIDEO"],
        json!([]),
    );
    let e = err_ui(u.json()).to_string();
    assert_eq!(
        e,
        "subgraph error at node 70: its type 84e2cf3f-de93-40ef-ab22-b9375296917b is a subgraph \
         whose definition is missing from `definitions.subgraphs`"
    );
}

#[test]
fn ui_primitives_are_folded() {
    let mut u = sdxl_ui();
    // A backend PrimitiveInt (with its frontend-only control value) and a frontend PrimitiveNode.
    u.add(30, "PrimitiveInt", &["INT"], json!([33, "fixed"]))
        .add(31, "PrimitiveNode", &["INT"], json!([12345, "randomize"]))
        .add(
            32,
            "PrimitiveStringMultiline",
            &["STRING"],
            json!(["a dog\non a hill"]),
        )
        .add(33, "PrimitiveFloat", &["FLOAT"], json!([4.5]));
    u.link(30, 0, 3, "steps", "INT")
        .link(31, 0, 3, "seed", "INT")
        .link(32, 0, 6, "text", "STRING")
        .link(33, 0, 3, "cfg", "FLOAT");
    let g = load_ui(u.json()).graph;
    assert_eq!(g.value_i64("3", "steps"), Some(33));
    assert_eq!(g.value_i64("3", "seed"), Some(12345));
    f64_eq(g.value_f64("3", "cfg"), 4.5);
    assert_eq!(g.value_str("6", "text"), Some("a dog\non a hill"));
    for id in ["30", "31", "32", "33"] {
        assert!(g.node(id).is_none());
    }
}

#[test]
fn ui_link_beats_stale_widget_value() {
    // CLIPTextEncode.text is linked to a GGUF loader's `filename` STRING output: the stale
    // "a cat" widget value is ignored and the input stays a link.
    let mut u = sdxl_ui();
    u.add(
        50,
        "UnetLoaderGGUF",
        &["MODEL", "STRING", "STRING"],
        json!(["wan-q4.gguf"]),
    );
    u.link(50, 1, 6, "text", "STRING");
    let g = load_ui(u.json()).graph;
    assert_eq!(g.input("6", "text"), Some(&link("50", 1)));
    assert_eq!(g.value_str("50", "unet_name"), Some("wan-q4.gguf"));
}

fn sg_link(id: i64, o: i64, os: usize, t: i64, ts: usize, ty: &str) -> Value {
    json!({"id": id, "origin_id": o, "origin_slot": os, "target_id": t, "target_slot": ts, "type": ty})
}

fn sg_slot(name: &str, ty: &str, links: &[i64]) -> Value {
    json!({"id": format!("uuid-{name}"), "name": name, "type": ty, "linkIds": links})
}

/// Two levels of subgraphs, two instances of the outer one.
fn nested_subgraph_workflow() -> Value {
    // Inner: a KSampler with model/positive/negative/latent/steps coming from outside.
    let inner = json!({
        "id": "inner-sg", "name": "Sampler", "inputNode": {"id": -10}, "outputNode": {"id": -20},
        "inputs": [
            sg_slot("model", "MODEL", &[1]), sg_slot("positive", "CONDITIONING", &[2]),
            sg_slot("negative", "CONDITIONING", &[3]), sg_slot("latent_image", "LATENT", &[4]),
            sg_slot("steps", "INT", &[5])
        ],
        "outputs": [sg_slot("LATENT", "LATENT", &[6])],
        "nodes": [{
            "id": 20, "type": "KSampler", "mode": 0,
            "inputs": [
                {"name": "model", "type": "MODEL", "link": 1},
                {"name": "positive", "type": "CONDITIONING", "link": 2},
                {"name": "negative", "type": "CONDITIONING", "link": 3},
                {"name": "latent_image", "type": "LATENT", "link": 4},
                {"name": "steps", "type": "INT", "widget": {"name": "steps"}, "link": 5}
            ],
            "outputs": [{"name": "LATENT", "type": "LATENT", "links": [6]}],
            "widgets_values": [7, "randomize", 20, 5.0, "euler", "normal", 1.0]
        }],
        "links": [
            sg_link(1, -10, 0, 20, 0, "MODEL"), sg_link(2, -10, 1, 20, 1, "CONDITIONING"),
            sg_link(3, -10, 2, 20, 2, "CONDITIONING"), sg_link(4, -10, 3, 20, 3, "LATENT"),
            sg_link(5, -10, 4, 20, 4, "INT"), sg_link(6, 20, 0, -20, 0, "LATENT")
        ]
    });
    // Outer: prompts + latent + the inner sampler + decode; steps and text promoted.
    let outer = json!({
        "id": "outer-sg", "name": "Text to image", "inputNode": {"id": -10}, "outputNode": {"id": -20},
        "inputs": [
            sg_slot("model", "MODEL", &[11]), sg_slot("clip", "CLIP", &[12, 13]),
            sg_slot("vae", "VAE", &[14]), sg_slot("steps", "INT", &[15]),
            sg_slot("text", "STRING", &[16])
        ],
        "outputs": [sg_slot("IMAGE", "IMAGE", &[22])],
        "nodes": [
            {"id": 10, "type": "CLIPTextEncode", "mode": 0, "title": "Positive",
             "inputs": [{"name": "clip", "type": "CLIP", "link": 12},
                        {"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": 16}],
             "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [17]}],
             "widgets_values": ["inner default"]},
            {"id": 11, "type": "CLIPTextEncode", "mode": 0,
             "inputs": [{"name": "clip", "type": "CLIP", "link": 13}],
             "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [18]}],
             "widgets_values": ["bad"]},
            {"id": 12, "type": "EmptyLatentImage", "mode": 0, "inputs": [],
             "outputs": [{"name": "LATENT", "type": "LATENT", "links": [19]}],
             "widgets_values": [512, 768, 1]},
            {"id": 13, "type": "inner-sg", "mode": 0,
             "inputs": [
                {"name": "model", "type": "MODEL", "link": 11},
                {"name": "positive", "type": "CONDITIONING", "link": 17},
                {"name": "negative", "type": "CONDITIONING", "link": 18},
                {"name": "latent_image", "type": "LATENT", "link": 19},
                {"name": "steps", "type": "INT", "widget": {"name": "steps"}, "link": 15}
             ],
             "outputs": [{"name": "LATENT", "type": "LATENT", "links": [20]}],
             "widgets_values": [99]},
            {"id": 14, "type": "VAEDecode", "mode": 0,
             "inputs": [{"name": "samples", "type": "LATENT", "link": 20},
                        {"name": "vae", "type": "VAE", "link": 14}],
             "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [22]}],
             "widgets_values": []}
        ],
        "links": [
            sg_link(11, -10, 0, 13, 0, "MODEL"), sg_link(12, -10, 1, 10, 0, "CLIP"),
            sg_link(13, -10, 1, 11, 0, "CLIP"), sg_link(14, -10, 2, 14, 1, "VAE"),
            sg_link(15, -10, 3, 13, 4, "INT"), sg_link(16, -10, 4, 10, 1, "STRING"),
            sg_link(17, 10, 0, 13, 1, "CONDITIONING"), sg_link(18, 11, 0, 13, 2, "CONDITIONING"),
            sg_link(19, 12, 0, 13, 3, "LATENT"), sg_link(20, 13, 0, 14, 0, "LATENT"),
            sg_link(22, 14, 0, -20, 0, "IMAGE")
        ]
    });
    let instance = |id: i64, links: [i64; 3], widgets: Value| {
        json!({
            "id": id, "type": "outer-sg", "mode": 0,
            "inputs": [
                {"name": "model", "type": "MODEL", "link": links[0]},
                {"name": "clip", "type": "CLIP", "link": links[1]},
                {"name": "vae", "type": "VAE", "link": links[2]},
                {"label": "steps", "name": "steps", "type": "INT", "widget": {"name": "steps"}, "link": null}
            ],
            "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": []}],
            "widgets_values": widgets
        })
    };
    json!({
        "nodes": [
            {"id": 1, "type": "CheckpointLoaderSimple", "mode": 0, "inputs": [],
             "outputs": [{"name": "MODEL", "type": "MODEL"}, {"name": "CLIP", "type": "CLIP"},
                         {"name": "VAE", "type": "VAE"}],
             "widgets_values": ["sd_xl_base_1.0.safetensors"]},
            instance(2, [201, 202, 203], json!([12, "a fox"])),
            instance(5, [204, 205, 206], json!([30, "a dog"])),
            {"id": 3, "type": "SaveImage", "mode": 0,
             "inputs": [{"name": "images", "type": "IMAGE", "link": 207}], "outputs": [],
             "widgets_values": ["fox"]},
            {"id": 6, "type": "SaveImage", "mode": 0,
             "inputs": [{"name": "images", "type": "IMAGE", "link": 208}], "outputs": [],
             "widgets_values": ["dog"]}
        ],
        "links": [
            {"id": 201, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "MODEL"},
            {"id": 202, "origin_id": 1, "origin_slot": 1, "target_id": 2, "target_slot": 1, "type": "CLIP"},
            {"id": 203, "origin_id": 1, "origin_slot": 2, "target_id": 2, "target_slot": 2, "type": "VAE"},
            [204, 1, 0, 5, 0, "MODEL"], [205, 1, 1, 5, 1, "CLIP"], [206, 1, 2, 5, 2, "VAE"],
            [207, 2, 0, 3, 0, "IMAGE"], [208, 5, 0, 6, 0, "IMAGE"]
        ],
        "definitions": {"subgraphs": [outer, inner]},
        "version": 0.4
    })
}

#[test]
fn ui_nested_subgraphs_expand_with_path_ids() {
    let g = load_ui(nested_subgraph_workflow()).graph;
    assert_eq!(
        ids(&g),
        [
            "1", "2:10", "2:11", "2:12", "2:13:20", "2:14", "3", "5:10", "5:11", "5:12", "5:13:20",
            "5:14", "6"
        ]
    );
    // Each instance's promoted values reach the inner nodes, through both levels.
    let fox = g.node("2:13:20").unwrap();
    assert_eq!(fox.class_type, "KSampler");
    assert_eq!(fox.value_i64("steps"), Some(12));
    assert_eq!(fox.value_i64("seed"), Some(7));
    assert_eq!(fox.input("model"), Some(&link("1", 0)));
    assert_eq!(fox.input("positive"), Some(&link("2:10", 0)));
    assert_eq!(fox.input("negative"), Some(&link("2:11", 0)));
    assert_eq!(fox.input("latent_image"), Some(&link("2:12", 0)));
    assert_eq!(g.value_str("2:10", "text"), Some("a fox"));
    assert_eq!(g.node("2:10").unwrap().title.as_deref(), Some("Positive"));
    assert_eq!(g.value_str("2:11", "text"), Some("bad"));
    assert_eq!(g.input("2:14", "samples"), Some(&link("2:13:20", 0)));
    assert_eq!(g.input("2:14", "vae"), Some(&link("1", 2)));
    assert_eq!(g.input("3", "images"), Some(&link("2:14", 0)));

    assert_eq!(g.value_i64("5:13:20", "steps"), Some(30));
    assert_eq!(g.value_str("5:10", "text"), Some("a dog"));
    assert_eq!(g.input("6", "images"), Some(&link("5:14", 0)));
    assert_eq!(g.value_str("6", "filename_prefix"), Some("dog"));

    // Instances serialize only some of their inputs, in their own order, and a link's
    // target_slot counts in that list: inputs are matched by name.
    let mut v = nested_subgraph_workflow();
    let inputs = v["nodes"][2]["inputs"].as_array_mut().unwrap();
    inputs.retain(|i| i["name"] != "steps");
    inputs.reverse(); // vae, clip, model
    for l in v["links"].as_array_mut().unwrap() {
        if l[3] == 5 {
            l[4] = json!(2 - l[4].as_i64().unwrap());
        }
    }
    let g2 = load_ui(v).graph;
    assert_eq!(g2, g);

    // Without instance values the inner widgets' own values apply.
    let mut v = nested_subgraph_workflow();
    v["nodes"][1]["widgets_values"] = json!([]);
    let g = load_ui(v).graph;
    assert_eq!(g.value_str("2:10", "text"), Some("inner default"));
    // The inner instance's own promoted value (99) is shadowed by its link to the outer input,
    // which resolves to nothing, so the KSampler keeps its widget value.
    assert_eq!(g.value_i64("2:13:20", "steps"), Some(20));

    // A bypassed instance passes its inputs through by type: nothing matches IMAGE here, so
    // SaveImage 3 has no images and the workflow is refused.
    let mut v = nested_subgraph_workflow();
    v["nodes"][1]["mode"] = json!(4);
    let e = err_ui(v).to_string();
    assert_eq!(
        e,
        "node 3 (SaveImage) is missing its required input `images`"
    );
}

#[test]
fn ui_subgraph_proxy_widgets_keep_inner_values() {
    // Current frontends list promoted widgets in properties.proxyWidgets and store no values on
    // the instance: the inner nodes' values are used.
    let mut v = nested_subgraph_workflow();
    for i in [1, 2] {
        v["nodes"][i]["widgets_values"] = json!([]);
        v["nodes"][i]["properties"] = json!({"proxyWidgets": [["-1", "steps"], ["10", "text"]]});
    }
    let g = load_ui(v).graph;
    assert_eq!(g.value_str("2:10", "text"), Some("inner default"));
    assert_eq!(g.value_i64("5:13:20", "steps"), Some(20));
}

#[test]
fn ui_subgraph_that_contains_itself_is_refused() {
    let mut v = nested_subgraph_workflow();
    // Make the inner subgraph's KSampler an instance of the outer one.
    v["definitions"]["subgraphs"][1]["nodes"][0]["type"] = json!("outer-sg");
    let e = err_ui(v).to_string();
    assert!(
        e.starts_with("subgraph error at node 2:13:20:13:20:"),
        "{e}"
    );
    assert!(e.contains("nest more than 16 deep"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Containers built by hand, the way ComfyUI (Pillow, PyAV/FFmpeg) writes them.

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, ty: &[u8], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = ty.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

fn png_with(prompt: &Value, workflow: &Value) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&1u32.to_be_bytes());
    ihdr.extend_from_slice(&1u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    // Pillow: tEXt for Latin-1 text (here raw UTF-8, as some non-Pillow writers do)...
    let mut t = b"prompt\0".to_vec();
    t.extend_from_slice(prompt.to_string().as_bytes());
    png_chunk(&mut out, b"tEXt", &t);
    // ...iTXt (uncompressed, UTF-8) when it is not Latin-1.
    let mut it = b"workflow\0\0\0\0\0".to_vec();
    it.extend_from_slice(workflow.to_string().as_bytes());
    png_chunk(&mut out, b"iTXt", &it);
    png_chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x63, 0x60, 0, 0, 0, 2, 0, 1],
    );
    png_chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn png_text_chunks() {
    let mut u = sdxl_ui();
    u.node_mut(6)["widgets_values"] = json!(["猫, ネコ, 1girl"]);
    let ui = u.json();
    let (graph, _) = graph_from_ui(&ui).unwrap();
    let prompt = graph.to_api_json();
    let png = png_with(&prompt, &ui);

    let w = Workflow::from_bytes(&png).unwrap();
    assert_eq!(w.container, Container::Png);
    assert_eq!(w.source, Format::Api);
    assert_eq!(w.graph.value_str("6", "text"), Some("猫, ネコ, 1girl"));
    assert_eq!(w.api.as_ref(), Some(&prompt));
    assert_eq!(w.ui.as_ref(), Some(&ui));
    let from_ui = w.ui_graph().unwrap().unwrap();
    for (id, n) in &w.graph.nodes {
        assert_eq!(n.inputs, from_ui.nodes[id].inputs, "{id}");
    }

    // Detected by content whatever the file is called.
    let path = std::env::temp_dir().join(format!("nijigen-wf-{}.json", std::process::id()));
    std::fs::write(&path, &png).unwrap();
    let w = workflow::load(&path).unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(w.container, Container::Png);

    // Only the UI workflow: it is used.
    let mut only_ui = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut t = b"workflow\0".to_vec();
    t.extend_from_slice(ui.to_string().replace("猫, ネコ, ", "").as_bytes());
    png_chunk(&mut only_ui, b"tEXt", &t);
    png_chunk(&mut only_ui, b"IEND", &[]);
    let w = Workflow::from_png_bytes(&only_ui).unwrap();
    assert_eq!(w.source, Format::Ui);
    assert_eq!(w.graph.value_str("6", "text"), Some("1girl"));

    // Neither.
    let mut bare = b"\x89PNG\r\n\x1a\n".to_vec();
    png_chunk(&mut bare, b"IHDR", &ihdr_1x1());
    png_chunk(&mut bare, b"IEND", &[]);
    let e = Workflow::from_bytes(&bare).unwrap_err().to_string();
    assert!(
        e.starts_with("this PNG has no ComfyUI workflow in it"),
        "{e}"
    );
}

fn ihdr_1x1() -> Vec<u8> {
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&1u32.to_be_bytes());
    ihdr.extend_from_slice(&1u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    ihdr
}

fn mp4_box(ty: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(ty);
    out.extend_from_slice(body);
    out
}

fn full_box(ty: &[u8], body: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 4];
    b.extend_from_slice(body);
    mp4_box(ty, &b)
}

/// moov/udta/meta as FFmpeg's mov muxer writes it with `movflags=use_metadata_tags`
/// (mov_write_meta_tag with FF_MOV_FLAG_USE_MDTA: hdlr "mdta", keys, ilst).
fn mdta_meta(entries: &[(&str, &str)]) -> Vec<u8> {
    // hdlr: version/flags, pre_defined, handler "mdta", 3 reserved words, empty name.
    let mut hdlr = 0u32.to_be_bytes().to_vec();
    hdlr.extend_from_slice(b"mdta");
    hdlr.extend_from_slice(&[0u8; 12]);
    hdlr.push(0);
    let hdlr = full_box(b"hdlr", &hdlr);
    assert_eq!(hdlr.len(), 33);
    let mut keys = (entries.len() as u32).to_be_bytes().to_vec();
    for (k, _) in entries {
        keys.extend_from_slice(&((k.len() + 8) as u32).to_be_bytes());
        keys.extend_from_slice(b"mdta");
        keys.extend_from_slice(k.as_bytes());
    }
    let keys = full_box(b"keys", &keys);
    let mut ilst = Vec::new();
    for (i, (_, v)) in entries.iter().enumerate() {
        let mut data = 1u32.to_be_bytes().to_vec(); // UTF-8
        data.extend_from_slice(&0u32.to_be_bytes()); // locale
        data.extend_from_slice(v.as_bytes());
        ilst.extend(mp4_box(
            &((i + 1) as u32).to_be_bytes(),
            &mp4_box(b"data", &data),
        ));
    }
    let ilst = mp4_box(b"ilst", &ilst);
    full_box(b"meta", &[hdlr, keys, ilst].concat())
}

fn mp4_file(udta_children: &[u8]) -> Vec<u8> {
    let mut ftyp = b"isom".to_vec();
    ftyp.extend_from_slice(&512u32.to_be_bytes());
    ftyp.extend_from_slice(b"isomiso2avc1mp41");
    let ftyp = mp4_box(b"ftyp", &ftyp);
    let mvhd = full_box(b"mvhd", &[0u8; 96]);
    let trak = mp4_box(b"trak", &mp4_box(b"tkhd", &[0u8; 84]));
    let udta = mp4_box(b"udta", udta_children);
    let moov = mp4_box(b"moov", &[mvhd, trak, udta].concat());
    let mdat = mp4_box(b"mdat", &[0u8; 16]);
    // faststart: moov before mdat.
    [ftyp, moov, mdat].concat()
}

#[test]
fn mp4_container_metadata() {
    let ui = fixture_json("image_to_video_wan.json");
    let (graph, _) = graph_from_ui(&ui).unwrap();
    let prompt = graph.to_api_json();
    // SaveVideo: extra_pnginfo keys first (workflow), then prompt; FFmpeg appends `encoder`.
    let meta = mdta_meta(&[
        ("workflow", &ui.to_string()),
        ("prompt", &prompt.to_string()),
        ("encoder", "Lavf61.7.100"),
    ]);
    let file = mp4_file(&meta);
    let w = Workflow::from_bytes(&file).unwrap();
    assert_eq!(w.container, Container::Mp4);
    assert_eq!(w.source, Format::Api);
    assert_eq!(w.api.as_ref(), Some(&prompt));
    assert_eq!(w.ui.as_ref(), Some(&ui));
    assert_eq!(w.graph.value_i64("50", "length"), Some(33));
    assert_eq!(
        w.graph.outputs()[0].value_str("filename_prefix"),
        Some("video/ComfyUI")
    );

    // A 64-bit box size and a `free` box before the metadata are fine too.
    let mut big = 1u32.to_be_bytes().to_vec();
    big.extend_from_slice(b"udta");
    let body = [mp4_box(b"free", &[0u8; 8]), meta.clone()].concat();
    big.extend_from_slice(&((body.len() + 16) as u64).to_be_bytes());
    big.extend_from_slice(&body);
    let moov = mp4_box(b"moov", &big);
    let file = [mp4_box(b"ftyp", b"isom\0\0\x02\0"), moov].concat();
    assert_eq!(Workflow::from_bytes(&file).unwrap().source, Format::Api);

    // No metadata.
    let e = Workflow::from_bytes(&mp4_file(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("this MP4 has no ComfyUI workflow in it"),
        "{e}"
    );
}

#[test]
fn mp4_vhs_comment() {
    // VHS_VideoCombine without use_metadata_tags: iTunes metadata, everything as JSON in
    // `comment` (©cmt), with the prompt itself a JSON string.
    let api = sdxl_api();
    let comment = json!({"prompt": api.to_string(), "workflow": sdxl_ui().json()}).to_string();
    let mut hdlr = 0u32.to_be_bytes().to_vec();
    hdlr.extend_from_slice(b"mdirappl");
    hdlr.extend_from_slice(&[0u8; 9]);
    let mut data = 1u32.to_be_bytes().to_vec();
    data.extend_from_slice(&0u32.to_be_bytes());
    data.extend_from_slice(comment.as_bytes());
    let cmt = mp4_box(b"\xa9cmt", &mp4_box(b"data", &data));
    let meta = full_box(
        b"meta",
        &[full_box(b"hdlr", &hdlr), mp4_box(b"ilst", &cmt)].concat(),
    );
    let w = Workflow::from_bytes(&mp4_file(&meta)).unwrap();
    assert_eq!(w.source, Format::Api);
    assert_eq!(w.graph.value_i64("3", "steps"), Some(30));
    assert!(w.ui.is_some());
}

#[test]
fn unrecognized_files() {
    let e = Workflow::from_bytes(b"GIF89a....").unwrap_err();
    assert!(matches!(e, WorkflowError::UnknownFormat(_)), "{e}");
    let e = Workflow::from_bytes(b"{\"hello\": 1}")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("malformed workflow: this JSON is neither"),
        "{e}"
    );
    let e = Workflow::from_json("{\"nodes\": [")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("invalid JSON in the workflow file:"), "{e}");
    // A UTF-8 BOM is fine.
    let text = format!("\u{feff}{}", sdxl_api());
    assert!(Workflow::from_bytes(text.as_bytes()).is_ok());
    let e = workflow::load("/nonexistent/wf.json")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("cannot read /nonexistent/wf.json:"), "{e}");
}
