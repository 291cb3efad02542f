//! `ddim`: ComfyUI's `sampler_object("ddim")` is `ksampler("euler", inpaint_options={"random":
//! True})` (comfy/samplers.py): the steps are `sample_euler`'s; the option only changes the
//! noise used to re-noise a masked latent (drawn from `seed + 1`), which nijigen does not do.

use super::stepper::StepCtx;

/// One step: exactly [`euler::step`](super::euler::step).
pub(super) fn step(x: &mut [f32], den: &[f32], ctx: &StepCtx<'_>) {
    super::euler::step(x, den, ctx);
}
