//! safetensors reader (memory-mapped, sharded). (being written)
