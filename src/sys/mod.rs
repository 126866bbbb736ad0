//! Platform pieces that are not transports: shared-memory segments ([`shm`]), the
//! registration table that other processes read through one ([`regtable`]), and the
//! eventfd of the completion queue ([`eventfd`]), and the sharded reader-writer lock of
//! the tables read on the hot path ([`sharded`]). They
//! know nothing of the engine, the ring or any transport.

pub(crate) mod eventfd;
pub(crate) mod ids;
pub(crate) mod regtable;
pub(crate) mod sharded;
pub(crate) mod shm;
