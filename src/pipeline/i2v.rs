//! Both stages chained (`nijigen i2v`): an SDXL still, then Wan2.1 animating it.
//!
//! The stages run one after the other in one process: stage 1 loads its models, draws the
//! still and releases everything ([`super::image::generate`] drops its models when it returns)
//! before stage 2 opens the Wan files. What is checked here runs *before* either stage: every
//! file is opened (headers only, memory-mapped) and its architecture compared with the slot it
//! was given for, so a wrong or missing file fails in a second, not after the still is drawn.
//!
//! Seeds: stage 1 uses the seed as `nijigen image` does (torch.randn of the latent); stage 2
//! uses the same seed unless the caller gives it another, as `nijigen video --seed` does. So
//! `nijigen image --seed S` then `nijigen video -i still.png --seed S` gives the same video.

use std::path::Path;
use std::sync::Arc;

use super::image::{self, ImageJob, SdxlFiles, SdxlImage, SdxlOutput, SdxlRequest};
use super::plan::{MemoryOptions, OpenFiles};
use super::video::FrameSink;
use super::video::{self, VideoJob, WanFiles, WanOutput, WanRequest};
use super::{inspect, Event, InitImage, Memory, Options, PipelineError};
use crate::formats::names::Architecture;
use crate::formats::weights::Format;
use crate::ggml::TensorSet;
use crate::models::{Umt5Config, WanDitConfig, WanVaeConfig};
use crate::runtime::WeightStore;

/// The area SDXL-family models are trained at (1024 x 1024): default still sizes aim at it.
pub const SDXL_AREA: u32 = 1024 * 1024;

/// The still's default size for a `width` x `height` video: the video's aspect at about
/// SDXL's 1024 x 1024 area, sides multiples of 64 (SDXL's training buckets, e.g. 1344 x 768
/// for 832 x 480). Stage 2 fits the still to the video size (center crop, Lanczos).
pub fn still_size(width: u32, height: u32) -> (u32, u32) {
    if width == 0 || height == 0 {
        return (1024, 1024);
    }
    let aspect = f64::from(width) / f64::from(height);
    let h = (f64::from(SDXL_AREA) / aspect).sqrt();
    let round64 = |v: f64| ((v / 64.0).round() as u32).max(1) * 64;
    (round64(h * aspect), round64(h))
}

/// The flags of `nijigen i2v` that name each file, for messages.
pub mod flags {
    pub const IMAGE_MODEL: &str = "--image-model";
    pub const CLIP_L: &str = "--clip-l";
    pub const CLIP_G: &str = "--clip-g";
    pub const IMAGE_VAE: &str = "--image-vae";
    pub const VIDEO_MODEL: &str = "--video-model";
    pub const T5: &str = "--t5";
    pub const T5_TOKENIZER: &str = "--t5-tokenizer";
    pub const CLIP_VISION: &str = "--clip-vision";
    pub const VIDEO_VAE: &str = "--video-vae";
}

fn open(opened: &OpenFiles, path: &Path) -> Result<Arc<WeightStore>, PipelineError> {
    Ok(opened.open(path)?)
}

/// A model config read from `store`'s tensor table (a one-network file), `None` when it
/// cannot be read.
fn meta_config<T>(store: &WeightStore, read: impl Fn(&TensorSet<'_>) -> Option<T>) -> Option<T> {
    let set = store.load_meta(|_| true).ok()?;
    read(&set)
}

fn wrong(path: &Path, store: &WeightStore, wanted: &'static str) -> PipelineError {
    PipelineError::WrongModel {
        path: path.to_path_buf(),
        found: inspect::found(store),
        wanted,
    }
}

/// Whether `store` is `arch`, or carries it as a component (an SDXL checkpoint).
fn holds(store: &WeightStore, arch: Architecture) -> bool {
    let d = store.detection();
    d.architecture == arch || d.components.iter().any(|c| c.architecture == arch)
}

/// Checks the files of stage 1: the model is an SDXL checkpoint or UNet, and CLIP-L, bigG and
/// the VAE are each in their own file or in the checkpoint.
pub fn check_image_files(files: &SdxlFiles) -> Result<(), PipelineError> {
    check_image_files_in(&OpenFiles::default(), files)
}

/// [`check_image_files`] on files opened (or to be opened) in `opened`.
fn check_image_files_in(opened: &OpenFiles, files: &SdxlFiles) -> Result<(), PipelineError> {
    if files.model.is_dir() {
        // A diffusers folder: the pipeline checks its subfolders.
        return Ok(());
    }
    let model = open(opened, &files.model)?;
    if !matches!(
        model.detection().architecture,
        Architecture::SDXL_CHECKPOINT | Architecture::SDXL_UNET
    ) {
        return Err(wrong(
            &files.model,
            &model,
            "an SDXL-family checkpoint or UNet (--image-model)",
        ));
    }
    let parts: [(
        &Option<std::path::PathBuf>,
        Architecture,
        &'static str,
        &'static str,
    ); 3] = [
        (
            &files.clip_l,
            Architecture::CLIP_L,
            flags::CLIP_L,
            "a CLIP-L text encoder",
        ),
        (
            &files.clip_g,
            Architecture::CLIP_G,
            flags::CLIP_G,
            "an OpenCLIP bigG text encoder",
        ),
        (
            &files.vae,
            Architecture::SDXL_VAE,
            flags::IMAGE_VAE,
            "an SDXL VAE",
        ),
    ];
    for (given, arch, flag, wanted) in parts {
        match given {
            Some(p) => {
                let store = open(opened, p)?;
                if !holds(&store, arch) {
                    return Err(wrong(p, &store, wanted));
                }
            }
            None if holds(&model, arch) => {}
            None => {
                return Err(PipelineError::MissingComponent {
                    what: format!(
                        "{} has no {} ({wanted} is needed)",
                        files.model.display(),
                        arch.name()
                    ),
                    flag,
                })
            }
        }
    }
    Ok(())
}

/// Checks the files of stage 2 for image-to-video: an I2V DiT (a T2V one has no image
/// branch), umT5 with a tokenizer, CLIP vision H and the Wan VAE, with matching widths.
pub fn check_video_files(files: &WanFiles) -> Result<(), PipelineError> {
    check_video_files_in(&OpenFiles::default(), files)
}

/// [`check_video_files`] on files opened (or to be opened) in `opened`.
fn check_video_files_in(opened: &OpenFiles, files: &WanFiles) -> Result<(), PipelineError> {
    if files.model.is_dir() {
        return Ok(());
    }
    let dit = open(opened, &files.model)?;
    match dit.detection().architecture {
        Architecture::WAN_DIT_I2V => {}
        Architecture::WAN_DIT_T2V => {
            return Err(wrong(
                &files.model,
                &dit,
                "an image-to-video DiT (Wan2.1 I2V, e.g. wan2.1-i2v-14b-480p-Q4_K_M.gguf, or \
            Wan2.2 I2V-A14B's low-noise expert)",
            ))
        }
        _ => {
            return Err(wrong(
                &files.model,
                &dit,
                "a Wan image-to-video DiT (--video-model)",
            ))
        }
    }
    let need = |p: &Option<std::path::PathBuf>, what: &str, flag: &'static str| {
        p.clone().ok_or_else(|| PipelineError::MissingComponent {
            what: format!("image-to-video needs {what}"),
            flag,
        })
    };
    let t5_path = need(
        &files.t5,
        "the umT5 text encoder (e.g. umt5-xxl-encoder-Q8_0.gguf)",
        flags::T5,
    )?;
    let t5 = open(opened, &t5_path)?;
    if t5.detection().architecture != Architecture::UMT5 {
        return Err(wrong(&t5_path, &t5, "a umT5 text encoder (--t5)"));
    }
    if files.t5_tokenizer.is_none() {
        let has = (t5.file().format() == Format::Gguf
            && t5.file().meta("tokenizer.ggml.model").is_some())
            || t5.embedded_spiece().is_some();
        if !has {
            return Err(PipelineError::MissingComponent {
                what: format!(
                    "{}: no tokenizer in the file (tokenizer.json or spiece.model of \
            google/umt5-xxl)",
                    t5_path.display()
                ),
                flag: flags::T5_TOKENIZER,
            });
        }
    }
    super::video::check_pair(opened, files)?;
    // Wan2.2's experts take the image as latent channels only: no CLIP vision (a given one
    // is ignored with a warning when the run opens its files).
    let dit_cfg = meta_config(&dit, |s| WanDitConfig::from_weights(s, "").ok());
    if dit_cfg.as_ref().is_none_or(|c| c.has_image_branch()) {
        let clip_path = need(
            &files.clip_vision,
            "the CLIP vision encoder (clip_vision_h.safetensors)",
            flags::CLIP_VISION,
        )?;
        let clip = open(opened, &clip_path)?;
        if clip.detection().architecture != Architecture::CLIP_VISION_H {
            return Err(wrong(
                &clip_path,
                &clip,
                "a CLIP vision H encoder (--clip-vision)",
            ));
        }
    }
    let vae_path = need(
        &files.vae,
        "the Wan VAE (wan_2.1_vae.safetensors)",
        flags::VIDEO_VAE,
    )?;
    let vae = open(opened, &vae_path)?;
    if vae.detection().architecture != Architecture::WAN_VAE {
        return Err(wrong(&vae_path, &vae, "a Wan2.1 VAE (--video-vae)"));
    }
    // The model configs from the tensor tables; a file whose config cannot be read fails
    // later, when it loads, with the model's own error.
    let t5_cfg = meta_config(&t5, |s| Umt5Config::from_weights(s, "").ok());
    let vae_cfg = meta_config(&vae, |s| WanVaeConfig::from_weights(s, "").ok());
    if let Some(c) = dit_cfg {
        let text = c.text_dim;
        if let Some(d) = t5_cfg.map(|t| t.d_model).filter(|&d| d != text) {
            return Err(PipelineError::Mismatch(format!(
                "{}: umT5 gives {d}-wide tokens but {} takes {text}: wrong --t5 for this \
            model?",
                t5_path.display(),
                files.model.display()
            )));
        }
        let inc = c.in_channels;
        if let Some(z) = vae_cfg.map(|v| v.z_dim).filter(|&z| 2 * z + 4 != inc) {
            return Err(PipelineError::Mismatch(format!(
                "{}: the DiT takes {inc} input channels, the VAE has {z} latent channels \
            (an I2V DiT takes 2 x {z} + 4): wrong --video-vae for this model?",
                vae_path.display()
            )));
        }
    }
    Ok(())
}

/// The files of both stages.
#[derive(Clone, Debug, Default)]
pub struct I2vFiles {
    pub image: SdxlFiles,
    pub video: WanFiles,
}

/// Both requests: the still, then the video of it (its first frame is the still, whatever
/// `video.image` holds).
#[derive(Clone, Debug)]
pub struct I2vRequest {
    pub image: SdxlRequest,
    pub video: WanRequest,
}

/// Both stages checked (requests, every file against its slot) and planned, before anything
/// is computed.
#[derive(Clone, Debug)]
pub struct I2vJob {
    pub image: ImageJob,
    pub video: VideoJob,
}

impl I2vJob {
    /// One ledger for both stages (the peak is over the whole run), each component placed as
    /// its stage's plan says; `None` without a budget.
    pub fn memory(&self) -> Option<Memory> {
        let still = self.image.memory()?;
        let video = self.video.memory()?;
        let mut placements = still.placements;
        placements.extend(video.placements);
        let mut fp8 = still.fp8;
        fp8.extend(video.fp8);
        Some(Memory {
            accountant: still.accountant,
            placements,
            device: still.device,
            fp8,
        })
    }
}

/// Checks both requests and every file, and plans both stages under `memory`.
pub fn prepare(
    files: I2vFiles,
    request: I2vRequest,
    memory: &MemoryOptions,
) -> Result<I2vJob, PipelineError> {
    image::validate(&request.image)?;
    video::validate(&request.video)?;
    // The checks open every file once; planning and the runs use the same open files.
    let (still, moving) = (OpenFiles::default(), OpenFiles::default());
    check_image_files_in(&still, &files.image)?;
    check_video_files_in(&moving, &files.video)?;
    Ok(I2vJob {
        image: image::prepare_in(still, files.image, request.image, memory)?,
        video: video::prepare_in(moving, files.video, request.video, memory)?,
    })
}

/// What [`I2vJob::run`] made.
pub struct I2vOutput {
    pub still: SdxlImage,
    /// Stage 1's output (its image moved to `still`).
    pub image: SdxlOutput,
    pub video: WanOutput,
}

impl I2vJob {
    /// Runs stage 1, gives the still to `on_still` (e.g. to save it), then animates it in
    /// stage 2 with each frame given to `on_frame`. Stage 1's models are released before stage
    /// 2 opens its files; a stop asked for between the stages ends the run there.
    pub fn run(
        &self,
        opts: &super::RunOptions,
        events: &mut dyn FnMut(Event),
        on_still: &mut dyn FnMut(&SdxlImage) -> Result<(), PipelineError>,
        on_frame: &mut FrameSink<'_>,
    ) -> Result<I2vOutput, PipelineError> {
        events(Event::Part { label: "1/2 still" });
        let mut image = self.image.run(opts, events)?;
        if image.images.is_empty() {
            return Err(PipelineError::Request("stage 1 returned no image".into()));
        }
        let still = image.images.remove(0);
        // Stage 1's files are closed before stage 2 maps its own.
        self.image.opened.close();
        on_still(&still)?;
        opts.check_cancel()?;
        // Stage 2 starts from the still's pixels (the same bytes as a saved PNG).
        let mut req = self.video.request.clone();
        req.image = Some(InitImage {
            rgb: still.rgb.clone(),
            width: still.width,
            height: still.height,
        });
        events(Event::Part { label: "2/2 video" });
        let video = video::generate_in(
            &self.video.opened,
            &self.video.files,
            &req,
            opts,
            events,
            on_frame,
        )?;
        Ok(I2vOutput {
            still,
            image,
            video,
        })
    }
}

/// Checks, plans and runs both stages in one call (see [`prepare`] and [`I2vJob::run`]).
pub fn run(
    request: I2vRequest,
    files: I2vFiles,
    options: &Options,
    events: &mut dyn FnMut(Event),
    on_still: &mut dyn FnMut(&SdxlImage) -> Result<(), PipelineError>,
    on_frame: &mut FrameSink<'_>,
) -> Result<(I2vJob, I2vOutput, Option<Memory>), PipelineError> {
    let job = prepare(files, request, &options.memory)?;
    let memory = job.memory();
    let out = job.run(
        &options.run_options(memory.clone()),
        events,
        on_still,
        on_frame,
    )?;
    Ok((job, out, memory))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn still_sizes_follow_the_video_aspect_at_sdxl_area() {
        assert_eq!(still_size(832, 480), (1344, 768));
        assert_eq!(still_size(480, 832), (768, 1344));
        assert_eq!(still_size(640, 640), (1024, 1024));
        assert_eq!(still_size(0, 480), (1024, 1024));
        for (w, h) in [(832, 480), (1280, 720), (624, 624), (480, 832)] {
            let (sw, sh) = still_size(w, h);
            assert_eq!((sw % 64, sh % 64), (0, 0));
            let a = f64::from(w) / f64::from(h);
            let b = f64::from(sw) / f64::from(sh);
            assert!((a / b - 1.0).abs() < 0.05, "{w}x{h} -> {sw}x{sh}");
        }
    }
}
