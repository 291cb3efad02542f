//! The tensor tables of the tiny models: each architecture's file lists its tensors (stored
//! name, PyTorch-order shape, how the values are drawn) from its sizes, with [`Table`]; the
//! writers of the demo and of the tests draw the values with [`TensorSpec::values`].

/// How a tensor's values are drawn: uniform in [offset - scale, offset + scale) from
/// [`hash_values`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Variance 1 / fan-in (scale sqrt(3 / fan_in), fan-in the product of every dimension but
    /// the first), divided by `div`.
    FanIn { div: f32 },
    /// A fixed scale and offset.
    Uniform { scale: f32, offset: f32 },
}

impl Init {
    /// Linear and convolution weights.
    pub const WEIGHT: Init = Init::FanIn { div: 1.0 };
    /// Biases: small.
    pub const BIAS: Init = Init::Uniform {
        scale: 0.1,
        offset: 0.0,
    };
    /// Norm scales (LayerNorm, GroupNorm, RMSNorm weights and gammas): around 1.
    pub const NORM: Init = Init::Uniform {
        scale: 0.2,
        offset: 1.0,
    };
    /// Token embeddings, class embeddings, relative-position biases: O(1).
    pub const EMBEDDING: Init = Init::Uniform {
        scale: 1.0,
        offset: 0.0,
    };
    /// Absolute position embeddings.
    pub const POSITION: Init = Init::Uniform {
        scale: 0.5,
        offset: 0.0,
    };
    /// Wan's modulation tables.
    pub const MODULATION: Init = Init::Uniform {
        scale: 0.2,
        offset: 0.0,
    };

    /// Every value `v`.
    pub fn constant(v: f32) -> Init {
        Init::Uniform {
            scale: 0.0,
            offset: v,
        }
    }

    /// (scale, offset) of a tensor of `shape`.
    pub fn scale_offset(self, shape: &[u64]) -> (f32, f32) {
        match self {
            Init::FanIn { div } => {
                let fan_in = shape.get(1..).unwrap_or(&[]).iter().product::<u64>().max(1);
                ((3.0 / fan_in as f32).sqrt() / div, 0.0)
            }
            Init::Uniform { scale, offset } => (scale, offset),
        }
    }
}

/// One tensor of a generated file: stored name, PyTorch-order shape, how its values are drawn.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<u64>,
    pub init: Init,
}

impl TensorSpec {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product::<u64>() as usize
    }

    /// The values drawn with `seed` ([`hash_values`] at the [`Init`]'s scale and offset).
    pub fn values(&self, seed: u64) -> Vec<f32> {
        let (scale, offset) = self.init.scale_offset(&self.shape);
        hash_values(self.numel(), seed, scale, offset)
    }
}

/// splitmix64 of (seed * golden + i), mapped to [-1, 1), times `scale` plus `offset`: the
/// generator of the fixture recipes (tools/reference/*), usable by tests.
pub fn hash_values(n: usize, seed: u64, scale: f32, offset: f32) -> Vec<f32> {
    let base = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..n as u64)
        .map(|i| {
            let mut z = base.wrapping_add(i).wrapping_add(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
            u * scale + offset
        })
        .collect()
}

/// A tensor list under construction, in file order, with the layers' usual tensors.
#[derive(Default)]
pub struct Table(Vec<TensorSpec>);

impl Table {
    /// The tensors, in the order they were added.
    pub fn into_specs(self) -> Vec<TensorSpec> {
        self.0
    }

    pub fn push(&mut self, name: impl Into<String>, shape: &[u64], init: Init) {
        self.0.push(TensorSpec {
            name: name.into(),
            shape: shape.to_vec(),
            init,
        });
    }

    /// `{p}.weight` [out, inp] and, with `bias`, `{p}.bias` [out].
    pub fn linear(&mut self, p: &str, out: u64, inp: u64, bias: bool) {
        self.push(format!("{p}.weight"), &[out, inp], Init::WEIGHT);
        if bias {
            self.push(format!("{p}.bias"), &[out], Init::BIAS);
        }
    }

    /// A square 2-D convolution with bias.
    pub fn conv2d(&mut self, p: &str, out: u64, inp: u64, k: u64) {
        self.push(format!("{p}.weight"), &[out, inp, k, k], Init::WEIGHT);
        self.push(format!("{p}.bias"), &[out], Init::BIAS);
    }

    /// A 3-D convolution with bias, kernel [t, h, w].
    pub fn conv3d(&mut self, p: &str, out: u64, inp: u64, k: [u64; 3]) {
        self.push(
            format!("{p}.weight"),
            &[out, inp, k[0], k[1], k[2]],
            Init::WEIGHT,
        );
        self.push(format!("{p}.bias"), &[out], Init::BIAS);
    }

    /// LayerNorm / GroupNorm: weight and bias.
    pub fn norm(&mut self, p: &str, c: u64) {
        self.push(format!("{p}.weight"), &[c], Init::NORM);
        self.push(format!("{p}.bias"), &[c], Init::BIAS);
    }
}
