//! The one seeded random generator of the crate. Every random draw (initialisation, data order,
//! noise, caption drop, sampling, shuffles) comes from it, since candle's CPU generator cannot be
//! seeded: the same seed gives the same numbers on every machine.

use candle_core::{Device, Result, Tensor};

/// A seeded xorshift64* generator with Box–Muller normals.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator; the same seed gives the same numbers.
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }

    /// The generator's whole state (for a checkpoint).
    pub fn state(&self) -> u64 {
        self.0
    }

    /// A generator continuing from a saved [`Rng::state`].
    pub fn from_state(state: u64) -> Self {
        Rng(state.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal.
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * self.uniform()).cos()
    }

    /// A uniform index in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A tensor of `n` standard normals times `std`.
    pub fn normal_tensor(&mut self, shape: &[usize], std: f64, device: &Device) -> Result<Tensor> {
        let v: Vec<f32> = (0..shape.iter().product::<usize>()).map(|_| (self.normal() * std) as f32).collect();
        Tensor::from_vec(v, shape, device)
    }
}
