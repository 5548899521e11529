//! The vDSO as an ELF image: the three clock functions, the executable bytes and the unused
//! end of the mapping.
//!
//! The kernel maps the vDSO as a small ELF shared object (x86-64: one `PT_LOAD` at offset 0,
//! usually two pages) whose dynamic symbols name its functions. Everything is checked against
//! the bytes read from the process: an image that does not look exactly like that is refused
//! with the reason, never patched.

use std::ops::Range;

/// Where berth's block of trampolines and data goes: the last bytes of the vDSO mapping,
/// after the end of the ELF image (which the kernel pads with zeros to the page size).
pub const BLOCK_SIZE: usize = 768;

/// One function the patch replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Function {
    /// Offset of its first byte from the start of the mapping.
    pub offset: usize,
    pub size: usize,
}

/// The parts of a vDSO image the patch needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VdsoImage {
    pub clock_gettime: Function,
    pub gettimeofday: Function,
    pub time: Function,
    /// Byte ranges (offsets in the mapping) of the executable sections.
    pub text: Vec<Range<usize>>,
    /// The end of everything the ELF headers describe; the rest of the mapping is unused.
    pub image_end: usize,
    /// Offset of berth's block (`mapping size - BLOCK_SIZE`).
    pub block: usize,
}

/// Why an image is not patched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("not a 64-bit little-endian x86-64 ELF shared object")]
    NotX86_64Elf,
    #[error("the ELF headers point outside the mapping ({0})")]
    OutOfBounds(&'static str),
    #[error("unexpected program headers: {0}")]
    Segments(String),
    #[error("no dynamic symbol table")]
    NoSymbols,
    #[error("no function {0} in the vDSO")]
    MissingSymbol(&'static str),
    #[error("symbol {name} is not a function inside the executable code")]
    BadSymbol { name: &'static str },
    #[error("no section headers")]
    NoSections,
    #[error(
        "no room for berth's trampolines after the ELF image ({free} bytes free, {BLOCK_SIZE} needed)"
    )]
    NoRoom { free: usize },
    #[error("the bytes after the ELF image are not empty (offset {0:#x})")]
    TailInUse(usize),
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    b.get(at..at + 2).map(|s| u16::from_le_bytes([s[0], s[1]]))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4")))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().expect("8")))
}
fn usize_at(b: &[u8], at: usize) -> Option<usize> {
    u64_at(b, at).and_then(|v| usize::try_from(v).ok())
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const DT_NULL: u64 = 0;
const DT_HASH: u64 = 4;
const DT_STRTAB: u64 = 5;
const DT_SYMTAB: u64 = 6;
const DT_STRSZ: u64 = 10;
const DT_GNU_HASH: u64 = 0x6fff_fef5;
const SHF_EXECINSTR: u64 = 4;
const SHT_NOBITS: u32 = 8;
const STT_FUNC: u8 = 2;

/// Parses `mem`, the whole vDSO mapping as read from the process.
pub fn parse(mem: &[u8]) -> Result<VdsoImage, LayoutError> {
    use LayoutError::*;
    if mem.len() < 64
        || &mem[..4] != b"\x7fELF"
        || mem[4] != 2 // ELFCLASS64
        || mem[5] != 1 // little endian
        || u16_at(mem, 16) != Some(3) // ET_DYN
        || u16_at(mem, 18) != Some(62)
    // EM_X86_64
    {
        return Err(NotX86_64Elf);
    }
    let oob = |what| OutOfBounds(what);
    let phoff = usize_at(mem, 32).ok_or(oob("e_phoff"))?;
    let shoff = usize_at(mem, 40).ok_or(oob("e_shoff"))?;
    let phentsize = u16_at(mem, 54).ok_or(oob("e_phentsize"))? as usize;
    let phnum = u16_at(mem, 56).ok_or(oob("e_phnum"))? as usize;
    let shentsize = u16_at(mem, 58).ok_or(oob("e_shentsize"))? as usize;
    let shnum = u16_at(mem, 60).ok_or(oob("e_shnum"))? as usize;
    if phentsize != 56 || phnum == 0 {
        return Err(Segments(format!("{phnum} entries of {phentsize} bytes")));
    }
    let ph_end = phoff
        .checked_add(phnum * 56)
        .filter(|e| *e <= mem.len())
        .ok_or(oob("program headers"))?;
    let mut image_end = ph_end;
    // Exactly one PT_LOAD, at file offset 0: then an address in the image (p_vaddr based) is
    // an offset in the mapping after subtracting the segment's p_vaddr.
    let mut load: Option<(u64, usize)> = None;
    let mut dynamic: Option<(u64, usize)> = None;
    for i in 0..phnum {
        let p = phoff + i * 56;
        let typ = u32_at(mem, p).ok_or(oob("p_type"))?;
        let offset = usize_at(mem, p + 8).ok_or(oob("p_offset"))?;
        let vaddr = u64_at(mem, p + 16).ok_or(oob("p_vaddr"))?;
        let filesz = usize_at(mem, p + 32).ok_or(oob("p_filesz"))?;
        let end = offset
            .checked_add(filesz)
            .filter(|e| *e <= mem.len())
            .ok_or(oob("segment"))?;
        image_end = image_end.max(end);
        match typ {
            PT_LOAD if load.is_some() => return Err(Segments("more than one PT_LOAD".into())),
            PT_LOAD if offset != 0 => {
                return Err(Segments("the PT_LOAD does not start at offset 0".into()));
            }
            PT_LOAD => load = Some((vaddr, filesz)),
            PT_DYNAMIC => dynamic = Some((vaddr, filesz)),
            _ => {}
        }
    }
    let (load_vaddr, load_size) = load.ok_or_else(|| Segments("no PT_LOAD".into()))?;
    let to_off = |vaddr: u64| -> Option<usize> {
        let off = usize::try_from(vaddr.checked_sub(load_vaddr)?).ok()?;
        (off < load_size).then_some(off)
    };
    let (dyn_vaddr, dyn_size) = dynamic.ok_or(NoSymbols)?;
    let dyn_off = to_off(dyn_vaddr).ok_or(oob("PT_DYNAMIC"))?;
    let (mut symtab, mut strtab, mut strsz, mut hash, mut gnu_hash) =
        (None, None, None, None, None);
    for e in (dyn_off..dyn_off + dyn_size).step_by(16) {
        let tag = u64_at(mem, e).ok_or(oob("dynamic"))?;
        let val = u64_at(mem, e + 8).ok_or(oob("dynamic"))?;
        match tag {
            DT_NULL => break,
            DT_SYMTAB => symtab = to_off(val),
            DT_STRTAB => strtab = to_off(val),
            DT_STRSZ => strsz = usize::try_from(val).ok(),
            DT_HASH => hash = to_off(val),
            DT_GNU_HASH => gnu_hash = to_off(val),
            _ => {}
        }
    }
    let (Some(symtab), Some(strtab), Some(strsz)) = (symtab, strtab, strsz) else {
        return Err(NoSymbols);
    };
    let strs = mem
        .get(strtab..strtab.checked_add(strsz).ok_or(oob("dynstr"))?)
        .ok_or(oob("dynstr"))?;
    let nsyms = match (hash, gnu_hash) {
        (Some(h), _) => u32_at(mem, h + 4).ok_or(oob("DT_HASH"))? as usize,
        (None, Some(g)) => gnu_hash_symbol_count(mem, g).ok_or(oob("DT_GNU_HASH"))?,
        (None, None) => return Err(NoSymbols),
    };
    if nsyms > 4096 {
        return Err(oob("symbol count"));
    }

    // Executable sections: what the branch scan covers.
    if shoff == 0 || shnum == 0 || shentsize != 64 {
        return Err(NoSections);
    }
    let sh_end = shoff
        .checked_add(shnum * 64)
        .filter(|e| *e <= mem.len())
        .ok_or(oob("section headers"))?;
    image_end = image_end.max(sh_end);
    let mut text = Vec::new();
    for i in 0..shnum {
        let s = shoff + i * 64;
        let typ = u32_at(mem, s + 4).ok_or(oob("sh_type"))?;
        let flags = u64_at(mem, s + 8).ok_or(oob("sh_flags"))?;
        let offset = usize_at(mem, s + 24).ok_or(oob("sh_offset"))?;
        let size = usize_at(mem, s + 32).ok_or(oob("sh_size"))?;
        if typ == SHT_NOBITS || size == 0 {
            continue;
        }
        let end = offset
            .checked_add(size)
            .filter(|e| *e <= mem.len())
            .ok_or(oob("section"))?;
        image_end = image_end.max(end);
        if flags & SHF_EXECINSTR != 0 {
            text.push(offset..end);
        }
    }
    if text.is_empty() {
        return Err(NoSections);
    }

    let find = |name: &'static str| -> Result<Function, LayoutError> {
        for i in 1..nsyms {
            let s = symtab + i * 24;
            let name_off = u32_at(mem, s).ok_or(oob("dynsym"))? as usize;
            let info = *mem.get(s + 4).ok_or(oob("dynsym"))?;
            let shndx = u16_at(mem, s + 6).ok_or(oob("dynsym"))?;
            let value = u64_at(mem, s + 8).ok_or(oob("dynsym"))?;
            let size = usize_at(mem, s + 16).ok_or(oob("dynsym"))?;
            let Some(n) = strs.get(name_off..) else {
                continue;
            };
            let n = &n[..n.iter().position(|b| *b == 0).unwrap_or(n.len())];
            if n != name.as_bytes() {
                continue;
            }
            let offset = to_off(value).ok_or(BadSymbol { name })?;
            let inside = text
                .iter()
                .any(|t| t.start <= offset && offset + size <= t.end);
            if info & 0xf != STT_FUNC || shndx == 0 || size == 0 || !inside {
                return Err(BadSymbol { name });
            }
            return Ok(Function { offset, size });
        }
        Err(MissingSymbol(name))
    };
    let clock_gettime = find("__vdso_clock_gettime")?;
    let gettimeofday = find("__vdso_gettimeofday")?;
    let time = find("__vdso_time")?;

    let free = mem.len().saturating_sub(image_end);
    if free < BLOCK_SIZE {
        return Err(NoRoom { free });
    }
    Ok(VdsoImage {
        clock_gettime,
        gettimeofday,
        time,
        text,
        image_end,
        block: mem.len() - BLOCK_SIZE,
    })
}

/// The number of dynamic symbols from a GNU hash table: one past the highest symbol any
/// chain reaches.
fn gnu_hash_symbol_count(mem: &[u8], at: usize) -> Option<usize> {
    let nbuckets = u32_at(mem, at)? as usize;
    let symoffset = u32_at(mem, at + 4)? as usize;
    let bloom_size = u32_at(mem, at + 8)? as usize;
    let buckets = at + 16 + bloom_size * 8;
    let chains = buckets + nbuckets * 4;
    let mut max = 0usize;
    for b in 0..nbuckets {
        max = max.max(u32_at(mem, buckets + b * 4)? as usize);
    }
    if max < symoffset {
        return Some(symoffset);
    }
    let mut i = max;
    loop {
        let h = u32_at(mem, chains + (i - symoffset) * 4)?;
        i += 1;
        if h & 1 == 1 || i > 4096 {
            return Some(i);
        }
    }
}

/// Checks that the unused end of the mapping holds nothing: zeros from the image's end up to
/// berth's block. The block itself is judged by the caller (zeros, or berth's own block).
pub fn check_tail(mem: &[u8], image: &VdsoImage) -> Result<(), LayoutError> {
    match mem[image.image_end..image.block]
        .iter()
        .position(|b| *b != 0)
    {
        Some(p) => Err(LayoutError::TailInUse(image.image_end + p)),
        None => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The vDSO of the process running the tests (the kernel maps the same image into every
    /// process).
    pub(crate) fn own_vdso() -> Vec<u8> {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let line = maps.lines().find(|l| l.ends_with("[vdso]")).unwrap();
        let (a, b) = line
            .split_whitespace()
            .next()
            .unwrap()
            .split_once('-')
            .unwrap();
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        // SAFETY: the range is the vDSO mapping of this process, which is readable and never
        // unmapped while the process runs.
        unsafe { std::slice::from_raw_parts(a as *const u8, (b - a) as usize) }.to_vec()
    }

    #[test]
    fn the_running_kernels_vdso_parses() {
        let mem = own_vdso();
        let img = parse(&mem).unwrap();
        for f in [img.clock_gettime, img.gettimeofday, img.time] {
            assert!(f.size >= 5 && f.offset + f.size <= img.image_end, "{img:?}");
        }
        assert!(img.block >= img.image_end);
        assert_eq!(img.block + BLOCK_SIZE, mem.len());
        check_tail(&mem, &img).unwrap();
        assert!(mem[img.block..].iter().all(|b| *b == 0));
    }

    #[test]
    fn damaged_images_are_refused_with_the_reason() {
        let good = own_vdso();
        let mut m = good.clone();
        m[18] = 3; // EM_386
        assert_eq!(parse(&m), Err(LayoutError::NotX86_64Elf));
        let mut m = good.clone();
        m[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(parse(&m), Err(LayoutError::OutOfBounds("program headers")));
        let mut m = good.clone();
        m[60..62].copy_from_slice(&0u16.to_le_bytes()); // no sections
        assert_eq!(parse(&m), Err(LayoutError::NoSections));
        // a truncated mapping: the section headers are out of bounds
        let img = parse(&good).unwrap();
        assert!(parse(&good[..img.image_end - 1]).is_err());
        // the name of the function renamed away
        let mut m = good.clone();
        let p = m
            .windows(20)
            .position(|w| w == b"__vdso_clock_gettime")
            .unwrap();
        m[p + 7] = b'X';
        assert_eq!(
            parse(&m),
            Err(LayoutError::MissingSymbol("__vdso_clock_gettime"))
        );
        // something written after the image
        let mut m = good.clone();
        m[img.image_end + 3] = 0x90;
        assert_eq!(
            check_tail(&m, &parse(&m).unwrap()),
            Err(LayoutError::TailInUse(img.image_end + 3))
        );
        // a mapping with too little room after the image
        let short = &good[..img.image_end + 100];
        let mut padded = short.to_vec();
        padded.truncate(img.image_end + 100);
        assert_eq!(parse(&padded), Err(LayoutError::NoRoom { free: 100 }));
    }
}
