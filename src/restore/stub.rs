//! The program a restore process execs once its fds, session and the rest that survive execve
//! are in place (see [`super::child`]): a tiny static ELF, written for each process, that maps
//! that process's trampoline ([`super::remote_ctx::TRAMPOLINE_CODE`]) at the address cryo
//! chose for it and then waits in pause() for cryo to seize it. A process created this way
//! starts with a fresh, nearly empty address space instead of a copy of cryo's: nothing to copy
//! at fork, to fault in while it runs, or to tear down when cryo replaces it with the
//! checkpoint's memory.
//!
//! The code (x86-64, assembled by hand; `T` is the trampoline's address, `L` its length, `N`
//! the length of the trampoline code copied):
//!
//! ```text
//!        48 bf T(8)            mov rdi, T
//!        be L(4)               mov esi, L
//!        ba 07 00 00 00        mov edx, PROT_READ|PROT_WRITE|PROT_EXEC
//!        41 ba 22 00 10 00     mov r10d, MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED_NOREPLACE
//!        49 c7 c0 ff ff ff ff  mov r8, -1
//!        45 31 c9              xor r9d, r9d
//!        b8 09 00 00 00        mov eax, SYS_mmap
//!        0f 05                 syscall
//!        48 39 f8              cmp rax, rdi
//!        75 xx                 jne fail
//!        48 8d 35 xx(4)        lea rsi, [rip + code]
//!        b9 N(4)               mov ecx, N
//!        f3 a4                 rep movsb              ; rdi = T
//! wait:  b8 22 00 00 00        mov eax, SYS_pause
//!        0f 05                 syscall
//!        eb f7                 jmp wait
//! fail:  bf 4d 00 00 00        mov edi, 77
//!        b8 e7 00 00 00        mov eax, SYS_exit_group
//!        0f 05                 syscall
//! code:  the trampoline code
//! ```

/// Exit status of a stub that could not map its trampoline.
pub const MAP_FAILED_STATUS: i32 = 77;

const EHDR_LEN: usize = 64;
const PHDR_LEN: usize = 56;

/// The stub ELF for a process whose trampoline goes at `tramp` (`len` bytes, page-aligned,
/// holding `code`), loaded at `load` (page-aligned, clear of the trampoline).
pub fn elf(load: u64, tramp: u64, len: u32, code: &[u8]) -> Vec<u8> {
    let mut text: Vec<u8> = Vec::with_capacity(96 + code.len());
    text.extend_from_slice(&[0x48, 0xbf]);
    text.extend_from_slice(&tramp.to_le_bytes());
    text.push(0xbe);
    text.extend_from_slice(&len.to_le_bytes());
    text.extend_from_slice(&[0xba, 0x07, 0, 0, 0]);
    text.extend_from_slice(&[0x41, 0xba, 0x22, 0x00, 0x10, 0x00]);
    text.extend_from_slice(&[0x49, 0xc7, 0xc0, 0xff, 0xff, 0xff, 0xff]);
    text.extend_from_slice(&[0x45, 0x31, 0xc9]);
    text.extend_from_slice(&[0xb8, 0x09, 0, 0, 0]);
    text.extend_from_slice(&[0x0f, 0x05]);
    text.extend_from_slice(&[0x48, 0x39, 0xf8]);
    let jne_at = text.len();
    text.extend_from_slice(&[0x75, 0]);
    let lea_at = text.len();
    text.extend_from_slice(&[0x48, 0x8d, 0x35, 0, 0, 0, 0]);
    text.push(0xb9);
    text.extend_from_slice(&(code.len() as u32).to_le_bytes());
    text.extend_from_slice(&[0xf3, 0xa4]);
    text.extend_from_slice(&[0xb8, 0x22, 0, 0, 0, 0x0f, 0x05, 0xeb, 0xf7]);
    let fail = text.len();
    text.extend_from_slice(&[0xbf, MAP_FAILED_STATUS as u8, 0, 0, 0]);
    text.extend_from_slice(&[0xb8, 0xe7, 0, 0, 0, 0x0f, 0x05]);
    let code_at = text.len();
    text.extend_from_slice(code);
    // jne rel8: from the end of the jne.
    text[jne_at + 1] = (fail - (jne_at + 2)) as u8;
    // lea rip-relative: from the end of the lea.
    let rel = (code_at - (lea_at + 7)) as u32;
    text[lea_at + 3..lea_at + 7].copy_from_slice(&rel.to_le_bytes());

    let text_off = EHDR_LEN + 2 * PHDR_LEN;
    let total = (text_off + text.len()) as u64;
    let mut out = Vec::with_capacity(total as usize);
    // ELF header: 64-bit, little-endian, version 1, System V; an executable for x86-64.
    out.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    out.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(load + text_off as u64).to_le_bytes()); // entry
    out.extend_from_slice(&(EHDR_LEN as u64).to_le_bytes()); // phoff
    out.extend_from_slice(&0u64.to_le_bytes()); // shoff
    out.extend_from_slice(&0u32.to_le_bytes()); // flags
    out.extend_from_slice(&(EHDR_LEN as u16).to_le_bytes());
    out.extend_from_slice(&(PHDR_LEN as u16).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes()); // phnum
    out.extend_from_slice(&[0; 6]); // shentsize, shnum, shstrndx
                                    // PT_LOAD, R+X, the whole file at `load`.
    let phdr = |out: &mut Vec<u8>, kind: u32, flags: u32, vaddr: u64, size: u64, align: u64| {
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&0u64.to_le_bytes()); // offset
        out.extend_from_slice(&vaddr.to_le_bytes());
        out.extend_from_slice(&vaddr.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&align.to_le_bytes());
    };
    phdr(&mut out, 1, 5, load, total, 4096);
    // PT_GNU_STACK, RW: a non-executable stack, and no READ_IMPLIES_EXEC personality.
    phdr(&mut out, 0x6474_e551, 6, 0, 0, 16);
    out.extend_from_slice(&text);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::remote_ctx::{TRAMPOLINE_CODE, TRAMPOLINE_LEN};

    /// The stub, exec'd for real: it maps the trampoline where asked, with its code, and waits
    /// in pause(); asked for a place that is taken, it exits with its status.
    #[test]
    fn stub_maps_the_trampoline_and_waits() {
        let tramp = 0x2000_0000u64;
        let load = 0x1000_0000u64;
        let elf = elf(load, tramp, TRAMPOLINE_LEN as u32, &TRAMPOLINE_CODE);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stub");
        std::fs::write(&path, &elf).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut child = std::process::Command::new(&path).spawn().unwrap();
        let pid = child.id();
        let mut in_pause = false;
        for _ in 0..2000 {
            let s = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
            if s.split_whitespace().next() == Some("34") {
                in_pause = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let mut code = vec![0u8; TRAMPOLINE_CODE.len()];
        let read = crate::sys::mem::read_force(pid as i32, tramp, &mut code);
        let _ = child.kill();
        let _ = child.wait();
        assert!(in_pause, "the stub does not wait in pause()\n{maps}");
        let line = format!("{:x}-{:x} rwxp", tramp, tramp + TRAMPOLINE_LEN);
        assert!(maps.contains(&line), "no trampoline at {tramp:#x}:\n{maps}");
        read.unwrap();
        assert_eq!(code, TRAMPOLINE_CODE);

        // The trampoline's place overlaps the stub itself: the stub exits with its status.
        let elf = super::elf(load, load, TRAMPOLINE_LEN as u32, &TRAMPOLINE_CODE);
        std::fs::write(&path, &elf).unwrap();
        let status = std::process::Command::new(&path).status().unwrap();
        assert_eq!(status.code(), Some(MAP_FAILED_STATUS));
    }
}
