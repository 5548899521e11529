//! berth-cni's own CNI error codes (100+) and the one place kernel/IPAM errors become CNI errors.

use berth_cni_spec::{CniError, ErrorCode};
use berth_ipam_core::IpamError;

use crate::net::NetError;

/// A kernel operation failed while setting up or tearing down the network.
pub const NETWORK_SETUP: ErrorCode = ErrorCode::Plugin(100);
/// The ARP probe found another host using the address.
pub const ADDRESS_CONFLICT: ErrorCode = ErrorCode::Plugin(120);
/// An interface berth-cni wants to create exists already.
pub const INTERFACE_EXISTS: ErrorCode = ErrorCode::Plugin(121);
/// CHECK found the live state different from `prevResult`.
pub const CHECK_MISMATCH: ErrorCode = ErrorCode::Plugin(130);

/// Lets `?` turn a kernel-seam error into CNI: message from the error, the cause chain in
/// details, and the code the runtime acts on (EBUSY/EAGAIN mean "try again later").
impl From<NetError> for CniError {
    fn from(e: NetError) -> CniError {
        let code = match &e {
            NetError::Exists { .. } => INTERFACE_EXISTS,
            NetError::Netns { .. } | NetError::NoPodNs => ErrorCode::InvalidEnvironment,
            NetError::Netlink { source, .. } | NetError::Io { source, .. }
                if matches!(source.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN)) =>
            {
                ErrorCode::TryAgainLater
            }
            _ => NETWORK_SETUP,
        };
        CniError::from_error(code, &e)
    }
}

/// Maps an IPAM error with the IPAM library's own code.
pub fn from_ipam(e: &IpamError) -> CniError {
    CniError::from_error(ErrorCode::from_u32(e.cni_code()), e)
}
