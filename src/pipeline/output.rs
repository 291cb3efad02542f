//! The files a run writes, with the parameters that made them: PNG stills with their A1111
//! `parameters`, and videos (MP4 / WebP / GIF) with the parameters JSON in their metadata and a
//! sidecar, plus an optional folder of frames. Every caller (the commands, the demo) writes
//! through these, so the same request gives the same bytes whichever way it ran.

use std::path::{Path, PathBuf};

use super::image::{SdxlFiles, SdxlRequest};
use super::video::{self, WanFiles, WanRequest};
use crate::media::video::{
    write_sidecar_json, FrameDirWriter, VideoError, VideoMetadata, VideoOptions, VideoWriter,
};
use crate::media::{GenerationParams, LoraRef};

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The A1111 `parameters` of image `index` of a batch.
pub fn png_params(files: &SdxlFiles, req: &SdxlRequest, index: usize) -> GenerationParams {
    let mut params = GenerationParams::new(req.prompt.clone());
    params.negative = req.negative_prompt.clone();
    params.steps = req.steps as u32;
    params.sampler = req.sampler.name().into();
    params.scheduler = req.scheduler.name().into();
    params.cfg = req.cfg;
    params.seed = req.seed;
    params.width = req.width;
    params.height = req.height;
    params.model = stem(&files.model);
    params.loras = files
        .loras
        .iter()
        .map(|(p, w)| LoraRef {
            name: stem(p),
            weight: *w,
            hash: None,
        })
        .collect();
    if req.init_image.is_some() {
        params
            .extra
            .push(("Denoising strength".into(), format!("{}", req.strength)));
    }
    if req.batch > 1 {
        params
            .extra
            .push(("Batch size".into(), req.batch.to_string()));
        params.extra.push(("Batch pos".into(), index.to_string()));
    }
    if let Some(t) = req.vae_tile {
        params.extra.push(("VAE tile".into(), t.to_string()));
    }
    params
}

/// Where a video goes and how it is encoded.
#[derive(Clone, Debug)]
pub struct VideoTarget {
    /// .mp4, .webp or .gif.
    pub path: PathBuf,
    /// Also every frame as DIR/frame_0000.png, ...
    pub frames_dir: Option<PathBuf>,
    pub fps: u32,
    /// H.264 quantiser.
    pub qp: u8,
    pub overwrite: bool,
    /// The file of the first frame (named in the parameters).
    pub image_file: Option<PathBuf>,
}

/// The generation parameters as stored in the video metadata and the sidecar JSON.
fn parameters_json(target: &VideoTarget, files: &WanFiles, req: &WanRequest) -> String {
    let name = |p: &PathBuf| {
        p.file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let shift = req
        .shift
        .unwrap_or_else(|| video::default_shift(req.width, req.height));
    let v = serde_json::json!({
        "prompt": req.prompt,
            "negative_prompt": req.negative_prompt.clone().unwrap_or_else(|| video::DEFAULT_NEGATIVE_PROMPT.into()),
        "image": target.image_file.as_ref().map(name),
            "model": name(&files.model),
        "t5": files.t5.as_ref().map(name),
            "clip_vision": files.clip_vision.as_ref().map(name),
        "vae": files.vae.as_ref().map(name),
            "loras": files.loras.iter().map(|(p, w)| serde_json::json!({"file": name(p), "weight": w})).collect::<Vec<_>>(),
            "width": req.width,
        "height": req.height,
            "frames": req.frames,
        "fps": target.fps,
            "steps": req.steps,
        "cfg": req.cfg,
            "shift": shift,
        "sampler": req.sampler.name(),
            "scheduler": req.scheduler.name(),
        "seed": req.seed,
            "rng": "torch",
            "vae_tile": req.vae_tile,
        "cache": req.cache.map(|c| c.to_string()),
        "version": crate::media::params::nijigen_version(),
    });
    let mut v = v;
    if let (Some(high), serde_json::Value::Object(map)) = (&files.high_noise_model, &mut v) {
        // Wan2.2 A14B: both experts, their LoRAs and where the run switches.
        let experts = serde_json::json!({
            "high_noise_model": name(high),
            "high_noise_loras": files.high_noise_loras.iter().map(|(p, w)| serde_json::json!({"file": name(p), "weight": w})).collect::<Vec<_>>(),
            "high_noise_steps": video::switch_step(req, shift).ok(),
            "switch": if req.high_noise_steps.is_some() { "steps" } else { "boundary" },
            "boundary": req.boundary.unwrap_or(if req.image.is_some() { video::BOUNDARY_I2V } else { video::BOUNDARY_T2V }),
            "high_noise_cfg": req.high_noise_cfg.unwrap_or(req.cfg),
            "high_noise_sampler": req.high_noise_sampler.unwrap_or(req.sampler).name(),
        });
        if let serde_json::Value::Object(e) = experts {
            map.extend(e);
        }
    }
    v.to_string()
}

/// The open outputs of a video run: created before computing, so a bad path fails first;
/// frames are written as they are decoded.
pub struct VideoOutputs {
    writer: VideoWriter,
    frames_dir: Option<FrameDirWriter>,
    /// The parameters JSON (video metadata and sidecar).
    json: String,
}

impl VideoOutputs {
    pub fn open(
        target: &VideoTarget,
        files: &WanFiles,
        req: &WanRequest,
    ) -> Result<VideoOutputs, VideoError> {
        let json = parameters_json(target, files, req);
        let meta = VideoMetadata {
            title: req.prompt.chars().take(120).collect(),
            comment: format!("nijigen video, seed {}", req.seed),
            parameters_json: json.clone(),
        };
        let vopts = VideoOptions {
            fps: target.fps,
            qp: target.qp,
            overwrite: target.overwrite,
            ..VideoOptions::default()
        };
        let writer = VideoWriter::create(&target.path, req.width, req.height, &vopts, &meta)?;
        let frames_dir = match &target.frames_dir {
            Some(d) => Some(FrameDirWriter::create(
                d,
                req.width,
                req.height,
                target.overwrite,
            )?),
            None => None,
        };
        Ok(VideoOutputs {
            writer,
            frames_dir,
            json,
        })
    }

    /// Writes one RGB8 frame to the video (and the frames folder).
    pub fn push_frame(&mut self, rgb: &[u8]) -> Result<(), VideoError> {
        self.writer.push_frame(rgb)?;
        if let Some(d) = self.frames_dir.as_mut() {
            d.push_frame(rgb)?;
        }
        Ok(())
    }

    /// "wrote N frames to DIR" for the frames folder, if any.
    pub fn frames_note(&self) -> Option<String> {
        self.frames_dir
            .as_ref()
            .map(|d| format!("wrote {} frames to {}", d.frames(), d.dir().display()))
    }

    /// Completes the files: the video (renamed onto its final name), its sidecar JSON, and the
    /// frames folder if any, in that order.
    pub fn finish(self) -> Result<Vec<PathBuf>, VideoError> {
        let path = self.writer.finish()?;
        let sidecar = write_sidecar_json(&path, &self.json)?;
        let mut outputs = vec![path, sidecar];
        if let Some(d) = &self.frames_dir {
            outputs.push(d.dir().to_path_buf());
        }
        Ok(outputs)
    }
}
