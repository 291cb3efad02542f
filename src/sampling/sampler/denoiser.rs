//! What the samplers call: the model ([`Denoiser`]) and the noise ([`NoiseSource`]).

use crate::sampling::rng::TorchGenerator;

/// The model as the samplers see it: latent `x` at noise level `sigma` in, denoised latent
/// (the x0 prediction, CFG already applied) out, with `x.len()` values.
pub trait Denoiser {
    /// The network's error type.
    type Error;

    /// Predicts the clean latent from `x` at `sigma`.
    fn denoise(&mut self, x: &[f32], sigma: f32) -> Result<Vec<f32>, Self::Error>;
}

impl<D: Denoiser + ?Sized> Denoiser for &mut D {
    type Error = D::Error;

    fn denoise(&mut self, x: &[f32], sigma: f32) -> Result<Vec<f32>, Self::Error> {
        (**self).denoise(x, sigma)
    }
}

/// A closure as a [`Denoiser`].
pub struct FnDenoiser<F>(pub F);

impl<F, E> Denoiser for FnDenoiser<F>
where
    F: FnMut(&[f32], f32) -> Result<Vec<f32>, E>,
{
    type Error = E;

    fn denoise(&mut self, x: &[f32], sigma: f32) -> Result<Vec<f32>, E> {
        (self.0)(x, sigma)
    }
}

/// Standard normal noise for the stochastic samplers, one buffer per call, in the order the
/// sampler asks (ComfyUI's `noise_sampler(sigma, sigma_next)`).
pub trait NoiseSource {
    /// Fills `out` with noise for the step from `sigma` to `sigma_next`.
    fn fill_noise(&mut self, sigma: f32, sigma_next: f32, out: &mut [f32]);
}

impl NoiseSource for TorchGenerator {
    /// `torch.randn(x.size(), generator=self)`, like ComfyUI's `default_noise_sampler`.
    fn fill_noise(&mut self, _sigma: f32, _sigma_next: f32, out: &mut [f32]) {
        self.fill_randn(out);
    }
}

impl<N: NoiseSource + ?Sized> NoiseSource for &mut N {
    fn fill_noise(&mut self, sigma: f32, sigma_next: f32, out: &mut [f32]) {
        (**self).fill_noise(sigma, sigma_next, out);
    }
}

impl<N: NoiseSource + ?Sized> NoiseSource for Box<N> {
    fn fill_noise(&mut self, sigma: f32, sigma_next: f32, out: &mut [f32]) {
        (**self).fill_noise(sigma, sigma_next, out);
    }
}
