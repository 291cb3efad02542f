//! [`ksampler_sigmas`]: the sigma list ComfyUI's `KSampler` node samples over.

use super::sampler::SamplerKind;
use super::schedule::{ModelSampling, Scheduler};
use super::SamplingError;

/// The sigmas ComfyUI's `KSampler` (comfy/samplers.py, `KSampler.calculate_sigmas` and
/// `set_steps`) runs `kind` over for `steps` steps of `scheduler` at `denoise`:
///
/// * For the samplers in `DISCARD_PENULTIMATE_SIGMA_SAMPLERS` (here `uni_pc` and `uni_pc_bh2`,
///   see [`SamplerKind::discards_penultimate_sigma`]) the schedule is computed for one step
///   more and its penultimate sigma (the smallest above 0) dropped: `steps` steps whose last
///   one jumps to 0 from the next larger sigma.
/// * `denoise > 0.9999`: the full schedule. `denoise <= 0`: no sigmas at all (ComfyUI then
///   returns the latent unchanged), an empty list here. Otherwise the schedule of
///   `int(steps / denoise)` steps (float64 division, truncated) and its last `steps + 1`
///   sigmas (all of them if it has fewer).
///
/// The other samplers' own sigma edits (the first-sigma offsets of the SDE samplers on flow
/// models, `uni_pc`'s last sigma 0.001) happen when sampling, not here. Errors: zero steps, a
/// NaN `denoise`, or a scheduler error (`kl_optimal` with one step).
pub fn ksampler_sigmas(
    kind: SamplerKind,
    sampling: &ModelSampling,
    scheduler: Scheduler,
    steps: usize,
    denoise: f64,
) -> Result<Vec<f32>, SamplingError> {
    if steps == 0 {
        return Err(SamplingError::ZeroSteps);
    }
    if denoise.is_nan() {
        return Err(SamplingError::InvalidOption {
            reason: "denoise is NaN".to_owned(),
        });
    }
    let calculate = |n: usize| -> Result<Vec<f32>, SamplingError> {
        if kind.discards_penultimate_sigma() {
            let mut s = sampling.sigmas(scheduler, n + 1)?;
            if s.len() >= 2 {
                s.remove(s.len() - 2);
            }
            Ok(s)
        } else {
            sampling.sigmas(scheduler, n)
        }
    };
    if denoise > 0.9999 {
        calculate(steps)
    } else if denoise <= 0.0 {
        Ok(Vec::new())
    } else {
        let new_steps = (steps as f64 / denoise) as usize;
        let s = calculate(new_steps)?;
        let keep = (steps + 1).min(s.len());
        Ok(s[s.len() - keep..].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::schedule::{DiscreteSchedule, FlowSchedule};

    #[test]
    fn uni_pc_drops_the_penultimate_sigma() {
        let ms = ModelSampling::Flow(FlowSchedule::wan_720p());
        let full = ms.sigmas(Scheduler::Simple, 5).unwrap();
        let s = ksampler_sigmas(SamplerKind::UniPc, &ms, Scheduler::Simple, 4, 1.0).unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(&s[..4], &full[..4]);
        assert_eq!(s[4], 0.0);
        let e = ksampler_sigmas(SamplerKind::Euler, &ms, Scheduler::Simple, 4, 1.0).unwrap();
        assert_eq!(e, ms.sigmas(Scheduler::Simple, 4).unwrap());
    }

    #[test]
    fn denoise_takes_the_tail() {
        let ms = ModelSampling::Discrete(DiscreteSchedule::sdxl());
        let s = ksampler_sigmas(SamplerKind::Euler, &ms, Scheduler::Karras, 10, 0.5).unwrap();
        let full = ms.sigmas(Scheduler::Karras, 20).unwrap();
        assert_eq!(s, full[10..].to_vec());
        assert!(
            ksampler_sigmas(SamplerKind::Euler, &ms, Scheduler::Karras, 10, 0.0)
                .unwrap()
                .is_empty()
        );
        assert!(ksampler_sigmas(SamplerKind::Euler, &ms, Scheduler::Karras, 0, 1.0).is_err());
        assert!(ksampler_sigmas(SamplerKind::Euler, &ms, Scheduler::Karras, 3, f64::NAN).is_err());
    }
}
