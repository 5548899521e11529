//! What the local store knows of a lease without decoding it ([`Fields`]: its state, times
//! and keys), and the journal's text records, which carry those fields in front of the
//! lease's JSON.
//!
//! A put record is
//!
//! ```text
//! + <ip> <a|h|r> <pinned 0|1> <since ns> <until ns|-> <sticky key|-> <attachment key|-> <pool key> <JSON length> <lease JSON>
//! ```
//!
//! and a delete record is `- <ip>`. The keys are FNV-1a hashes (16 hex digits) of the
//! sticky key's namespace and name, of the attachment's container id and interface, and of
//! the pool name. A transaction reads the fields only and decodes the JSON of just the
//! leases its decision looks at. The JSON stays the authority: fields that disagree with
//! their lease are a corrupt store.
//!
//! Compact JSON never holds a raw tab or newline (serde escapes them in strings), so a
//! journal line joins a transaction's records with tabs.

use std::net::IpAddr;

use chrono::{DateTime, Utc};

use crate::state::{Lease, LeaseState, Plan};

/// The first line of a state file.
/// FNV-1a, 64 bits: stable across builds and Rust releases (the keys are on disk).
pub(super) fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (n, part) in parts.iter().enumerate() {
        if n > 0 {
            // A byte no UTF-8 string holds separates the parts.
            h ^= 0xff;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        for b in part.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

pub(super) fn sticky_key(namespace: &str, name: &str) -> u64 {
    fnv1a(&[namespace, name])
}

pub(super) fn attachment_key(container_id: &str, ifname: &str) -> u64 {
    fnv1a(&[container_id, ifname])
}

pub(super) fn pool_key(pool: &str) -> u64 {
    fnv1a(&[pool])
}

/// Nanoseconds since the epoch, saturating outside 1677-2262 (a reservation "until 9999"
/// is still later than any now).
pub(super) fn nanos(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(if t.timestamp() > 0 {
        i64::MAX
    } else {
        i64::MIN
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Allocated,
    Held,
    Reserved,
}

/// What a decision needs of a lease, short of the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Fields {
    pub kind: Kind,
    pub pinned: bool,
    /// [`nanos`] of the lease's `since`.
    pub since: i64,
    /// [`nanos`] of when a hold or timed reservation ends.
    pub until: Option<i64>,
    pub sticky: Option<u64>,
    pub attachment: Option<u64>,
    pub pool: u64,
}

impl Fields {
    pub fn of(lease: &Lease) -> Fields {
        let (kind, until) = match &lease.state {
            LeaseState::Allocated { .. } => (Kind::Allocated, None),
            LeaseState::Held { until } => (Kind::Held, Some(*until)),
            LeaseState::Reserved { until, .. } => (Kind::Reserved, *until),
        };
        Fields {
            kind,
            pinned: lease.pinned,
            since: nanos(lease.since),
            until: until.map(nanos),
            sticky: lease
                .sticky
                .as_ref()
                .map(|s| sticky_key(&s.namespace, &s.name)),
            attachment: lease.attachment().map(|(c, i)| attachment_key(c, i)),
            pool: pool_key(&lease.pool),
        }
    }

    pub fn expired(&self, now: i64) -> bool {
        self.until.is_some_and(|u| u <= now)
    }
}

/// Where a lease's JSON is.
#[derive(Clone, Copy, Debug)]
pub(super) enum Body<'a> {
    /// In the journal's bytes.
    Journal(&'a [u8]),
    /// In the state file's body block, read when needed.
    State { offset: u64, len: u32 },
}

/// One lease as a transaction sees it before (and mostly instead of) decoding it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Record<'a> {
    pub fields: Fields,
    pub body: Body<'a>,
}

/// Appends a put record for `lease` (without a line end).
pub(super) fn encode_put(out: &mut Vec<u8>, lease: &Lease) {
    use std::io::Write;
    let f = Fields::of(lease);
    let kind = match f.kind {
        Kind::Allocated => 'a',
        Kind::Held => 'h',
        Kind::Reserved => 'r',
    };
    let hex = |k: Option<u64>| k.map_or_else(|| "-".to_string(), |k| format!("{k:016x}"));
    let until = f.until.map_or_else(|| "-".to_string(), |u| u.to_string());
    let body = serde_json::to_vec(lease).expect("leases always serialize");
    write!(
        out,
        "+ {} {kind} {} {} {until} {} {} {:016x} {} ",
        lease.ip,
        u8::from(f.pinned),
        f.since,
        hex(f.sticky),
        hex(f.attachment),
        f.pool,
        body.len(),
    )
    .expect("writing to a Vec");
    out.extend_from_slice(&body);
}

/// Appends a delete record for `ip` (without a line end).
pub(super) fn encode_delete(out: &mut Vec<u8>, ip: IpAddr) {
    out.extend_from_slice(format!("- {ip}").as_bytes());
}

/// A journal line for a plan's lease changes, with its line end.
pub(super) fn journal_line(plan: &Plan) -> Vec<u8> {
    let mut line = Vec::with_capacity(512 * (plan.puts.len() + 1));
    for ip in &plan.deletes {
        if !line.is_empty() {
            line.push(b'\t');
        }
        encode_delete(&mut line, *ip);
    }
    for l in &plan.puts {
        if !line.is_empty() {
            line.push(b'\t');
        }
        encode_put(&mut line, l);
    }
    line.push(b'\n');
    line
}

pub(super) enum Op<'a> {
    Put(IpAddr, Record<'a>),
    Delete(IpAddr),
}

/// Splits off the next field: up to a space (which it consumes) or the record's end (a
/// tab, a line end or the end of the bytes, which it leaves).
fn field<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], String> {
    let end = rest
        .iter()
        .position(|b| matches!(b, b' ' | b'\t' | b'\n'))
        .unwrap_or(rest.len());
    let (f, tail) = rest.split_at(end);
    *rest = match tail.first() {
        Some(b' ') => &tail[1..],
        _ => tail,
    };
    if f.is_empty() {
        return Err("a record ends early".into());
    }
    Ok(f)
}

/// A decimal `i64` (every transaction reads every header: no UTF-8 check, no `str` parse).
fn decimal(f: &[u8]) -> Option<i64> {
    let (negative, digits) = match f.split_first() {
        Some((b'-', d)) => (true, d),
        _ => (false, f),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut v: i64 = 0;
    for b in digits {
        let d = b.checked_sub(b'0').filter(|d| *d < 10)?;
        v = v.checked_mul(10)?.checked_add(i64::from(d))?;
    }
    Some(if negative { -v } else { v })
}

/// A key: exactly 16 lowercase hex digits.
fn hex_key(f: &[u8]) -> Option<u64> {
    if f.len() != 16 {
        return None;
    }
    let mut v: u64 = 0;
    for b in f {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(d);
    }
    Some(v)
}

/// Parses the record at the start of `bytes`; returns it and the bytes after it (from its
/// tab or line end on).
pub(super) fn parse_record(bytes: &[u8]) -> Result<(Op<'_>, &[u8]), String> {
    let mut rest = bytes;
    let op = field(&mut rest)?;
    let ip: IpAddr = {
        let f = field(&mut rest)?;
        std::str::from_utf8(f)
            .ok()
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| format!("{:?} is not an address", String::from_utf8_lossy(f)))?
    };
    if op == b"-" {
        return Ok((Op::Delete(ip), rest));
    }
    if op != b"+" {
        return Err(format!(
            "unknown record kind {:?}",
            String::from_utf8_lossy(op)
        ));
    }
    let bad = |what: &str, v: &[u8]| {
        format!(
            "the record of {ip} has a bad {what} {:?}",
            String::from_utf8_lossy(v)
        )
    };
    let kind = match field(&mut rest)? {
        b"a" => Kind::Allocated,
        b"h" => Kind::Held,
        b"r" => Kind::Reserved,
        v => return Err(bad("state", v)),
    };
    let pinned = match field(&mut rest)? {
        b"0" => false,
        b"1" => true,
        v => return Err(bad("pin flag", v)),
    };
    let number = |v: &[u8], what: &str| decimal(v).ok_or_else(|| bad(what, v));
    let since = number(field(&mut rest)?, "time")?;
    let until = match field(&mut rest)? {
        b"-" => None,
        v => Some(number(v, "end time")?),
    };
    let key = |v: &[u8], what: &str| match v {
        b"-" => Ok(None),
        v => hex_key(v).map(Some).ok_or_else(|| bad(what, v)),
    };
    let sticky = key(field(&mut rest)?, "sticky key")?;
    let attachment = key(field(&mut rest)?, "attachment key")?;
    let pool = key(field(&mut rest)?, "pool key")?.ok_or_else(|| bad("pool key", b"-"))?;
    let length = field(&mut rest)?;
    let body = decimal(length)
        .and_then(|n| usize::try_from(n).ok())
        .and_then(|n| rest.get(..n))
        .filter(|body| body.first() == Some(&b'{'))
        .ok_or_else(|| format!("the record of {ip} has no lease of the length it gives"))?;
    let after = &rest[body.len()..];
    let fields = Fields {
        kind,
        pinned,
        since,
        until,
        sticky,
        attachment,
        pool,
    };
    Ok((
        Op::Put(
            ip,
            Record {
                fields,
                body: Body::Journal(body),
            },
        ),
        after,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable() {
        // On disk: a change here breaks every existing store.
        assert_eq!(fnv1a(&[""]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(&["a"]), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(sticky_key("ab", "c"), sticky_key("a", "bc"));
    }

    #[test]
    fn numbers_and_keys_parse_strictly() {
        assert_eq!(decimal(b"-12"), Some(-12));
        assert_eq!(decimal(b"9223372036854775807"), Some(i64::MAX));
        for bad in [&b""[..], b"-", b"1a", b"99999999999999999999"] {
            assert_eq!(decimal(bad), None, "{bad:?}");
        }
        assert_eq!(hex_key(b"00000000000000ff"), Some(255));
        assert_eq!(hex_key(b"ff"), None);
        assert_eq!(hex_key(b"00000000000000FF"), None);
    }
}
