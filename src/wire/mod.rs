//! Wire formats: what crosses between engines — the metadata blob that describes an
//! engine to its peers.

pub mod metadata;
