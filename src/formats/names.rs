//! Architecture detection and name maps. (being written)
