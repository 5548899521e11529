//! Can the shim work for a program? An ELF inspector for a container's entry point, and the
//! symbol-version reader that checks the shim's own glibc floor.
//!
//! The shim is an `LD_PRELOAD` library for x86_64 glibc. It cannot help:
//!
//! - statically linked programs (no `PT_INTERP`: Go, static musl/busybox, static-pie):
//!   nothing loads the preload, and they read time from the vDSO or raw system calls;
//! - musl programs (`ld-musl-*` interpreter): musl's loader loads the shim (it needs only
//!   `libc.so.6`, which musl answers itself), but musl reads the clock inside its own functions,
//!   past the preload, so berth does not inject it;
//! - Go programs, even dynamically linked ones (cgo): the Go runtime reads the vDSO itself;
//! - other architectures (`e_machine` ≠ x86_64, or 32-bit);
//! - glibc older than [`GLIBC_FLOOR`].
//!
//! [`inspect_in_root`] resolves the entry point inside a container's root filesystem (PATH
//! search, symbolic links kept inside the root, `#!` scripts followed to their interpreter)
//! and classifies it as a [`Coverage`].

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The oldest glibc the shim supports.
pub const GLIBC_FLOOR: GlibcVersion = GlibcVersion {
    major: 2,
    minor: 17,
};

const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const SHT_GNU_VERDEF: u32 = 0x6fff_fffd;
const SHT_GNU_VERNEED: u32 = 0x6fff_fffe;
const MAX_INTERP_LEN: u64 = 4096;

/// Errors of reading ELF files and resolving programs.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("malformed ELF file: {0}")]
    Malformed(&'static str),
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("program {program:?} not found in the container's root (looked in {searched})")]
    NotFound { program: String, searched: String },
    #[error("too many symbolic links or script interpreters resolving {0:?}")]
    TooDeep(String),
    #[error("{path} is neither an ELF file nor a #! script")]
    NotExecutable { path: PathBuf },
}

/// A glibc symbol version such as `GLIBC_2.17`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GlibcVersion {
    pub major: u32,
    pub minor: u32,
}

impl GlibcVersion {
    /// `"GLIBC_2.17"` or `"GLIBC_2.2.5"` (micro ignored) → 2.17 / 2.2; `GLIBC_PRIVATE` and
    /// other names → `None`.
    pub fn from_symbol_version(name: &str) -> Option<Self> {
        let mut parts = name.strip_prefix("GLIBC_")?.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(GlibcVersion { major, minor })
    }
}

impl fmt::Display for GlibcVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Whether the shim can shift the clock of a program, and why (not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Coverage {
    /// Dynamically linked against glibc through its x86_64 loader: covered. `glibc` is the
    /// image's glibc version when its libc.so.6 was found.
    Glibc {
        interpreter: String,
        glibc: Option<GlibcVersion>,
    },
    /// No ELF interpreter: statically linked (or static-pie).
    Static,
    /// musl's loader.
    Musl { interpreter: String },
    /// A Go program linked dynamically (cgo): it has glibc's loader, but the Go runtime reads
    /// the clock from the vDSO itself.
    GoRuntime { interpreter: String },
    /// Not an x86_64 64-bit program.
    ForeignArch { machine: u16, class64: bool },
    /// An interpreter berth does not know.
    OtherInterpreter { interpreter: String },
    /// glibc below [`GLIBC_FLOOR`].
    OldGlibc {
        interpreter: String,
        glibc: GlibcVersion,
    },
}

impl Coverage {
    /// True when injecting the shim shifts the program's clock.
    pub fn is_covered(&self) -> bool {
        matches!(self, Coverage::Glibc { .. })
    }

    /// A sentence for events and logs.
    pub fn reason(&self) -> String {
        match self {
            Coverage::Glibc { interpreter, glibc } => format!(
                "dynamically linked against glibc{} ({interpreter}): the shim is preloaded",
                glibc.map(|v| format!(" {v}")).unwrap_or_default()
            ),
            Coverage::Static => {
                "statically linked (no ELF interpreter): LD_PRELOAD is ignored and \
                 the program reads the clock through the vDSO or system calls, so its clock \
                 cannot be shifted"
                    .to_string()
            }
            Coverage::Musl { interpreter } => format!(
                "linked against musl ({interpreter}): musl reads the clock inside its own \
                 functions, where the glibc shim cannot reach, so it is not injected"
            ),
            Coverage::GoRuntime { interpreter } => format!(
                "a Go program ({interpreter}): the Go runtime reads the clock from the vDSO, \
                 not through glibc, so the shim cannot shift it"
            ),
            Coverage::ForeignArch { machine, class64 } => format!(
                "built for {} ({}-bit, e_machine {machine}), not x86_64: the shim cannot be loaded",
                machine_name(*machine),
                if *class64 { 64 } else { 32 }
            ),
            Coverage::OtherInterpreter { interpreter } => format!(
                "unknown ELF interpreter {interpreter}: not glibc's x86_64 loader, so the shim \
                 is not injected"
            ),
            Coverage::OldGlibc { glibc, .. } => {
                format!("glibc {glibc} is older than {GLIBC_FLOOR}, the oldest the shim supports")
            }
        }
    }
}

fn machine_name(machine: u16) -> &'static str {
    match machine {
        3 => "i386",
        8 => "MIPS",
        20 => "PowerPC",
        21 => "PowerPC64",
        22 => "s390",
        40 => "ARM",
        62 => "x86_64",
        183 => "AArch64",
        243 => "RISC-V",
        258 => "LoongArch",
        _ => "another architecture",
    }
}

/// Random access to ELF bytes: a slice in tests, a file in production (so a 100 MiB binary
/// costs a few small reads).
pub trait ElfSource {
    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, ElfError>;
}

impl ElfSource for [u8] {
    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, ElfError> {
        let start = usize::try_from(offset).map_err(|_| ElfError::Malformed("offset too large"))?;
        let end = start
            .checked_add(len)
            .ok_or(ElfError::Malformed("offset too large"))?;
        self.get(start..end)
            .map(<[u8]>::to_vec)
            .ok_or(ElfError::Malformed("truncated"))
    }
}

/// A file opened for ELF reading.
pub struct ElfFile {
    file: File,
    path: PathBuf,
}

impl ElfFile {
    pub fn open(path: &Path) -> Result<Self, ElfError> {
        let file = File::open(path).map_err(|source| ElfError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(ElfFile {
            file,
            path: path.to_path_buf(),
        })
    }

    /// An already open file; `path` names it in errors.
    pub fn from_file(file: File, path: PathBuf) -> Self {
        ElfFile { file, path }
    }
}

impl ElfSource for ElfFile {
    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, ElfError> {
        let mut buf = vec![0; len];
        let mut done = 0;
        while done < len {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => return Err(ElfError::Malformed("truncated")),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(ElfError::Io {
                        path: self.path.clone(),
                        source,
                    });
                }
            }
        }
        Ok(buf)
    }
}

/// The parts of an ELF header berth looks at.
#[derive(Clone, Copy, Debug)]
struct Header {
    class64: bool,
    little: bool,
    machine: u16,
    phoff: u64,
    phentsize: u16,
    phnum: u16,
    shoff: u64,
    shentsize: u16,
    shnum: u16,
}

impl Header {
    fn u16(&self, b: &[u8], at: usize) -> u16 {
        let v = [b[at], b[at + 1]];
        if self.little {
            u16::from_le_bytes(v)
        } else {
            u16::from_be_bytes(v)
        }
    }
    fn u32(&self, b: &[u8], at: usize) -> u32 {
        let v = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if self.little {
            u32::from_le_bytes(v)
        } else {
            u32::from_be_bytes(v)
        }
    }
    fn u64(&self, b: &[u8], at: usize) -> u64 {
        let mut v = [0; 8];
        v.copy_from_slice(&b[at..at + 8]);
        if self.little {
            u64::from_le_bytes(v)
        } else {
            u64::from_be_bytes(v)
        }
    }
    /// An address-sized field (4 bytes in ELF32, 8 in ELF64).
    fn addr(&self, b: &[u8], at64: usize, at32: usize) -> u64 {
        if self.class64 {
            self.u64(b, at64)
        } else {
            u64::from(self.u32(b, at32))
        }
    }
}

fn read_header<S: ElfSource + ?Sized>(src: &S) -> Result<Header, ElfError> {
    let ident = src.read_at(0, 16).map_err(|_| ElfError::NotElf)?;
    if &ident[..4] != b"\x7fELF" {
        return Err(ElfError::NotElf);
    }
    let class64 = match ident[4] {
        1 => false,
        2 => true,
        _ => return Err(ElfError::Malformed("unknown ELF class")),
    };
    let little = match ident[5] {
        1 => true,
        2 => false,
        _ => return Err(ElfError::Malformed("unknown byte order")),
    };
    let b = src.read_at(0, if class64 { 64 } else { 52 })?;
    let mut h = Header {
        class64,
        little,
        machine: 0,
        phoff: 0,
        phentsize: 0,
        phnum: 0,
        shoff: 0,
        shentsize: 0,
        shnum: 0,
    };
    h.machine = h.u16(&b, 18);
    h.phoff = h.addr(&b, 32, 28);
    h.shoff = h.addr(&b, 40, 32);
    let (pe, pn, se, sn) = if class64 {
        (54, 56, 58, 60)
    } else {
        (42, 44, 46, 48)
    };
    h.phentsize = h.u16(&b, pe);
    h.phnum = h.u16(&b, pn);
    h.shentsize = h.u16(&b, se);
    h.shnum = h.u16(&b, sn);
    Ok(h)
}

/// The program's ELF interpreter (`PT_INTERP`), if any.
fn interpreter<S: ElfSource + ?Sized>(src: &S, h: &Header) -> Result<Option<String>, ElfError> {
    let min = if h.class64 { 56 } else { 32 };
    if h.phnum == 0 {
        return Ok(None);
    }
    if usize::from(h.phentsize) < min {
        return Err(ElfError::Malformed("program header entries too small"));
    }
    let table = src.read_at(h.phoff, usize::from(h.phentsize) * usize::from(h.phnum))?;
    for ph in table.chunks_exact(usize::from(h.phentsize)) {
        if h.u32(ph, 0) != PT_INTERP {
            continue;
        }
        let (offset, size) = if h.class64 {
            (h.u64(ph, 8), h.u64(ph, 32))
        } else {
            (u64::from(h.u32(ph, 4)), u64::from(h.u32(ph, 16)))
        };
        if size == 0 || size > MAX_INTERP_LEN {
            return Err(ElfError::Malformed("bad PT_INTERP size"));
        }
        let raw = src.read_at(offset, size as usize)?;
        let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
        return Ok(Some(String::from_utf8_lossy(&raw[..end]).into_owned()));
    }
    Ok(None)
}

/// Classifies an ELF program from its headers alone (no knowledge of the image's libc).
pub fn classify<S: ElfSource + ?Sized>(src: &S) -> Result<Coverage, ElfError> {
    let h = read_header(src)?;
    if h.machine != EM_X86_64 || !h.class64 {
        return Ok(Coverage::ForeignArch {
            machine: h.machine,
            class64: h.class64,
        });
    }
    Ok(match interpreter(src, &h)? {
        None => Coverage::Static,
        Some(interp) => {
            let name = interp.rsplit('/').next().unwrap_or(&interp);
            if name.starts_with("ld-musl-") {
                Coverage::Musl {
                    interpreter: interp,
                }
            } else if name == "ld-linux-x86-64.so.2" {
                if is_go(src, &h)? {
                    Coverage::GoRuntime {
                        interpreter: interp,
                    }
                } else {
                    Coverage::Glibc {
                        interpreter: interp,
                        glibc: None,
                    }
                }
            } else {
                Coverage::OtherInterpreter {
                    interpreter: interp,
                }
            }
        }
    })
}

/// One entry of an object's version needs: `version` (e.g. `GLIBC_2.17`) from `file`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct VersionNeed {
    pub file: String,
    pub version: String,
}

struct Section {
    name: u32,
    kind: u32,
    offset: u64,
    size: u64,
    link: u32,
    info: u32,
}

fn sections<S: ElfSource + ?Sized>(src: &S, h: &Header) -> Result<Vec<Section>, ElfError> {
    if h.shnum == 0 {
        return Ok(Vec::new());
    }
    let min = if h.class64 { 64 } else { 40 };
    if usize::from(h.shentsize) < min {
        return Err(ElfError::Malformed("section header entries too small"));
    }
    let table = src.read_at(h.shoff, usize::from(h.shentsize) * usize::from(h.shnum))?;
    Ok(table
        .chunks_exact(usize::from(h.shentsize))
        .map(|s| Section {
            name: h.u32(s, 0),
            kind: h.u32(s, 4),
            offset: h.addr(s, 24, 16),
            size: h.addr(s, 32, 20),
            link: if h.class64 {
                h.u32(s, 40)
            } else {
                h.u32(s, 24)
            },
            info: if h.class64 {
                h.u32(s, 44)
            } else {
                h.u32(s, 28)
            },
        })
        .collect())
}

/// True when the object carries the Go toolchain's sections (`.go.buildinfo`,
/// `.note.go.buildid`, `.gopclntab`).
fn is_go<S: ElfSource + ?Sized>(src: &S, h: &Header) -> Result<bool, ElfError> {
    let secs = sections(src, h)?;
    let shstrndx = {
        let b = src.read_at(0, if h.class64 { 64 } else { 52 })?;
        usize::from(h.u16(&b, if h.class64 { 62 } else { 50 }))
    };
    let Some(names) = secs.get(shstrndx) else {
        return Ok(false); // no section names (stripped of section headers): cannot tell
    };
    let names = section_bytes(src, names)?;
    Ok(secs.iter().any(|s| {
        c_string(&names, s.name).is_ok_and(|n| {
            matches!(
                n.as_str(),
                ".go.buildinfo" | ".note.go.buildid" | ".gopclntab"
            )
        })
    }))
}

fn section_bytes<S: ElfSource + ?Sized>(src: &S, s: &Section) -> Result<Vec<u8>, ElfError> {
    if s.size > 64 << 20 {
        return Err(ElfError::Malformed("section too large"));
    }
    src.read_at(s.offset, s.size as usize)
}

fn c_string(table: &[u8], at: u32) -> Result<String, ElfError> {
    let rest = table
        .get(at as usize..)
        .ok_or(ElfError::Malformed("string offset out of range"))?;
    let end = rest
        .iter()
        .position(|&c| c == 0)
        .ok_or(ElfError::Malformed("unterminated string"))?;
    Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// Bytes at `at..at+len` of `b`, or a malformed-ELF error.
fn field(b: &[u8], at: usize, len: usize) -> Result<&[u8], ElfError> {
    b.get(at..at + len)
        .ok_or(ElfError::Malformed("version entry out of range"))
}

/// The symbol versions an object needs (`.gnu.version_r`), e.g. what the shim needs of
/// libc.so.6.
pub fn version_needs<S: ElfSource + ?Sized>(src: &S) -> Result<Vec<VersionNeed>, ElfError> {
    let h = read_header(src)?;
    let secs = sections(src, &h)?;
    let mut out = Vec::new();
    for s in secs.iter().filter(|s| s.kind == SHT_GNU_VERNEED) {
        let strtab = secs
            .get(s.link as usize)
            .ok_or(ElfError::Malformed("bad string table link"))?;
        let strings = section_bytes(src, strtab)?;
        let data = section_bytes(src, s)?;
        let mut at = 0usize;
        for _ in 0..s.info {
            let vn = field(&data, at, 16)?;
            let (cnt, file, aux, next) = (h.u16(vn, 2), h.u32(vn, 4), h.u32(vn, 8), h.u32(vn, 12));
            let file = c_string(&strings, file)?;
            let mut a = at + aux as usize;
            for _ in 0..cnt {
                let vna = field(&data, a, 16)?;
                out.push(VersionNeed {
                    file: file.clone(),
                    version: c_string(&strings, h.u32(vna, 8))?,
                });
                match h.u32(vna, 12) {
                    0 => break,
                    n => a += n as usize,
                }
            }
            match next {
                0 => break,
                n => at += n as usize,
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The symbol versions an object defines (`.gnu.version_d`), e.g. `GLIBC_2.17` in a libc.
pub fn version_defs<S: ElfSource + ?Sized>(src: &S) -> Result<Vec<String>, ElfError> {
    let h = read_header(src)?;
    let secs = sections(src, &h)?;
    let mut out = Vec::new();
    for s in secs.iter().filter(|s| s.kind == SHT_GNU_VERDEF) {
        let strtab = secs
            .get(s.link as usize)
            .ok_or(ElfError::Malformed("bad string table link"))?;
        let strings = section_bytes(src, strtab)?;
        let data = section_bytes(src, s)?;
        let mut at = 0usize;
        for _ in 0..s.info {
            let vd = field(&data, at, 20)?;
            let (cnt, aux, next) = (h.u16(vd, 6), h.u32(vd, 12), h.u32(vd, 16));
            if cnt > 0 {
                // the first aux entry names the version itself; later ones its parents
                let vda = field(&data, at + aux as usize, 8)?;
                out.push(c_string(&strings, h.u32(vda, 0))?);
            }
            match next {
                0 => break,
                n => at += n as usize,
            }
        }
    }
    Ok(out)
}

/// One program header: what the loader maps.
struct Segment {
    kind: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

fn segments<S: ElfSource + ?Sized>(src: &S, h: &Header) -> Result<Vec<Segment>, ElfError> {
    let min = if h.class64 { 56 } else { 32 };
    if h.phnum == 0 {
        return Ok(Vec::new());
    }
    if usize::from(h.phentsize) < min {
        return Err(ElfError::Malformed("program header entries too small"));
    }
    let table = src.read_at(h.phoff, usize::from(h.phentsize) * usize::from(h.phnum))?;
    Ok(table
        .chunks_exact(usize::from(h.phentsize))
        .map(|ph| {
            if h.class64 {
                Segment {
                    kind: h.u32(ph, 0),
                    offset: h.u64(ph, 8),
                    vaddr: h.u64(ph, 16),
                    filesz: h.u64(ph, 32),
                }
            } else {
                Segment {
                    kind: h.u32(ph, 0),
                    offset: u64::from(h.u32(ph, 4)),
                    vaddr: u64::from(h.u32(ph, 8)),
                    filesz: u64::from(h.u32(ph, 16)),
                }
            }
        })
        .collect())
}

/// The libraries an object needs (its `DT_NEEDED` entries, in order), read as the loader
/// reads them: the dynamic segment (`PT_DYNAMIC`) and the string table it points at, found
/// through the loaded segments. No section headers needed (stripped objects keep their
/// dynamic segment); a static program has none and needs nothing.
pub fn needed_libraries<S: ElfSource + ?Sized>(src: &S) -> Result<Vec<String>, ElfError> {
    let h = read_header(src)?;
    let segs = segments(src, &h)?;
    let Some(dynamic) = segs.iter().find(|s| s.kind == PT_DYNAMIC) else {
        return Ok(Vec::new());
    };
    if dynamic.filesz > 1 << 20 {
        return Err(ElfError::Malformed("dynamic segment too large"));
    }
    let entry = if h.class64 { 16 } else { 8 };
    let data = src.read_at(dynamic.offset, dynamic.filesz as usize)?;
    let (mut needed, mut strtab, mut strsz) = (Vec::new(), None, None);
    for e in data.chunks_exact(entry) {
        let (tag, value) = (h.addr(e, 0, 0), h.addr(e, 8, 4));
        match tag {
            DT_NULL => break,
            DT_NEEDED => needed.push(value),
            DT_STRTAB => strtab = Some(value),
            DT_STRSZ => strsz = Some(value),
            _ => {}
        }
    }
    if needed.is_empty() {
        return Ok(Vec::new());
    }
    let (Some(strtab), Some(strsz)) = (strtab, strsz) else {
        return Err(ElfError::Malformed("DT_NEEDED without a string table"));
    };
    if strsz > 64 << 20 {
        return Err(ElfError::Malformed("string table too large"));
    }
    let load = segs
        .iter()
        .find(|s| {
            s.kind == PT_LOAD
                && s.vaddr <= strtab
                && strtab
                    .checked_add(strsz)
                    .is_some_and(|end| end <= s.vaddr.saturating_add(s.filesz))
        })
        .ok_or(ElfError::Malformed(
            "dynamic string table outside the loaded segments",
        ))?;
    let strings = src.read_at(load.offset + (strtab - load.vaddr), strsz as usize)?;
    needed
        .into_iter()
        .map(|at| {
            let at =
                u32::try_from(at).map_err(|_| ElfError::Malformed("string offset too large"))?;
            c_string(&strings, at)
        })
        .collect()
}

/// The highest `GLIBC_x.y` among `versions`.
pub fn max_glibc<'a, I: IntoIterator<Item = &'a str>>(versions: I) -> Option<GlibcVersion> {
    versions
        .into_iter()
        .filter_map(GlibcVersion::from_symbol_version)
        .max()
}

/// Classifies the program a container runs: `program` as in the OCI spec's `process.args[0]`
/// (absolute, relative to `/`, or a bare name searched in `path_env`, the container's `PATH`),
/// resolved inside `root` (the container's root filesystem on the host). Symbolic links are
/// resolved as the container would see them (an absolute target stays inside `root`); `#!`
/// scripts are followed to their interpreter. For glibc programs the image's libc.so.6 is read
/// to check [`GLIBC_FLOOR`]. [`crate::rootfs::inspect`] does the same through any view of a
/// root (an image's layers, for one).
///
/// This reads files in a filesystem the container controls. The result decides only whether
/// berth injects the shim; nothing it reads is trusted beyond that.
pub fn inspect_in_root(
    root: &Path,
    program: &str,
    path_env: Option<&str>,
) -> Result<Coverage, ElfError> {
    let view = crate::rootfs::DirRoot::open(root).map_err(|source| ElfError::Io {
        path: root.to_path_buf(),
        source,
    })?;
    crate::rootfs::inspect(&view, program, path_env)
}

/// The highest glibc version an x86_64 libc.so.6 defines; `None` for anything else.
pub(crate) fn libc_version<S: ElfSource + ?Sized>(src: &S) -> Option<GlibcVersion> {
    let h = read_header(src).ok()?;
    if h.machine != EM_X86_64 || !h.class64 {
        return None;
    }
    let defs = version_defs(src).ok()?;
    max_glibc(defs.iter().map(String::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    /// A minimal ELF header: class, byte order, machine, no program headers.
    fn header(class64: bool, little: bool, machine: u16) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = if class64 { 2 } else { 1 };
        b[5] = if little { 1 } else { 2 };
        b[6] = 1;
        let m = if little {
            machine.to_le_bytes()
        } else {
            machine.to_be_bytes()
        };
        b[18..20].copy_from_slice(&m);
        b
    }

    #[test]
    fn foreign_architectures() {
        let aarch64 = header(true, true, 183);
        assert_eq!(
            classify(&aarch64[..]).unwrap(),
            Coverage::ForeignArch {
                machine: 183,
                class64: true
            }
        );
        let s390 = header(true, false, 22);
        assert_eq!(
            classify(&s390[..]).unwrap(),
            Coverage::ForeignArch {
                machine: 22,
                class64: true
            }
        );
        let i386 = header(false, true, 3);
        let c = classify(&i386[..]).unwrap();
        assert_eq!(
            c,
            Coverage::ForeignArch {
                machine: 3,
                class64: false
            }
        );
        assert!(!c.is_covered());
        assert!(c.reason().contains("i386"), "{}", c.reason());
    }

    #[test]
    fn not_elf_and_truncated() {
        assert!(matches!(
            classify(&b"#!/bin/sh\n"[..]),
            Err(ElfError::NotElf)
        ));
        assert!(matches!(classify(&b"\x7fEL"[..]), Err(ElfError::NotElf)));
        // x86_64 header pointing at program headers beyond the end
        let mut b = header(true, true, 62);
        b[32..40].copy_from_slice(&4096u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&1u16.to_le_bytes());
        assert!(matches!(
            classify(&b[..]),
            Err(ElfError::Malformed("truncated"))
        ));
    }

    /// x86_64 header with one PT_INTERP program header naming `interp`.
    fn with_interp(interp: &str) -> Vec<u8> {
        let mut b = header(true, true, 62);
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&1u16.to_le_bytes());
        let mut ph = vec![0u8; 56];
        ph[0..4].copy_from_slice(&PT_INTERP.to_le_bytes());
        ph[8..16].copy_from_slice(&120u64.to_le_bytes());
        ph[32..40].copy_from_slice(&(interp.len() as u64 + 1).to_le_bytes());
        b.extend_from_slice(&ph);
        b.extend_from_slice(interp.as_bytes());
        b.push(0);
        b
    }

    #[test]
    fn interpreters() {
        let c = classify(&with_interp("/lib/ld-musl-x86_64.so.1")[..]).unwrap();
        assert_eq!(
            c,
            Coverage::Musl {
                interpreter: "/lib/ld-musl-x86_64.so.1".into()
            }
        );
        assert!(!c.is_covered());
        let c = classify(&with_interp("/lib64/ld-linux-x86-64.so.2")[..]).unwrap();
        assert!(c.is_covered());
        let c = classify(&with_interp("/system/bin/linker64")[..]).unwrap();
        assert_eq!(
            c,
            Coverage::OtherInterpreter {
                interpreter: "/system/bin/linker64".into()
            }
        );
    }

    #[test]
    fn real_binaries_on_this_host() {
        let busybox =
            ElfFile::open(Path::new("/bin/busybox")).expect("busybox-static is installed");
        assert_eq!(classify(&busybox).unwrap(), Coverage::Static);
        let runc = ElfFile::open(Path::new("/usr/sbin/runc")).expect("runc is installed");
        let c = classify(&runc).unwrap();
        assert_eq!(
            c,
            Coverage::GoRuntime {
                interpreter: "/lib64/ld-linux-x86-64.so.2".into()
            },
            "Debian's runc is a dynamically linked Go program"
        );
        assert!(!c.is_covered());
        let python = ElfFile::open(Path::new("/usr/bin/python3")).expect("python3 is installed");
        match classify(&python).unwrap() {
            Coverage::Glibc { interpreter, .. } => {
                assert_eq!(interpreter, "/lib64/ld-linux-x86-64.so.2")
            }
            other => panic!("python3 should be a glibc program, got {other:?}"),
        }
    }

    #[test]
    fn host_libc_defines_its_own_version() {
        let libc = ElfFile::open(Path::new("/lib/x86_64-linux-gnu/libc.so.6")).unwrap();
        let defs = version_defs(&libc).unwrap();
        assert!(defs.iter().any(|d| d == "GLIBC_2.2.5"));
        assert!(defs.iter().any(|d| d == "GLIBC_2.17"));
        // bookworm: 2.36
        let max = max_glibc(defs.iter().map(String::as_str)).unwrap();
        assert!(
            max >= GlibcVersion {
                major: 2,
                minor: 36
            },
            "{max}"
        );
        // and python3 needs versions of libc.so.6
        let needs = version_needs(&ElfFile::open(Path::new("/usr/bin/python3")).unwrap()).unwrap();
        assert!(
            needs
                .iter()
                .any(|n| n.file == "libc.so.6" && n.version.starts_with("GLIBC_2."))
        );
    }

    #[test]
    fn needed_libraries_of_real_objects() {
        // python3 on bookworm: libm, libz, libexpat, libc (readelf -d agrees)
        let python = ElfFile::open(Path::new("/usr/bin/python3")).unwrap();
        let needed = needed_libraries(&python).unwrap();
        assert!(needed.iter().any(|n| n == "libc.so.6"), "{needed:?}");
        assert!(needed.iter().any(|n| n == "libm.so.6"), "{needed:?}");
        // a static program needs nothing
        let busybox = ElfFile::open(Path::new("/bin/busybox")).unwrap();
        assert!(needed_libraries(&busybox).unwrap().is_empty());
        // libc.so.6 needs only the loader
        let libc = ElfFile::open(Path::new("/lib/x86_64-linux-gnu/libc.so.6")).unwrap();
        assert_eq!(needed_libraries(&libc).unwrap(), ["ld-linux-x86-64.so.2"]);
    }

    /// x86_64 object with a dynamic segment naming `libs` and a loadable string table.
    fn with_needed(libs: &[&str], strtab_in_load: bool) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut offsets = Vec::new();
        for l in libs {
            offsets.push(strings.len() as u64);
            strings.extend_from_slice(l.as_bytes());
            strings.push(0);
        }
        let mut b = header(true, true, 62);
        b[32..40].copy_from_slice(&64u64.to_le_bytes());
        b[54..56].copy_from_slice(&56u16.to_le_bytes());
        b[56..58].copy_from_slice(&2u16.to_le_bytes());
        let dyn_at = 64 + 2 * 56;
        let dyn_len = (offsets.len() + 3) * 16;
        let str_at = dyn_at + dyn_len;
        let total = str_at + strings.len();
        let ph = |kind: u32, off: u64, vaddr: u64, size: u64| {
            let mut p = vec![0u8; 56];
            p[0..4].copy_from_slice(&kind.to_le_bytes());
            p[8..16].copy_from_slice(&off.to_le_bytes());
            p[16..24].copy_from_slice(&vaddr.to_le_bytes());
            p[32..40].copy_from_slice(&size.to_le_bytes());
            p
        };
        // loaded at vaddr 0x1000 + file offset
        let load_size = if strtab_in_load { total } else { str_at };
        b.extend(ph(PT_LOAD, 0, 0x1000, load_size as u64));
        b.extend(ph(
            PT_DYNAMIC,
            dyn_at as u64,
            0x1000 + dyn_at as u64,
            dyn_len as u64,
        ));
        let mut d = |tag: u64, v: u64| {
            b.extend_from_slice(&tag.to_le_bytes());
            b.extend_from_slice(&v.to_le_bytes());
        };
        for o in &offsets {
            d(DT_NEEDED, *o);
        }
        d(DT_STRTAB, 0x1000 + str_at as u64);
        d(DT_STRSZ, strings.len() as u64);
        d(DT_NULL, 0);
        b.extend_from_slice(&strings);
        b
    }

    #[test]
    fn needed_libraries_of_crafted_objects() {
        let b = with_needed(&["libc.so.6", "libdl.so.2"], true);
        assert_eq!(
            needed_libraries(&b[..]).unwrap(),
            ["libc.so.6", "libdl.so.2"]
        );
        assert!(
            needed_libraries(&with_needed(&[], true)[..])
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            needed_libraries(&with_needed(&["libc.so.6"], false)[..]),
            Err(ElfError::Malformed(m)) if m.contains("string table")
        ));
        // no program headers at all: nothing needed
        assert!(
            needed_libraries(&header(true, true, 62)[..])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn glibc_version_names() {
        assert_eq!(
            GlibcVersion::from_symbol_version("GLIBC_2.2.5"),
            Some(GlibcVersion { major: 2, minor: 2 })
        );
        assert_eq!(
            GlibcVersion::from_symbol_version("GLIBC_2.34"),
            Some(GlibcVersion {
                major: 2,
                minor: 34
            })
        );
        assert_eq!(GlibcVersion::from_symbol_version("GLIBC_PRIVATE"), None);
        assert_eq!(GlibcVersion::from_symbol_version("GCC_3.0"), None);
        assert_eq!(
            max_glibc(["GLIBC_2.2.5", "GLIBC_2.17", "GLIBC_2.3.4", "GLIBC_PRIVATE"]),
            Some(GLIBC_FLOOR)
        );
    }

    /// A fake root: /usr/bin/python3 -> real python, /lib/x86_64-linux-gnu/libc.so.6 -> a copy
    /// of the host's, /bin/bb (static), a script, a symlink loop, a foreign binary.
    fn fake_root() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        for d in ["usr/bin", "bin", "lib/x86_64-linux-gnu", "opt/app"] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        fs::copy("/usr/bin/python3", r.join("usr/bin/python3.11")).unwrap();
        symlink("python3.11", r.join("usr/bin/python3")).unwrap();
        fs::copy(
            "/lib/x86_64-linux-gnu/libc.so.6",
            r.join("lib/x86_64-linux-gnu/libc.so.6"),
        )
        .unwrap();
        fs::copy("/bin/busybox", r.join("bin/busybox")).unwrap();
        // an absolute link must stay inside the root
        symlink("/bin/busybox", r.join("bin/sh")).unwrap();
        fs::write(
            r.join("opt/app/run.py"),
            "#!/usr/bin/python3 -u\nprint(1)\n",
        )
        .unwrap();
        fs::write(r.join("opt/app/run.sh"), "#!/bin/sh\necho hi\n").unwrap();
        fs::write(r.join("opt/app/loop.sh"), "#!/opt/app/loop.sh\n").unwrap();
        fs::write(r.join("opt/app/data.txt"), "hello").unwrap();
        fs::write(r.join("opt/app/arm"), header(true, true, 183)).unwrap();
        symlink("../../../../../../usr/bin/python3", r.join("opt/app/up")).unwrap();
        symlink("l2", r.join("opt/app/l1")).unwrap();
        symlink("l1", r.join("opt/app/l2")).unwrap();
        root
    }

    #[test]
    fn inspect_in_a_root() {
        let root = fake_root();
        let r = root.path();
        let glibc = inspect_in_root(r, "python3", Some("/usr/local/bin:/usr/bin")).unwrap();
        match &glibc {
            Coverage::Glibc { glibc: Some(v), .. } => assert!(*v >= GLIBC_FLOOR),
            other => panic!("expected glibc with a version, got {other:?}"),
        }
        assert!(glibc.reason().contains("glibc 2."), "{}", glibc.reason());
        assert_eq!(
            inspect_in_root(r, "/bin/sh", None).unwrap(),
            Coverage::Static
        );
        assert_eq!(
            inspect_in_root(r, "/opt/app/run.sh", None).unwrap(),
            Coverage::Static
        );
        assert!(
            inspect_in_root(r, "/opt/app/run.py", None)
                .unwrap()
                .is_covered()
        );
        assert!(
            inspect_in_root(r, "/opt/app/up", None)
                .unwrap()
                .is_covered()
        );
        assert_eq!(
            inspect_in_root(r, "opt/app/arm", None).unwrap(),
            Coverage::ForeignArch {
                machine: 183,
                class64: true
            }
        );
        match inspect_in_root(r, "python3", Some("/nowhere")) {
            Err(ElfError::NotFound { program, searched }) => {
                assert_eq!(program, "python3");
                assert_eq!(searched, "/nowhere/python3");
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
        assert!(matches!(
            inspect_in_root(r, "/opt/app/loop.sh", None),
            Err(ElfError::TooDeep(_))
        ));
        assert!(matches!(
            inspect_in_root(r, "/opt/app/l1", None),
            Err(ElfError::TooDeep(_)) | Err(ElfError::NotFound { .. })
        ));
        assert!(matches!(
            inspect_in_root(r, "/opt/app/data.txt", None),
            Err(ElfError::NotExecutable { path }) if path == r.join("opt/app/data.txt")
        ));
    }
}
