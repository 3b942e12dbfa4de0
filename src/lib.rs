//! cryo: checkpoint/restore of Linux processes.
//!
//! Three layers joined by plain data: `dump` collects live state into `*State` types (the
//! prost messages generated from `images/*.proto`), `image` serializes them to a checkpoint
//! directory and validates it, `restore` rebuilds processes from them. All FFI lives in
//! `sys` and `infect`.

pub mod check;
pub mod dump;
pub mod fault;
pub mod image;
pub mod infect;
pub mod net;
pub mod restore;
pub mod stats;
pub mod sys;

/// The prost messages generated from `images/*.proto`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/cryo.rs"));

    /// The kernel's register struct, field for field (dump).
    impl From<&libc::user_regs_struct> for UserRegs {
        fn from(r: &libc::user_regs_struct) -> Self {
            Self {
                r15: r.r15,
                r14: r.r14,
                r13: r.r13,
                r12: r.r12,
                rbp: r.rbp,
                rbx: r.rbx,
                r11: r.r11,
                r10: r.r10,
                r9: r.r9,
                r8: r.r8,
                rax: r.rax,
                rcx: r.rcx,
                rdx: r.rdx,
                rsi: r.rsi,
                rdi: r.rdi,
                orig_rax: r.orig_rax,
                rip: r.rip,
                cs: r.cs,
                eflags: r.eflags,
                rsp: r.rsp,
                ss: r.ss,
                fs_base: r.fs_base,
                gs_base: r.gs_base,
                ds: r.ds,
                es: r.es,
                fs: r.fs,
                gs: r.gs,
            }
        }
    }

    /// Back to the kernel's register struct, field for field (restore).
    impl From<&UserRegs> for libc::user_regs_struct {
        fn from(r: &UserRegs) -> Self {
            Self {
                r15: r.r15,
                r14: r.r14,
                r13: r.r13,
                r12: r.r12,
                rbp: r.rbp,
                rbx: r.rbx,
                r11: r.r11,
                r10: r.r10,
                r9: r.r9,
                r8: r.r8,
                rax: r.rax,
                rcx: r.rcx,
                rdx: r.rdx,
                rsi: r.rsi,
                rdi: r.rdi,
                orig_rax: r.orig_rax,
                rip: r.rip,
                cs: r.cs,
                eflags: r.eflags,
                rsp: r.rsp,
                ss: r.ss,
                fs_base: r.fs_base,
                gs_base: r.gs_base,
                ds: r.ds,
                es: r.es,
                fs: r.fs,
                gs: r.gs,
            }
        }
    }
}
