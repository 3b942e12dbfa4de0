//! Loading the parasite blob: parse the static-PIE ELF built from `parasite/` (embedded in cryo
//! at build time), lay its `PT_LOAD` segments out as one flat image and apply its relocations
//! for the address the image will have in the target. Only `R_X86_64_RELATIVE` is accepted;
//! any other relocation, an interpreter or TLS means the blob was built wrongly and is refused.
//! Pure data work: no process is touched here.

use goblin::elf::{program_header, Elf};

/// The blob as built by `build.rs` (see `parasite/`).
pub static PARASITE_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/parasite.elf"));

/// `R_X86_64_RELATIVE`.
const R_X86_64_RELATIVE: u32 = 8;
/// The largest image we accept.
const MAX_IMAGE: u64 = 1 << 20;

/// Why a blob cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The ELF could not be parsed.
    #[error("parasite blob: bad ELF")]
    Parse(#[source] goblin::error::Error),
    /// The ELF is not what `parasite/` builds.
    #[error("parasite blob: {0}")]
    Shape(&'static str),
    /// A relocation of another type than R_X86_64_RELATIVE.
    #[error("parasite blob: relocation type {r_type} at offset {offset:#x} (only R_X86_64_RELATIVE is supported)")]
    Relocation {
        /// The relocation type.
        r_type: u32,
        /// Its offset in the image.
        offset: u64,
    },
    /// A segment or relocation lies outside the image.
    #[error("parasite blob: {what} at {offset:#x} lies outside the {size:#x}-byte image")]
    OutOfBounds {
        /// What is out of bounds.
        what: &'static str,
        /// Its offset.
        offset: u64,
        /// The image size.
        size: u64,
    },
}

/// A relocated blob, ready to be copied to `base` in the target.
#[derive(Debug, Clone)]
pub struct BlobImage {
    /// The image: segment contents at their link addresses (from 0), .bss zeroed.
    pub bytes: Vec<u8>,
    /// Offset of the entry point.
    pub entry: u64,
    /// Page-aligned `(offset, len)` ranges to map read+execute; everything else stays
    /// read-write.
    pub exec: Vec<(u64, u64)>,
}

/// Lays out `elf` and relocates it for load address `base` (page-aligned).
pub fn load(elf: &[u8], base: u64) -> Result<BlobImage, BlobError> {
    let parsed = Elf::parse(elf).map_err(BlobError::Parse)?;
    if parsed.header.e_machine != goblin::elf::header::EM_X86_64 || !parsed.is_64 {
        return Err(BlobError::Shape("not an x86_64 ELF64 file"));
    }
    if parsed.header.e_type != goblin::elf::header::ET_DYN {
        return Err(BlobError::Shape("not position independent (ET_DYN)"));
    }
    if parsed.interpreter.is_some() {
        return Err(BlobError::Shape("has an interpreter"));
    }
    if base % crate::sys::PAGE_SIZE != 0 {
        return Err(BlobError::Shape("load address not page-aligned"));
    }
    let mut size = 0u64;
    for ph in &parsed.program_headers {
        match ph.p_type {
            program_header::PT_TLS => return Err(BlobError::Shape("uses TLS")),
            program_header::PT_LOAD => {
                size = size.max(ph.p_vaddr.saturating_add(ph.p_memsz));
            }
            _ => {}
        }
    }
    if size == 0 || size > MAX_IMAGE {
        return Err(BlobError::Shape(
            "no loadable segment, or larger than 1 MiB",
        ));
    }
    let mut bytes = vec![0u8; size as usize];
    let mut exec = Vec::new();
    for ph in parsed
        .program_headers
        .iter()
        .filter(|ph| ph.p_type == program_header::PT_LOAD)
    {
        if ph.p_filesz > ph.p_memsz {
            return Err(BlobError::Shape("segment file size exceeds memory size"));
        }
        let src = elf
            .get(ph.p_offset as usize..(ph.p_offset + ph.p_filesz) as usize)
            .ok_or(BlobError::OutOfBounds {
                what: "segment contents",
                offset: ph.p_offset,
                size: elf.len() as u64,
            })?;
        let at = ph.p_vaddr as usize;
        bytes[at..at + src.len()].copy_from_slice(src);
        if ph.p_flags & program_header::PF_X != 0 {
            if ph.p_flags & program_header::PF_W != 0 {
                return Err(BlobError::Shape(
                    "a segment is both writable and executable",
                ));
            }
            let start = ph.p_vaddr & !(crate::sys::PAGE_SIZE - 1);
            let end = (ph.p_vaddr + ph.p_memsz).next_multiple_of(crate::sys::PAGE_SIZE);
            exec.push((start, end - start));
        }
    }
    if !parsed.pltrelocs.is_empty() || !parsed.dynrels.is_empty() {
        let r = parsed
            .pltrelocs
            .iter()
            .chain(parsed.dynrels.iter())
            .next()
            .map(|r| (r.r_type, r.r_offset))
            .unwrap_or((0, 0));
        return Err(BlobError::Relocation {
            r_type: r.0,
            offset: r.1,
        });
    }
    for r in parsed.dynrelas.iter() {
        if r.r_type != R_X86_64_RELATIVE {
            return Err(BlobError::Relocation {
                r_type: r.r_type,
                offset: r.r_offset,
            });
        }
        let at = r.r_offset;
        if at.checked_add(8).is_none_or(|end| end > size) {
            return Err(BlobError::OutOfBounds {
                what: "relocation",
                offset: at,
                size,
            });
        }
        let value = base.wrapping_add(r.r_addend.unwrap_or(0) as u64);
        bytes[at as usize..at as usize + 8].copy_from_slice(&value.to_le_bytes());
    }
    let entry = parsed.entry;
    if !exec.iter().any(|&(s, l)| entry >= s && entry < s + l) {
        return Err(BlobError::Shape(
            "entry point is not in an executable segment",
        ));
    }
    Ok(BlobImage { bytes, entry, exec })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_blob_loads_and_relocates_only_relative() {
        let a = load(PARASITE_ELF, 0x1000_0000).expect("load at one base");
        let b = load(PARASITE_ELF, 0x7f00_0000_0000).expect("load at another base");
        assert_eq!(a.bytes.len(), b.bytes.len());
        assert_eq!(a.entry, 0, "entry is the first byte of the text");
        assert!(!a.exec.is_empty());
        // The two images differ only in the relocated words, by exactly the base difference.
        let parsed = Elf::parse(PARASITE_ELF).expect("parse");
        let mut relocated = vec![false; a.bytes.len()];
        for r in parsed.dynrelas.iter() {
            let at = r.r_offset as usize;
            let va = u64::from_le_bytes(a.bytes[at..at + 8].try_into().expect("8 bytes"));
            let vb = u64::from_le_bytes(b.bytes[at..at + 8].try_into().expect("8 bytes"));
            assert_eq!(vb - va, 0x7f00_0000_0000 - 0x1000_0000);
            relocated[at..at + 8].iter_mut().for_each(|x| *x = true);
        }
        for (i, (x, y)) in a.bytes.iter().zip(&b.bytes).enumerate() {
            if !relocated[i] {
                assert_eq!(x, y, "byte {i:#x} differs but is not relocated");
            }
        }
    }

    #[test]
    fn refuses_unaligned_base_and_garbage() {
        assert!(matches!(
            load(PARASITE_ELF, 0x1234),
            Err(BlobError::Shape(_))
        ));
        assert!(matches!(load(b"not an elf", 0), Err(BlobError::Parse(_))));
    }

    #[test]
    fn refuses_other_relocation_types() {
        // Turn the blob's first RELATIVE relocation into R_X86_64_64 (type 1).
        let parsed = Elf::parse(PARASITE_ELF).expect("parse");
        let dynamic = parsed.dynamic.as_ref().expect("dynamic section");
        // goblin reports DT_RELA already translated to a file offset.
        let file_off = dynamic.info.rela;
        let mut elf = PARASITE_ELF.to_vec();
        // r_info is the second 8-byte word; the type is its low 32 bits.
        elf[file_off + 8..file_off + 12].copy_from_slice(&1u32.to_le_bytes());
        assert!(matches!(
            load(&elf, 0x1000),
            Err(BlobError::Relocation { r_type: 1, .. })
        ));
    }
}
