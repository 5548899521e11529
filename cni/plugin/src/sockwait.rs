//! Waiting for one datagram on a raw socket before a deadline: netlink link events and ARP
//! replies are both read this way (poll, then a non-blocking recv).

use std::io;
use std::os::fd::RawFd;
use std::time::Instant;

/// What one wait gave.
pub(crate) enum Received {
    /// A datagram of this many bytes is in the buffer.
    Data(usize),
    /// Nothing yet (a signal, a spurious wake-up): wait again.
    Again,
    /// The deadline passed.
    TimedOut,
}

/// Waits until `fd` is readable or `deadline` passes, then reads one datagram into `buf`
/// without blocking. Errors other than EINTR/EAGAIN (e.g. ENOBUFS: events were dropped) are
/// the caller's to handle.
pub(crate) fn recv_before(fd: RawFd, buf: &mut [u8], deadline: Instant) -> io::Result<Received> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Ok(Received::TimedOut);
    }
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(Received::Again)
        } else {
            Err(e)
        };
    }
    if rc == 0 {
        return Ok(Received::Again);
    }
    // SAFETY: the buffer is writable for its whole length.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EINTR) => Ok(Received::Again),
            _ => Err(e),
        };
    }
    Ok(Received::Data(n as usize))
}

/// Waits until one of `fds` is readable or `deadline` passes, then reads one datagram from
/// the first readable one into `buf` without blocking: `(index into fds, what it gave)`.
pub(crate) fn recv_any_before(
    fds: &[RawFd],
    buf: &mut [u8],
    deadline: Instant,
) -> io::Result<(usize, Received)> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Ok((0, Received::TimedOut));
    }
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: *fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: `pfds` holds `pfds.len()` valid pollfds.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok((0, Received::Again))
        } else {
            Err(e)
        };
    }
    let Some(i) = pfds.iter().position(|p| p.revents != 0) else {
        return Ok((0, Received::Again));
    };
    // SAFETY: the buffer is writable for its whole length.
    let n = unsafe {
        libc::recv(
            fds[i],
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EINTR) => Ok((i, Received::Again)),
            _ => Err(e),
        };
    }
    Ok((i, Received::Data(n as usize)))
}
