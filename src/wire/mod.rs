//! Wire formats: what crosses between engines — the metadata blob that describes an
//! engine to its peers, and the versioned value a cluster stores it in.

pub mod cluster_value;
pub mod metadata;
