//! The samplers, with ComfyUI / k-diffusion semantics (eta and s_noise as options, no churn):
//! euler, euler_ancestral, heun, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m_sde, dpmpp_sde, lcm,
//! res_multistep, er_sde, ddim, uni_pc, uni_pc_bh2 (ComfyUI's), and unipc_wan (diffusers'
//! UniPC, the official Wan solver).
//!
//! An immutable [`SamplerConfig`] (sampler, model sampling, sigma list, options) builds a
//! stateful [`Stepper`] over one latent; each [`Stepper::step`] runs one step of the sigma list
//! (one or two [`Denoiser`] calls) and reports it, so a caller can draw progress bars or previews
//! between steps. [`sample`] runs all steps with a callback. For ComfyUI's KSampler sigma list
//! (its extra step for uni_pc, denoise) see [`ksampler_sigmas`](super::ksampler_sigmas).
//!
//! The per-element arithmetic mirrors the float32 tensor expressions of the references
//! (ComfyUI's `comfy/k_diffusion/sampling.py` and `comfy/extra_samplers/uni_pc.py`, diffusers'
//! `UniPCMultistepScheduler`) in the same order; scalar coefficients are float32 like
//! ComfyUI's 0-d sigma tensors (`tools/reference/COMFY_SAMPLING.md` lists what decides exact
//! equality per sampler).
//!
//! Noise: the stochastic samplers draw standard normal noise from a [`NoiseSource`], in
//! ComfyUI's order and with its `(sigma, sigma_next)` arguments: `euler_ancestral` once per
//! step when the step's `sigma_down` is not 0 (not on the last step to 0), `lcm`,
//! `dpmpp_2m_sde`, `dpmpp_3m_sde` and `er_sde` once per step to a sigma above 0 (the SDE ones
//! only with eta, s_noise > 0), `dpmpp_sde` twice per step to a sigma above 0: for (sigma,
//! sigma_mid), then (sigma, sigma_next). ComfyUI's default noise for euler_ancestral, lcm and
//! er_sde is [`comfy_sampler_noise`](super::rng::comfy_sampler_noise) (a CPU torch generator
//! seeded with `seed + 1`), reproduced exactly. For dpmpp_sde, dpmpp_2m_sde and dpmpp_3m_sde
//! ComfyUI samples a torchsde Brownian tree (`BrownianTreeNoiseSampler`, seeded with `seed`),
//! reproduced bit for bit by [`BrownianTreeNoise`](super::BrownianTreeNoise);
//! [`SamplerConfig::comfy_noise`] picks the source ComfyUI would use for a run.
//!
//! Layout: the public types ([`SamplerKind`], [`SamplerOptions`], [`SamplerConfig`], [`Stepper`],
//! [`Denoiser`], [`NoiseSource`]) in `sampler/`'s `kind`, `config`, `stepper` and `denoiser`;
//! each sampler's arithmetic and state in its own file (`euler`, `euler_ancestral`, `heun`,
//! `dpmpp_2m`, `dpmpp_2m_sde`, `dpmpp_3m_sde`, `dpmpp_sde`, `lcm`, `res_multistep`, `er_sde`,
//! `ddim`, `uni_pc`, `unipc_wan`).

mod config;
mod ddim;
mod denoiser;
mod dpmpp_2m;
mod dpmpp_2m_sde;
mod dpmpp_3m_sde;
mod dpmpp_sde;
mod er_sde;
mod euler;
mod euler_ancestral;
mod heun;
mod kind;
mod lcm;
mod res_multistep;
mod stepper;
mod uni_pc;
mod unipc_wan;

pub use config::SamplerConfig;
pub use denoiser::{Denoiser, FnDenoiser, NoiseSource};
pub use kind::{SamplerKind, SamplerOptions, UniPcVariant};
pub use stepper::{StepReport, StepView, Stepper};

use super::StepError;

/// Runs every step of `config` from latent `x`, calling `callback` after each step, and
/// returns the final latent.
pub fn sample<'a, D: Denoiser>(
    config: &'a SamplerConfig,
    x: Vec<f32>,
    noise: Option<Box<dyn NoiseSource + Send + 'a>>,
    model: &mut D,
    mut callback: impl FnMut(&StepView<'_>),
) -> Result<Vec<f32>, StepError<D::Error>> {
    let mut stepper = config.stepper(x, noise)?;
    while !stepper.is_finished() {
        let report = stepper.step(model)?;
        callback(&stepper.view(report));
    }
    Ok(stepper.into_x())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::rng::TorchGenerator;
    use crate::sampling::schedule::{DiscreteSchedule, FlowSchedule, ModelSampling, Scheduler};
    use crate::sampling::SamplingError;
    use std::convert::Infallible;

    fn perfect(target: Vec<f32>) -> impl Denoiser<Error = Infallible> {
        FnDenoiser(move |_x: &[f32], _s: f32| Ok(target.clone()))
    }

    #[test]
    fn steppers_can_move_to_another_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<Stepper<'static>>();
        assert_send::<SamplerConfig>();
    }

    #[test]
    fn names_round_trip() {
        for k in SamplerKind::ALL {
            assert_eq!(k.name().parse::<SamplerKind>().unwrap(), k);
        }
        assert!("euler_a".parse::<SamplerKind>().is_err());
    }

    #[test]
    fn a_perfect_denoiser_lands_on_its_target() {
        // With a denoiser that always predicts the same x0, every deterministic sampler ends
        // exactly (up to rounding) on it.
        let target = vec![0.5f32, -1.0, 2.0, 0.0];
        for ms in [
            ModelSampling::Discrete(DiscreteSchedule::sdxl()),
            ModelSampling::Flow(FlowSchedule::wan_480p()),
        ] {
            let sigmas = ms.sigmas(Scheduler::Normal, 8).unwrap();
            let x0 = vec![3.0f32, 1.0, -2.0, 4.0];
            for kind in [
                SamplerKind::Euler,
                SamplerKind::Heun,
                SamplerKind::Dpmpp2m,
                SamplerKind::UniPcWan,
                SamplerKind::UniPc,
                SamplerKind::UniPcBh2,
                SamplerKind::ResMultistep,
                SamplerKind::Ddim,
            ] {
                let cfg = SamplerConfig::new(kind, ms.clone(), sigmas.clone()).unwrap();
                let out =
                    sample(&cfg, x0.clone(), None, &mut perfect(target.clone()), |_| {}).unwrap();
                // ComfyUI's UniPC stops at sigma 0.001 (0.001 x the noise is left; flow latents are
                // also divided by 0.999).
                let tol = match kind {
                    SamplerKind::UniPc | SamplerKind::UniPcBh2 => 1e-2,
                    _ => 1e-4,
                };
                for (a, b) in out.iter().zip(&target) {
                    assert!((a - b).abs() < tol, "{kind} {a} {b}");
                }
            }
        }
    }

    #[test]
    fn stochastic_samplers_need_noise() {
        let ms = ModelSampling::Discrete(DiscreteSchedule::sdxl());
        let sigmas = ms.sigmas(Scheduler::Karras, 3).unwrap();
        let cfg = SamplerConfig::new(SamplerKind::EulerAncestral, ms, sigmas).unwrap();
        assert!(matches!(
            cfg.stepper(vec![0.0; 4], None),
            Err(SamplingError::NoiseRequired { .. })
        ));
    }

    #[test]
    fn callback_sees_every_step_and_heun_counts_evaluations() {
        let ms = ModelSampling::Discrete(DiscreteSchedule::sdxl());
        let sigmas = ms.sigmas(Scheduler::Karras, 5).unwrap();
        let cfg = SamplerConfig::new(SamplerKind::Heun, ms, sigmas).unwrap();
        assert_eq!(cfg.model_evaluations(), 9);
        let mut calls = 0usize;
        let mut model = FnDenoiser(|x: &[f32], _s: f32| {
            calls += 1;
            Ok::<_, Infallible>(vec![0.0; x.len()])
        });
        let mut seen = Vec::new();
        sample(&cfg, vec![1.0; 3], None, &mut model, |v| {
            seen.push((v.report.step, v.report.model_evaluations))
        })
        .unwrap();
        assert_eq!(calls, 9);
        assert_eq!(seen, vec![(0, 2), (1, 2), (2, 2), (3, 2), (4, 1)]);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let ms = ModelSampling::Flow(FlowSchedule::wan_480p());
        for bad in [
            vec![1.0],
            vec![1.0, 2.0],
            vec![1.0, f32::NAN],
            vec![0.0, 0.0],
            vec![1.0, -0.5],
        ] {
            assert!(SamplerConfig::new(SamplerKind::Euler, ms.clone(), bad).is_err());
        }
        let cfg = SamplerConfig::new(SamplerKind::Euler, ms.clone(), vec![1.0, 0.0]).unwrap();
        let opts = SamplerOptions {
            unipc_order: 4,
            ..SamplerOptions::default()
        };
        assert!(cfg.clone().with_options(opts).is_err());
        // A denoiser returning the wrong length.
        let mut st = cfg.stepper(vec![0.0; 4], None).unwrap();
        let mut short = FnDenoiser(|_x: &[f32], _s: f32| Ok::<_, Infallible>(vec![0.0; 3]));
        assert!(matches!(
            st.step(&mut short),
            Err(StepError::Sampling(SamplingError::LengthMismatch { .. }))
        ));
        // Stepping past the end.
        let mut st = cfg.stepper(vec![0.0; 4], None).unwrap();
        let mut ok = FnDenoiser(|x: &[f32], _s: f32| Ok::<_, Infallible>(x.to_vec()));
        st.step(&mut ok).unwrap();
        assert!(st.is_finished());
        assert!(matches!(
            st.step(&mut ok),
            Err(StepError::Sampling(SamplingError::Finished { steps: 1 }))
        ));
    }

    #[test]
    fn denoiser_errors_carry_the_step() {
        #[derive(Debug, thiserror::Error)]
        #[error("boom")]
        struct Boom;
        let ms = ModelSampling::Discrete(DiscreteSchedule::sdxl());
        let sigmas = ms.sigmas(Scheduler::Simple, 2).unwrap();
        let cfg = SamplerConfig::new(SamplerKind::Euler, ms, sigmas.clone()).unwrap();
        let mut n = 0;
        let mut model = FnDenoiser(|x: &[f32], _s: f32| {
            n += 1;
            if n == 2 {
                Err(Boom)
            } else {
                Ok(x.to_vec())
            }
        });
        let err = sample(&cfg, vec![0.0; 2], None, &mut model, |_| {}).unwrap_err();
        match err {
            StepError::Denoiser { step, sigma, .. } => {
                assert_eq!(step, 1);
                assert_eq!(sigma, sigmas[1]);
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn sde_noise_statistics() {
        // dpmpp_2m_sde with a zero denoiser: after one step from sigma s to sn the latent is
        // sn/s e^{-h} x + sn sqrt(1 - e^{-2h}) z; check the noise part's variance.
        let ms = ModelSampling::Discrete(DiscreteSchedule::sdxl());
        let (s, sn) = (2.0f32, 1.0f32);
        let cfg = SamplerConfig::new(SamplerKind::Dpmpp2mSde, ms, vec![s, sn, 0.0]).unwrap();
        let n = 100_000;
        let mut st = cfg
            .stepper(vec![0.0; n], Some(Box::new(TorchGenerator::new(5))))
            .unwrap();
        let mut zero = FnDenoiser(|x: &[f32], _s: f32| Ok::<_, Infallible>(vec![0.0; x.len()]));
        st.step(&mut zero).unwrap();
        let h = (s / sn).ln();
        let expect_var = f64::from(sn * sn * (1.0 - (-2.0 * h).exp()));
        let v = st.x();
        let mean = v.iter().map(|&a| f64::from(a)).sum::<f64>() / n as f64;
        let var = v
            .iter()
            .map(|&a| (f64::from(a) - mean).powi(2))
            .sum::<f64>()
            / n as f64;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!(
            (var / expect_var - 1.0).abs() < 0.02,
            "{var} vs {expect_var}"
        );
    }
}
