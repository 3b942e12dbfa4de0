//! Raw Linux x86_64 system calls and the few kernel constants and structs the blob uses.

/// `rt_sigaction`.
pub const NR_RT_SIGACTION: u64 = 13;
/// `close`.
pub const NR_CLOSE: u64 = 3;
/// `brk`.
pub const NR_BRK: u64 = 12;
/// `getitimer`.
pub const NR_GETITIMER: u64 = 36;
/// `umask`.
pub const NR_UMASK: u64 = 95;
/// `sigaltstack`.
pub const NR_SIGALTSTACK: u64 = 131;
/// `prctl`.
pub const NR_PRCTL: u64 = 157;
/// `timer_gettime`.
pub const NR_TIMER_GETTIME: u64 = 224;
/// `timer_getoverrun`.
pub const NR_TIMER_GETOVERRUN: u64 = 225;
/// `vmsplice`.
pub const NR_VMSPLICE: u64 = 278;
/// `poll`.
pub const NR_POLL: u64 = 7;
/// `madvise`.
pub const NR_MADVISE: u64 = 28;
/// `MADV_DONTNEED`.
pub const MADV_DONTNEED: u64 = 4;
/// `POLLOUT`.
pub const POLLOUT: i16 = 4;
/// `EINTR`.
pub const EINTR: u64 = 4;

/// `PR_GET_TID_ADDRESS`.
pub const PR_GET_TID_ADDRESS: u64 = 40;
/// `SIGKILL`.
pub const SIGKILL: u64 = 9;
/// `SIGSTOP`.
pub const SIGSTOP: u64 = 19;
/// `EINVAL`.
pub const EINVAL: u64 = 22;
/// `EIO`.
pub const EIO: u64 = 5;

/// `stack_t`.
#[repr(C)]
#[derive(Default)]
pub struct StackT {
    /// Base address.
    pub ss_sp: u64,
    /// `SS_*` flags.
    pub ss_flags: i32,
    /// Size in bytes.
    pub ss_size: u64,
}

/// `struct pollfd`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct PollFd {
    /// The fd.
    pub fd: i32,
    /// Events asked for.
    pub events: i16,
    /// Events that happened.
    pub revents: i16,
}

/// `struct iovec`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct IoVec {
    /// Start address.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
}

/// A system call with one argument.
///
/// # Safety
/// The arguments must be valid for the call.
#[inline(always)]
pub unsafe fn syscall1(nr: u64, a1: u64) -> i64 {
    let ret: i64;
    // SAFETY: the syscall instruction clobbers only rax, rcx and r11, declared here; memory
    // effects are the caller's responsibility.
    unsafe {
        core::arch::asm!("syscall", inlateout("rax") nr as i64 => ret, in("rdi") a1,
            lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// A system call with two arguments.
///
/// # Safety
/// The arguments must be valid for the call.
#[inline(always)]
pub unsafe fn syscall2(nr: u64, a1: u64, a2: u64) -> i64 {
    let ret: i64;
    // SAFETY: as in syscall1.
    unsafe {
        core::arch::asm!("syscall", inlateout("rax") nr as i64 => ret, in("rdi") a1,
            in("rsi") a2, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// A system call with three arguments.
///
/// # Safety
/// The arguments must be valid for the call.
#[inline(always)]
pub unsafe fn syscall3(nr: u64, a1: u64, a2: u64, a3: u64) -> i64 {
    let ret: i64;
    // SAFETY: as in syscall1.
    unsafe {
        core::arch::asm!("syscall", inlateout("rax") nr as i64 => ret, in("rdi") a1,
            in("rsi") a2, in("rdx") a3, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

/// A system call with four arguments.
///
/// # Safety
/// The arguments must be valid for the call.
#[inline(always)]
pub unsafe fn syscall4(nr: u64, a1: u64, a2: u64, a3: u64, a4: u64) -> i64 {
    let ret: i64;
    // SAFETY: as in syscall1.
    unsafe {
        core::arch::asm!("syscall", inlateout("rax") nr as i64 => ret, in("rdi") a1,
            in("rsi") a2, in("rdx") a3, in("r10") a4, lateout("rcx") _, lateout("r11") _,
            options(nostack));
    }
    ret
}
