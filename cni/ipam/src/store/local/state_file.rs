//! The local store's state file: fixed-size headers, by address, in front of the leases'
//! JSON.
//!
//! ```text
//! prefix   32 bytes: "berth-ipam/3\n\0\0\0", lease count (u32), 0 (u32), body block length (u64)
//! headers  72 bytes per lease, by address: address (16), family (1), kind (1), flags (1),
//!          6 zero bytes, since (i64), until (i64), sticky key, attachment key, pool key
//!          (u64 each), body offset and length (u32 each)
//! bodies   the leases' JSON, one after the other
//! ```
//!
//! All numbers are little-endian. A transaction reads the prefix and the headers (72 bytes a
//! lease, nothing to parse) and only the bodies of the leases its decision looks at; so an ADD
//! in a /24 full of holds reads about 18 KiB and decodes a lease or two. The file is only ever
//! replaced whole (write, fdatasync, rename), so what a reader opened never changes under it.

use std::fs::File;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::records::{Body, Fields, Kind, Record};
use crate::error::IpamError;

const MAGIC: [u8; 16] = *b"berth-ipam/3\n\0\0\0";
const PREFIX: usize = 32;
const HEADER: usize = 72;

const PINNED: u8 = 1;
const HAS_UNTIL: u8 = 2;
const HAS_STICKY: u8 = 4;
const HAS_ATTACHMENT: u8 = 8;

/// An open state file: its headers read, its bodies left on disk.
pub(super) struct StateFile {
    file: File,
    path: PathBuf,
    headers: Vec<u8>,
    bodies_at: u64,
    bodies_len: u64,
}

impl StateFile {
    /// Opens the state file at `path`; `None` when there is none.
    pub fn open(path: &Path) -> Result<Option<StateFile>, IpamError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(IpamError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let corrupt = |reason: String| IpamError::CorruptStore {
            path: path.to_path_buf(),
            reason,
        };
        let io = |source| IpamError::Io {
            path: path.to_path_buf(),
            source,
        };
        let len = file.metadata().map_err(io)?.len();
        let mut prefix = [0u8; PREFIX];
        if len < PREFIX as u64 {
            return Err(corrupt(format!(
                "it is {len} bytes long, too short for a state file"
            )));
        }
        file.read_exact_at(&mut prefix, 0).map_err(io)?;
        if prefix[..16] != MAGIC {
            return Err(corrupt(format!(
                "it does not start with {:?}",
                String::from_utf8_lossy(&MAGIC[..12])
            )));
        }
        let count = u64::from(u32::from_le_bytes(prefix[16..20].try_into().unwrap()));
        let bodies_len = u64::from_le_bytes(prefix[24..32].try_into().unwrap());
        let bodies_at = PREFIX as u64 + count * HEADER as u64;
        if bodies_at.checked_add(bodies_len) != Some(len) {
            return Err(corrupt(format!(
                "it is {len} bytes long where {count} leases with {bodies_len} bytes of JSON need {}",
                bodies_at.saturating_add(bodies_len)
            )));
        }
        let mut headers = vec![0u8; (count as usize) * HEADER];
        file.read_exact_at(&mut headers, PREFIX as u64)
            .map_err(io)?;
        Ok(Some(StateFile {
            file,
            path: path.to_path_buf(),
            headers,
            bodies_at,
            bodies_len,
        }))
    }

    fn corrupt(&self, reason: String) -> IpamError {
        IpamError::CorruptStore {
            path: self.path.clone(),
            reason,
        }
    }

    /// The leases' headers, by address.
    pub fn records(&self) -> Result<Vec<(IpAddr, Record<'static>)>, IpamError> {
        let mut out: Vec<(IpAddr, Record<'static>)> =
            Vec::with_capacity(self.headers.len() / HEADER);
        for (n, h) in self.headers.chunks_exact(HEADER).enumerate() {
            let at = |e: String| self.corrupt(format!("lease {}: {e}", n + 1));
            let (ip, record) = decode_header(h, self.bodies_len).map_err(at)?;
            if let Some((last, _)) = out.last()
                && *last >= ip
            {
                return Err(at(if *last == ip {
                    format!("address {ip} is listed twice")
                } else {
                    format!("address {ip} is out of order")
                }));
            }
            out.push((ip, record));
        }
        Ok(out)
    }

    /// One lease's JSON.
    pub fn body(&self, offset: u64, len: u32) -> Result<Vec<u8>, IpamError> {
        let mut buf = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut buf, self.bodies_at + offset)
            .map_err(|source| IpamError::Io {
                path: self.path.clone(),
                source,
            })?;
        Ok(buf)
    }

    /// Every lease's JSON (the body block).
    pub fn bodies(&self) -> Result<Vec<u8>, IpamError> {
        let len = u32::try_from(self.bodies_len)
            .map_err(|_| self.corrupt("its body block is over 4 GiB".into()))?;
        self.body(0, len)
    }
}

fn decode_header(h: &[u8], bodies_len: u64) -> Result<(IpAddr, Record<'static>), String> {
    let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap());
    let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().unwrap());
    let ip = match h[16] {
        4 if h[4..16].iter().all(|b| *b == 0) => {
            IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&h[..4]).unwrap()))
        }
        6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&h[..16]).unwrap())),
        f => return Err(format!("bad address family {f}")),
    };
    let kind = match h[17] {
        0 => Kind::Allocated,
        1 => Kind::Held,
        2 => Kind::Reserved,
        k => return Err(format!("the lease of {ip} has a bad state {k}")),
    };
    let flags = h[18];
    if flags & !(PINNED | HAS_UNTIL | HAS_STICKY | HAS_ATTACHMENT) != 0
        || h[19..24].iter().any(|b| *b != 0)
    {
        return Err(format!("the header of {ip} has unknown flags"));
    }
    let offset = u64::from(u32_at(64));
    let len = u32_at(68);
    if offset + u64::from(len) > bodies_len || len == 0 {
        return Err(format!("the JSON of {ip} is outside the body block"));
    }
    let fields = Fields {
        kind,
        pinned: flags & PINNED != 0,
        since: u64_at(24) as i64,
        until: (flags & HAS_UNTIL != 0).then(|| u64_at(32) as i64),
        sticky: (flags & HAS_STICKY != 0).then(|| u64_at(40)),
        attachment: (flags & HAS_ATTACHMENT != 0).then(|| u64_at(48)),
        pool: u64_at(56),
    };
    Ok((
        ip,
        Record {
            fields,
            body: Body::State { offset, len },
        },
    ))
}

/// A state file holding `leases`: (address, fields, JSON), by address.
pub(super) fn encode(leases: &[(IpAddr, Fields, &[u8])]) -> Vec<u8> {
    debug_assert!(leases.windows(2).all(|w| w[0].0 < w[1].0));
    let bodies_len: usize = leases.iter().map(|(_, _, b)| b.len()).sum();
    let mut out = Vec::with_capacity(PREFIX + leases.len() * HEADER + bodies_len);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&(leases.len() as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(bodies_len as u64).to_le_bytes());
    let mut offset = 0u32;
    for (ip, f, body) in leases {
        let (addr, family) = match ip {
            IpAddr::V4(v4) => {
                let mut a = [0u8; 16];
                a[..4].copy_from_slice(&v4.octets());
                (a, 4u8)
            }
            IpAddr::V6(v6) => (v6.octets(), 6u8),
        };
        out.extend_from_slice(&addr);
        let kind = match f.kind {
            Kind::Allocated => 0u8,
            Kind::Held => 1,
            Kind::Reserved => 2,
        };
        let flag = |on: bool, bit: u8| if on { bit } else { 0 };
        let flags = flag(f.pinned, PINNED)
            | flag(f.until.is_some(), HAS_UNTIL)
            | flag(f.sticky.is_some(), HAS_STICKY)
            | flag(f.attachment.is_some(), HAS_ATTACHMENT);
        out.extend_from_slice(&[family, kind, flags, 0, 0, 0, 0, 0]);
        for v in [
            f.since as u64,
            f.until.unwrap_or(0) as u64,
            f.sticky.unwrap_or(0),
            f.attachment.unwrap_or(0),
            f.pool,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let len = u32::try_from(body.len()).expect("a lease's JSON is small");
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        offset += len;
    }
    for (_, _, body) in leases {
        out.extend_from_slice(body);
    }
    out
}
