//! GGUF reader (memory-mapped) and streaming writer. (being written)
