//! Platform pieces that are not transports: shared-memory segments ([`shm`]) and the
//! registration table that other processes read through one ([`regtable`]). They
//! know nothing of the engine, the ring or any transport.

pub(crate) mod ids;
pub(crate) mod regtable;
pub(crate) mod shm;
