//! The fabric as the registry's [`Keyring`]: every region of host memory (and GPU
//! memory where the provider offers `FI_HMEM`) is registered with the domain, and the
//! registration lives and dies with the region.

use std::sync::Arc;

use super::Domain;
use crate::error::{Error, Result};
use crate::mem::{Key, Keyring};

/// The engine's fabric domain, registering memory for the registry.
pub(crate) struct DomainKeys(pub(crate) Arc<Domain>);

impl Keyring for DomainKeys {
    fn register_host(&self, addr: usize, len: usize) -> Result<Key> {
        let mr = self.0.register(addr, len)?;
        Ok(Key {
            desc: mr.desc,
            remote: mr.key,
            _owner: Box::new(mr),
        })
    }

    fn register_device(&self, addr: usize, len: usize, device: u32) -> std::result::Result<Key, String> {
        let domain = &self.0;
        if !domain.hmem {
            return Err(format!(
                "provider {} does not offer FI_HMEM (device memory)",
                domain.provider
            ));
        }
        match domain.register_cuda(addr as u64, len, device as i32) {
            Ok(mr) => Ok(Key {
                desc: mr.desc,
                remote: mr.key,
                _owner: Box::new(mr),
            }),
            Err(e) => {
                let hint = match e {
                    Error::Fabric { code, .. } if code == libc::ENOSYS => {
                        "; this libfabric has no CUDA support built in (configure --with-cuda)"
                    }
                    _ => "",
                };
                Err(format!("{e}{hint}"))
            }
        }
    }
}
