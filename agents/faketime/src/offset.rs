//! Wall-clock offsets and the `berth.io/faketime` annotations that ask for them.
//!
//! Two spellings are accepted in annotations:
//!
//! - **relative** (libfaketime's syntax): `[+|-]<number>[.<fraction>][s|m|h|d|y]`, e.g.
//!   `+2d`, `-3h`, `+90m`, `+30s`, `+1.5d`, `0`, `+0`. No unit means seconds; `y` is 365
//!   days; at most 9 fraction digits; no sign means `+`.
//! - **absolute start**: `@YYYY-MM-DD`, `@YYYY-MM-DD HH:MM:SS` (a `T` instead of the space
//!   and a trailing `Z` are accepted; always UTC) or `@<unix seconds>`. It is turned into an
//!   offset *once*, when the container is created: the container's clock starts at that
//!   instant and then runs. berth never freezes a clock.
//!
//! The shim reads the same relative grammar from its timestamp file (see [`crate::file`]);
//! [`parse_relative`] here is the reference implementation and the tests hold the C parser
//! to it.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Pod-wide annotation: applies to every container of the pod.
pub const ANNOTATION: &str = "berth.io/faketime";
/// Per-container annotation prefix: `berth.io/faketime.<container name>` wins over
/// [`ANNOTATION`] for that container.
pub const CONTAINER_ANNOTATION_PREFIX: &str = "berth.io/faketime.";

const NANOS_PER_SEC: i64 = 1_000_000_000;

/// Errors of offset parsing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OffsetError {
    #[error(
        "empty faketime offset: write a relative offset such as \"+2d\" or a start such as \"@2030-01-01 00:00:00\""
    )]
    Empty,
    #[error(
        "invalid faketime offset {0:?}: expected [+|-]<number>[.<fraction>][s|m|h|d|y], e.g. \"+2d\", \"-3h\", \"+1.5d\""
    )]
    Invalid(String),
    #[error("faketime offset {0:?} is out of range: keep it within ±292 years")]
    OutOfRange(String),
    #[error(
        "invalid faketime start {0:?}: expected \"@YYYY-MM-DD\", \"@YYYY-MM-DD HH:MM:SS\" (UTC) or \"@<unix seconds>\""
    )]
    InvalidStart(String),
    #[error("annotation {key} is invalid")]
    Annotation {
        key: String,
        #[source]
        source: Box<OffsetError>,
    },
}

/// A signed shift of the wall clock, in nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset {
    nanos: i64,
}

impl Offset {
    /// No shift: the container sees real time (the shim is still injected, so the offset can
    /// be changed later without restarting the container).
    pub const ZERO: Offset = Offset { nanos: 0 };

    pub const fn from_nanos(nanos: i64) -> Self {
        Offset { nanos }
    }

    /// `None` if `secs` does not fit (±292 years).
    pub const fn from_secs(secs: i64) -> Option<Self> {
        match secs.checked_mul(NANOS_PER_SEC) {
            Some(nanos) => Some(Offset { nanos }),
            None => None,
        }
    }

    pub const fn as_nanos(self) -> i64 {
        self.nanos
    }

    pub const fn is_zero(self) -> bool {
        self.nanos == 0
    }

    /// Parses an annotation value: a relative offset, or `@<start>` (see the module docs)
    /// resolved against `now`.
    pub fn parse_annotation(value: &str, now: SystemTime) -> Result<Self, OffsetError> {
        let value = value.trim();
        match value.strip_prefix('@') {
            Some(start) => offset_to_start(start, now),
            None => parse_relative(value),
        }
    }
}

impl FromStr for Offset {
    type Err = OffsetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_relative(s)
    }
}

/// The shortest relative spelling that parses back to the same offset: `+2d`, `-3h`,
/// `+1.5s`, `0`.
impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos == 0 {
            return f.write_str("0");
        }
        let sign = if self.nanos < 0 { '-' } else { '+' };
        let abs = self.nanos.unsigned_abs();
        const UNITS: [(u64, char); 4] = [(86_400, 'd'), (3_600, 'h'), (60, 'm'), (1, 's')];
        for (secs, unit) in UNITS {
            let unit_ns = secs * NANOS_PER_SEC as u64;
            if abs.is_multiple_of(unit_ns) {
                return write!(f, "{sign}{}{unit}", abs / unit_ns);
            }
        }
        let frac = format!("{:09}", abs % NANOS_PER_SEC as u64);
        write!(
            f,
            "{sign}{}.{}s",
            abs / NANOS_PER_SEC as u64,
            frac.trim_end_matches('0')
        )
    }
}

/// Parses libfaketime's relative syntax (see the module docs). This is the grammar of the
/// shim's timestamp file too.
pub fn parse_relative(value: &str) -> Result<Offset, OffsetError> {
    let s = value.trim();
    if s.is_empty() {
        return Err(OffsetError::Empty);
    }
    let invalid = || OffsetError::Invalid(value.to_string());
    let out_of_range = || OffsetError::OutOfRange(value.to_string());
    let (negative, s) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (number, unit_secs) = match s.as_bytes().last() {
        Some(b's') => (&s[..s.len() - 1], 1),
        Some(b'm') => (&s[..s.len() - 1], 60),
        Some(b'h') => (&s[..s.len() - 1], 3_600),
        Some(b'd') => (&s[..s.len() - 1], 86_400),
        Some(b'y') => (&s[..s.len() - 1], 365 * 86_400),
        _ => (s, 1),
    };
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (number, None),
    };
    let all_digits = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || frac.is_some_and(|f| !all_digits(f) || f.len() > 9) {
        return Err(invalid());
    }
    let whole: i64 = whole.parse().map_err(|_| out_of_range())?;
    // frac * 10^(9 - digits) is the fraction in nanoseconds of one second, < 1e9
    let frac_ns: i64 = match frac {
        Some(f) => f.parse::<i64>().map_err(|_| invalid())? * 10i64.pow(9 - f.len() as u32),
        None => 0,
    };
    let nanos = whole
        .checked_mul(unit_secs)
        .and_then(|s| s.checked_mul(NANOS_PER_SEC))
        .and_then(|n| n.checked_add(frac_ns * unit_secs))
        .ok_or_else(out_of_range)?;
    Ok(Offset::from_nanos(if negative { -nanos } else { nanos }))
}

/// The offset that makes the wall clock read `start` at `now`.
fn offset_to_start(start: &str, now: SystemTime) -> Result<Offset, OffsetError> {
    let target_secs =
        parse_start(start.trim()).ok_or_else(|| OffsetError::InvalidStart(format!("@{start}")))?;
    let now_nanos = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i128::try_from(d.as_nanos()).unwrap_or(i128::MAX),
        Err(e) => -i128::try_from(e.duration().as_nanos()).unwrap_or(i128::MAX),
    };
    let nanos = i128::from(target_secs) * i128::from(NANOS_PER_SEC) - now_nanos;
    i64::try_from(nanos)
        .map(Offset::from_nanos)
        .map_err(|_| OffsetError::OutOfRange(format!("@{start}")))
}

/// `YYYY-MM-DD[( |T)HH:MM:SS][Z]` or `<unix seconds>` -> unix seconds.
fn parse_start(s: &str) -> Option<i64> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok();
    }
    let s = s.strip_suffix('Z').unwrap_or(s);
    let (date, time) = match s.split_once([' ', 'T']) {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let num = |part: &str, len: usize| -> Option<i64> {
        (part.len() == len && part.bytes().all(|b| b.is_ascii_digit()))
            .then(|| part.parse().ok())
            .flatten()
    };
    let mut d = date.split('-');
    let (year, month, day) = (num(d.next()?, 4)?, num(d.next()?, 2)?, num(d.next()?, 2)?);
    if d.next().is_some()
        || !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
    {
        return None;
    }
    let (h, m, sec) = match time {
        None => (0, 0, 0),
        Some(t) => {
            let mut t = t.split(':');
            let hms = (num(t.next()?, 2)?, num(t.next()?, 2)?, num(t.next()?, 2)?);
            if t.next().is_some() || hms.0 > 23 || hms.1 > 59 || hms.2 > 59 {
                return None;
            }
            hms
        }
    };
    Some(days_from_civil(year, month, day) * 86_400 + h * 3_600 + m * 60 + sec)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (era arithmetic: 400-year cycles of
/// 146097 days, years starting in March so the leap day is last).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The offset a container asks for through its pod's annotations: the per-container
/// annotation `berth.io/faketime.<container>` if present, else the pod-wide
/// `berth.io/faketime`, else `None` (no shim for this container). Annotations for other
/// containers are not looked at, so their mistakes do not fail this one. Absolute starts are
/// resolved against `now` (the container's creation).
pub fn offset_from_annotations<'a, I>(
    annotations: I,
    container: &str,
    now: SystemTime,
) -> Result<Option<Offset>, OffsetError>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut pod = None;
    let mut own = None;
    for (key, value) in annotations {
        if key == ANNOTATION {
            pod = Some((key, value));
        } else if key.strip_prefix(CONTAINER_ANNOTATION_PREFIX) == Some(container) {
            own = Some((key, value));
        }
    }
    let Some((key, value)) = own.or(pod) else {
        return Ok(None);
    };
    Offset::parse_annotation(value, now)
        .map(Some)
        .map_err(|source| OffsetError::Annotation {
            key: key.to_string(),
            source: Box::new(source),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const S: i64 = NANOS_PER_SEC;

    #[test]
    fn relative_forms() {
        let cases = [
            ("+2d", 2 * 86_400 * S),
            ("-3h", -3 * 3_600 * S),
            ("+90m", 90 * 60 * S),
            ("+30s", 30 * S),
            ("+1.5d", 129_600 * S),
            ("0", 0),
            ("+0", 0),
            ("-0", 0),
            ("100", 100 * S),
            ("-120", -120 * S),
            ("+1y", 365 * 86_400 * S),
            ("+0.000000001s", 1),
            ("-2.25h", -8_100 * S),
            (" +2d\n", 2 * 86_400 * S),
        ];
        for (text, nanos) in cases {
            assert_eq!(
                parse_relative(text),
                Ok(Offset::from_nanos(nanos)),
                "{text:?}"
            );
        }
    }

    #[test]
    fn relative_rejects() {
        for text in [
            "+",
            "d",
            "+2dd",
            "2 d",
            "+2w",
            "1.",
            ".5",
            "+1.5.2d",
            "++2d",
            "+-2d",
            "2d ago",
            "+0.0000000001s",
            "2020-01-01 00:00:00",
            "x",
        ] {
            assert_eq!(
                parse_relative(text),
                Err(OffsetError::Invalid(text.to_string())),
                "{text:?}"
            );
        }
        assert_eq!(parse_relative("  "), Err(OffsetError::Empty));
        for text in ["+300y", "+99999999999999999999s", "-107000d"] {
            assert_eq!(
                parse_relative(text),
                Err(OffsetError::OutOfRange(text.to_string())),
                "{text:?}"
            );
        }
    }

    #[test]
    fn display_round_trips() {
        for nanos in [
            0,
            2 * 86_400 * S,
            -3 * 3_600 * S,
            90 * 60 * S,
            -S - 1,
            S / 2,
            129_600 * S,
            i64::MAX,
            i64::MIN + 1,
        ] {
            let o = Offset::from_nanos(nanos);
            assert_eq!(o.to_string().parse::<Offset>(), Ok(o), "{o}");
        }
        assert_eq!(Offset::from_nanos(2 * 86_400 * S).to_string(), "+2d");
        assert_eq!(Offset::from_nanos(-5_400 * S).to_string(), "-90m");
        assert_eq!(Offset::from_nanos(1_500_000_000).to_string(), "+1.5s");
    }

    #[test]
    fn absolute_start_becomes_an_offset_from_now() {
        // 2030-01-01T00:00:00Z is 1893456000
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000) + Duration::from_millis(250);
        let expected = Offset::from_nanos(93_456_000 * S - 250_000_000);
        for text in [
            "@2030-01-01 00:00:00",
            "@2030-01-01T00:00:00Z",
            "@2030-01-01",
            "@1893456000",
            " @2030-01-01T00:00:00 ",
        ] {
            assert_eq!(
                Offset::parse_annotation(text, now),
                Ok(expected),
                "{text:?}"
            );
        }
        // a leap day and a date in the past
        let leap = Offset::parse_annotation("@2024-02-29 12:00:00", UNIX_EPOCH).unwrap();
        assert_eq!(leap.as_nanos(), 1_709_208_000 * S);
        let past = Offset::parse_annotation("@1970-01-01", now).unwrap();
        assert_eq!(past.as_nanos(), -(1_800_000_000 * S + 250_000_000));
    }

    #[test]
    fn absolute_start_rejects() {
        let now = SystemTime::now();
        for text in [
            "@2030-13-01",
            "@2030-02-29",
            "@2030-01-01 24:00:00",
            "@2030-1-1",
            "@2030-01-01 00:00",
            "@",
            "@yesterday",
            "@2030-01-01+01:00",
        ] {
            assert_eq!(
                Offset::parse_annotation(text, now),
                Err(OffsetError::InvalidStart(text.trim().to_string())),
                "{text:?}"
            );
        }
        assert_eq!(
            Offset::parse_annotation("@9999-12-31", UNIX_EPOCH),
            Err(OffsetError::OutOfRange("@9999-12-31".into()))
        );
    }

    #[test]
    fn annotations_pick_container_then_pod() {
        let now = SystemTime::now();
        let anns = [
            ("berth.io/faketime", "+2d"),
            ("berth.io/faketime.db", "-3h"),
            ("berth.io/faketime.broken", "soon"),
            ("other", "+9d"),
        ];
        let get = |c| offset_from_annotations(anns, c, now);
        assert_eq!(get("db"), Ok(Some(Offset::from_nanos(-3 * 3_600 * S))));
        assert_eq!(get("web"), Ok(Some(Offset::from_nanos(2 * 86_400 * S))));
        assert_eq!(
            get("broken"),
            Err(OffsetError::Annotation {
                key: "berth.io/faketime.broken".into(),
                source: Box::new(OffsetError::Invalid("soon".into())),
            })
        );
        assert_eq!(
            offset_from_annotations([("berth.io/faketime.db", "+1h")], "web", now),
            Ok(None)
        );
        assert_eq!(offset_from_annotations([], "web", now), Ok(None));
        // a container literally named like a prefix of another is not confused with it
        assert_eq!(
            offset_from_annotations([("berth.io/faketime.dbx", "+1h")], "db", now),
            Ok(None)
        );
    }
}
