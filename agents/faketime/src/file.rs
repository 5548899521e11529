//! The timestamp file: how berth tells a running shim its offset.
//!
//! # Format
//!
//! ASCII text of at most [`MAX_FILE_LEN`] bytes. Lines are separated by `\n`; spaces, tabs
//! and `\r` around a line are ignored; empty lines and lines starting with `#` are skipped.
//! The first remaining line is the offset, either
//!
//! - `offset_ns=<signed integer>`: nanoseconds, berth's canonical form (what
//!   [`write_timestamp_file`] writes), or
//! - a relative offset in libfaketime's syntax, e.g. `+2d`, `-3h`, `+1.5d`, `0` (see
//!   [`crate::offset::parse_relative`]), for people who write the file by hand.
//!
//! Everything after that line is ignored. A missing, unreadable, oversized or malformed file
//! means offset 0 to the shim (the program sees real time and keeps running); [`read_timestamp_file`] reports
//! such files as errors instead. Absolute times are not part of the file format: berth turns
//! them into an offset when the container is created.
//!
//! Replace the file atomically (write a new file, rename it over the old one), as
//! [`write_timestamp_file`] does, and bind-mount its *directory* into the container: a bind
//! mount of the file itself would keep showing the old inode after a rename.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::fsutil::{Durability, atomic_write};
use crate::offset::{Offset, OffsetError, parse_relative};

/// The file name berth uses inside a container's state directory.
pub const TIMESTAMP_FILE_NAME: &str = "offset";
/// The most bytes the shim reads; a longer file is malformed.
pub const MAX_FILE_LEN: usize = 511;
const CANONICAL_KEY: &str = "offset_ns=";

/// Errors of the timestamp file's content.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContentError {
    #[error("timestamp file is {0} bytes long; the shim reads at most 511")]
    TooLarge(usize),
    #[error("timestamp file holds no offset line: write \"offset_ns=<nanoseconds>\"")]
    NoOffset,
    #[error("invalid offset_ns value {0:?}: expected a signed integer of nanoseconds")]
    BadNanos(String),
    #[error("invalid relative offset line")]
    Relative(#[source] OffsetError),
}

/// Errors of reading and writing the timestamp file.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read timestamp file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("timestamp file {path} is malformed (the shim treats it as offset 0)")]
    Malformed {
        path: PathBuf,
        #[source]
        source: ContentError,
    },
    #[error("cannot write timestamp file {path}: check that its directory exists and is writable")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The canonical content for `offset`: `offset_ns=<n>\n`.
pub fn render(offset: Offset) -> String {
    format!("{CANONICAL_KEY}{}\n", offset.as_nanos())
}

/// Parses file content exactly as the shim does.
pub fn parse_content(content: &[u8]) -> Result<Offset, ContentError> {
    if content.len() > MAX_FILE_LEN {
        return Err(ContentError::TooLarge(content.len()));
    }
    let is_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    for line in content.split(|&b| b == b'\n') {
        let start = line.iter().position(|b| !is_space(b)).unwrap_or(line.len());
        let end = line
            .iter()
            .rposition(|b| !is_space(b))
            .map_or(start, |i| i + 1);
        let line = &line[start..end];
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        let text = String::from_utf8_lossy(line);
        if let Some(nanos) = text.strip_prefix(CANONICAL_KEY) {
            return parse_nanos(nanos)
                .map(Offset::from_nanos)
                .ok_or_else(|| ContentError::BadNanos(nanos.to_string()));
        }
        return parse_relative(&text).map_err(ContentError::Relative);
    }
    Err(ContentError::NoOffset)
}

/// `[+|-]digits` into i64, nothing else (no spaces, no `_`).
fn parse_nanos(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Atomically replaces `path` with the canonical content for `offset` (mode 0644). A running
/// shim picks it up within its cache duration (1 s by default). Not synced to disk: the file
/// belongs to one running container, which a host crash ends with it.
pub fn write_timestamp_file(path: &Path, offset: Offset) -> Result<(), FileError> {
    atomic_write(path, render(offset).as_bytes(), 0o644, Durability::Volatile).map_err(|source| {
        FileError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Reads the offset in `path`, with the shim's grammar.
pub fn read_timestamp_file(path: &Path) -> Result<Offset, FileError> {
    let content = fs::read(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_content(&content).map_err(|source| FileError::Malformed {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const S: i64 = 1_000_000_000;

    #[test]
    fn canonical_round_trip() {
        for nanos in [0, 1, -1, 172_800 * S, i64::MIN, i64::MAX] {
            let o = Offset::from_nanos(nanos);
            assert_eq!(parse_content(render(o).as_bytes()), Ok(o));
        }
        assert_eq!(render(Offset::from_nanos(-5)), "offset_ns=-5\n");
    }

    #[test]
    fn content_grammar() {
        let ok: [(&[u8], i64); 8] = [
            (b"+2d", 172_800 * S),
            (b"\n\n  # comment\n\t-3h \r\n+9d\n", -10_800 * S),
            (b"offset_ns=+42", 42),
            (b"offset_ns=-42\r\n", -42),
            (b"#x\n0", 0),
            (b"  +1.5d  ", 129_600 * S),
            (b"offset_ns=9223372036854775807", i64::MAX),
            (b"+30s\ngarbage", 30 * S),
        ];
        for (content, nanos) in ok {
            assert_eq!(
                parse_content(content),
                Ok(Offset::from_nanos(nanos)),
                "{:?}",
                String::from_utf8_lossy(content)
            );
        }
        assert_eq!(parse_content(b""), Err(ContentError::NoOffset));
        assert_eq!(parse_content(b"# only\n\n"), Err(ContentError::NoOffset));
        assert_eq!(
            parse_content(b"offset_ns=1e9"),
            Err(ContentError::BadNanos("1e9".into()))
        );
        assert_eq!(
            parse_content(b"offset_ns= 5"),
            Err(ContentError::BadNanos(" 5".into()))
        );
        assert_eq!(
            parse_content(b"offset_ns=9223372036854775808"),
            Err(ContentError::BadNanos("9223372036854775808".into()))
        );
        assert_eq!(
            parse_content(b"2020-01-01 00:00:00"),
            Err(ContentError::Relative(OffsetError::Invalid(
                "2020-01-01 00:00:00".into()
            )))
        );
        let big = vec![b'#'; MAX_FILE_LEN + 1];
        assert_eq!(parse_content(&big), Err(ContentError::TooLarge(512)));
    }

    #[test]
    fn write_is_atomic_and_0644_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TIMESTAMP_FILE_NAME);
        write_timestamp_file(&path, Offset::from_nanos(7)).unwrap();
        write_timestamp_file(&path, Offset::from_nanos(-3 * 3_600 * S)).unwrap();
        assert_eq!(
            read_timestamp_file(&path).unwrap(),
            Offset::from_nanos(-3 * 3_600 * S)
        );
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o644);
        // nothing but the file is left in the directory
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(TIMESTAMP_FILE_NAME)]);
    }

    #[test]
    fn read_and_write_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        match read_timestamp_file(&missing) {
            Err(FileError::Read { path, source }) => {
                assert_eq!(path, missing);
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("expected a read error, got {other:?}"),
        }
        let bad = dir.path().join("bad");
        fs::write(&bad, "tomorrow").unwrap();
        assert!(matches!(
            read_timestamp_file(&bad),
            Err(FileError::Malformed { ref path, source: ContentError::Relative(_) }) if *path == bad
        ));
        let nodir = dir.path().join("no/such/dir/offset");
        match write_timestamp_file(&nodir, Offset::ZERO) {
            Err(FileError::Write { path, source }) => {
                assert_eq!(path, nodir);
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("expected a write error, got {other:?}"),
        }
    }
}
