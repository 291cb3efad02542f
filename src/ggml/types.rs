//! The ggml tensor types as a plain Rust enum: ids (as stored in GGUF), names, block sizes and
//! byte sizes. Pure data, no FFI; a unit test checks every entry against ggml's own tables.

use std::fmt;

macro_rules! ggml_types {
    ($( $variant:ident = $id:literal, $name:literal, $blck:literal, $size:literal, $quant:literal; )*) => {
        /// A ggml tensor type (`enum ggml_type`). Discriminants are the ids GGUF stores.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u32)]
        pub enum GgmlType { $( $variant = $id, )* }

        impl GgmlType {
            /// Every type this build knows, in id order.
            pub const ALL: &'static [GgmlType] = &[ $( GgmlType::$variant, )* ];

            /// The type with this id, or `None` for removed or unknown ids.
            pub fn from_id(id: u32) -> Option<GgmlType> {
                match id { $( $id => Some(GgmlType::$variant), )* _ => None }
            }

            /// Lowercase ggml name ("f32", "q4_k", "iq4_xs", ...).
            pub fn name(self) -> &'static str {
                match self { $( GgmlType::$variant => $name, )* }
            }

            /// Number of values per block (1 for plain types).
            pub fn block_size(self) -> u64 {
                match self { $( GgmlType::$variant => $blck, )* }
            }

            /// Bytes per block.
            pub fn type_size(self) -> u64 {
                match self { $( GgmlType::$variant => $size, )* }
            }

            /// Block-quantized (as opposed to plain float or integer).
            pub fn is_quantized(self) -> bool {
                match self { $( GgmlType::$variant => $quant, )* }
            }
        }
    };
}

ggml_types! {
    F32 = 0, "f32", 1, 4, false;
    F16 = 1, "f16", 1, 2, false;
    Q4_0 = 2, "q4_0", 32, 18, true;
    Q4_1 = 3, "q4_1", 32, 20, true;
    Q5_0 = 6, "q5_0", 32, 22, true;
    Q5_1 = 7, "q5_1", 32, 24, true;
    Q8_0 = 8, "q8_0", 32, 34, true;
    Q8_1 = 9, "q8_1", 32, 36, true;
    Q2_K = 10, "q2_K", 256, 84, true;
    Q3_K = 11, "q3_K", 256, 110, true;
    Q4_K = 12, "q4_K", 256, 144, true;
    Q5_K = 13, "q5_K", 256, 176, true;
    Q6_K = 14, "q6_K", 256, 210, true;
    Q8_K = 15, "q8_K", 256, 292, true;
    IQ2_XXS = 16, "iq2_xxs", 256, 66, true;
    IQ2_XS = 17, "iq2_xs", 256, 74, true;
    IQ3_XXS = 18, "iq3_xxs", 256, 98, true;
    IQ1_S = 19, "iq1_s", 256, 50, true;
    IQ4_NL = 20, "iq4_nl", 32, 18, true;
    IQ3_S = 21, "iq3_s", 256, 110, true;
    IQ2_S = 22, "iq2_s", 256, 82, true;
    IQ4_XS = 23, "iq4_xs", 256, 136, true;
    I8 = 24, "i8", 1, 1, false;
    I16 = 25, "i16", 1, 2, false;
    I32 = 26, "i32", 1, 4, false;
    I64 = 27, "i64", 1, 8, false;
    F64 = 28, "f64", 1, 8, false;
    IQ1_M = 29, "iq1_m", 256, 56, true;
    BF16 = 30, "bf16", 1, 2, false;
    TQ1_0 = 34, "tq1_0", 256, 54, true;
    TQ2_0 = 35, "tq2_0", 256, 66, true;
    MXFP4 = 39, "mxfp4", 32, 17, true;
    NVFP4 = 40, "nvfp4", 64, 36, true;
    Q1_0 = 41, "q1_0", 128, 18, true;
    Q2_0 = 42, "q2_0", 64, 18, true;
}

impl GgmlType {
    /// The type named `name`, case-insensitive ("Q4_K", "q4_k", "BF16").
    pub fn from_name(name: &str) -> Option<GgmlType> {
        let lower = name.to_ascii_lowercase();
        GgmlType::ALL
            .iter()
            .copied()
            .find(|t| t.name().eq_ignore_ascii_case(&lower))
    }

    /// Lowercase name, as `nijigen info --json` prints it ("q4_k").
    pub fn lower_name(self) -> String {
        self.name().to_ascii_lowercase()
    }

    /// Bytes of `n` values, or `None` when `n` is not a whole number of blocks or overflows.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let b = self.block_size();
        if n % b != 0 {
            return None;
        }
        (n / b).checked_mul(self.type_size())
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.lower_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_ggml() {
        for &t in GgmlType::ALL {
            let (blck, size, name, quant) = crate::ggml::type_traits(t);
            assert_eq!(t.block_size(), blck, "{t:?} block size");
            assert_eq!(t.type_size(), size, "{t:?} type size");
            assert_eq!(t.name(), name, "{t:?} name");
            assert_eq!(t.is_quantized(), quant, "{t:?} is_quantized");
        }
        assert_eq!(crate::ggml::type_count(), 43);
    }

    #[test]
    fn names_and_sizes() {
        assert_eq!(GgmlType::from_name("Q4_K"), Some(GgmlType::Q4_K));
        assert_eq!(GgmlType::from_name("q6_k"), Some(GgmlType::Q6_K));
        assert_eq!(GgmlType::from_name("q4_k_m"), None);
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::Q4_K.bytes_for(512), Some(288));
        assert_eq!(GgmlType::Q4_K.bytes_for(100), None);
        assert_eq!(GgmlType::Q4_K.to_string(), "q4_k");
    }
}
