//! ptrace(2) wrappers: seize/interrupt/detach, register sets, signal masks and queues, rseq
//! configuration, and wait. Only mechanics here; the policy of who is seized when lives in
//! `dump::seize` and `restore`.

use super::{check, SysError, SysResult};

/// `PTRACE_GET_RSEQ_CONFIGURATION` (Linux 5.13).
pub const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
/// `NT_X86_XSTATE`.
pub const NT_X86_XSTATE: libc::c_int = 0x202;
/// `PTRACE_EVENT_STOP`.
pub const PTRACE_EVENT_STOP: i32 = 128;

/// `struct ptrace_rseq_configuration`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct RseqConfiguration {
    /// Address of the registered `struct rseq`.
    pub rseq_abi_pointer: u64,
    /// Registered length.
    pub rseq_abi_size: u32,
    /// Abort signature.
    pub signature: u32,
    /// Registration flags.
    pub flags: u32,
    /// Padding.
    pub pad: u32,
}

/// `struct ptrace_peeksiginfo_args`.
#[repr(C)]
struct PeekSiginfoArgs {
    off: u64,
    flags: u32,
    nr: i32,
}

/// `PTRACE_PEEKSIGINFO_SHARED`.
const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;

fn ptrace(
    call: &'static str,
    req: libc::c_uint,
    pid: i32,
    addr: usize,
    data: usize,
) -> SysResult<libc::c_long> {
    // SAFETY: every caller passes addr/data that are valid for the request (pointers to live,
    // correctly sized buffers, or plain integers).
    let ret = unsafe { libc::ptrace(req, pid, addr, data) };
    check(call, ret)
}

/// PTRACE_SEIZE with the given options.
pub fn seize(pid: i32, options: i32) -> SysResult<()> {
    ptrace("PTRACE_SEIZE", libc::PTRACE_SEIZE, pid, 0, options as usize).map(drop)
}

/// PTRACE_INTERRUPT: stop a seized task.
pub fn interrupt(pid: i32) -> SysResult<()> {
    ptrace("PTRACE_INTERRUPT", libc::PTRACE_INTERRUPT, pid, 0, 0).map(drop)
}

/// PTRACE_DETACH, delivering `sig` (0 for none).
pub fn detach(pid: i32, sig: i32) -> SysResult<()> {
    ptrace("PTRACE_DETACH", libc::PTRACE_DETACH, pid, 0, sig as usize).map(drop)
}

/// PTRACE_CONT, delivering `sig`.
pub fn cont(pid: i32, sig: i32) -> SysResult<()> {
    ptrace("PTRACE_CONT", libc::PTRACE_CONT, pid, 0, sig as usize).map(drop)
}

/// PTRACE_SYSCALL: resume until the next syscall entry or exit.
pub fn syscall(pid: i32, sig: i32) -> SysResult<()> {
    ptrace("PTRACE_SYSCALL", libc::PTRACE_SYSCALL, pid, 0, sig as usize).map(drop)
}

/// PTRACE_SINGLESTEP: resume for one instruction (over a `syscall`, until the call returns).
pub fn singlestep(pid: i32, sig: i32) -> SysResult<()> {
    ptrace(
        "PTRACE_SINGLESTEP",
        libc::PTRACE_SINGLESTEP,
        pid,
        0,
        sig as usize,
    )
    .map(drop)
}

/// The `si_code` of a raw siginfo from [`get_siginfo`].
pub fn siginfo_code(info: &[u8; 128]) -> i32 {
    i32::from_ne_bytes([info[8], info[9], info[10], info[11]])
}

/// PTRACE_GETSIGINFO: the raw 128-byte siginfo of the signal a tracee stopped with.
pub fn get_siginfo(pid: i32) -> SysResult<[u8; 128]> {
    let mut buf = [0u8; 128];
    // SAFETY: buf is a valid out-buffer of sizeof(siginfo_t) = 128 bytes.
    let ret = unsafe {
        libc::ptrace(
            libc::PTRACE_GETSIGINFO,
            pid,
            0usize,
            buf.as_mut_ptr() as usize,
        )
    };
    check("PTRACE_GETSIGINFO", ret)?;
    Ok(buf)
}

/// PTRACE_SETOPTIONS.
pub fn set_options(pid: i32, options: i32) -> SysResult<()> {
    ptrace(
        "PTRACE_SETOPTIONS",
        libc::PTRACE_SETOPTIONS,
        pid,
        0,
        options as usize,
    )
    .map(drop)
}

/// PTRACE_GETREGS.
pub fn get_regs(pid: i32) -> SysResult<libc::user_regs_struct> {
    // SAFETY: user_regs_struct is plain old data; all-zero is a valid value.
    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    ptrace(
        "PTRACE_GETREGS",
        libc::PTRACE_GETREGS,
        pid,
        0,
        &mut regs as *mut _ as usize,
    )?;
    Ok(regs)
}

/// PTRACE_SETREGS.
pub fn set_regs(pid: i32, regs: &libc::user_regs_struct) -> SysResult<()> {
    ptrace(
        "PTRACE_SETREGS",
        libc::PTRACE_SETREGS,
        pid,
        0,
        regs as *const _ as usize,
    )
    .map(drop)
}

/// PTRACE_GETREGSET NT_X86_XSTATE: the whole xsave area, as long as the kernel returns.
pub fn get_xstate(pid: i32) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    ptrace(
        "PTRACE_GETREGSET(NT_X86_XSTATE)",
        libc::PTRACE_GETREGSET,
        pid,
        NT_X86_XSTATE as usize,
        &mut iov as *mut _ as usize,
    )?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

/// PTRACE_SETREGSET NT_X86_XSTATE.
pub fn set_xstate(pid: i32, xstate: &[u8]) -> SysResult<()> {
    let mut copy = xstate.to_vec();
    let mut iov = libc::iovec {
        iov_base: copy.as_mut_ptr().cast(),
        iov_len: copy.len(),
    };
    ptrace(
        "PTRACE_SETREGSET(NT_X86_XSTATE)",
        libc::PTRACE_SETREGSET,
        pid,
        NT_X86_XSTATE as usize,
        &mut iov as *mut _ as usize,
    )
    .map(drop)
}

/// PTRACE_GETSIGMASK.
pub fn get_sigmask(pid: i32) -> SysResult<u64> {
    let mut mask: u64 = 0;
    ptrace(
        "PTRACE_GETSIGMASK",
        libc::PTRACE_GETSIGMASK,
        pid,
        8,
        &mut mask as *mut u64 as usize,
    )?;
    Ok(mask)
}

/// PTRACE_SETSIGMASK.
pub fn set_sigmask(pid: i32, mask: u64) -> SysResult<()> {
    ptrace(
        "PTRACE_SETSIGMASK",
        libc::PTRACE_SETSIGMASK,
        pid,
        8,
        &mask as *const u64 as usize,
    )
    .map(drop)
}

/// PTRACE_PEEKSIGINFO: every pending signal, private (`shared == false`) or process-wide.
/// Each entry is the raw 128-byte siginfo.
pub fn peek_siginfo(pid: i32, shared: bool) -> SysResult<Vec<[u8; 128]>> {
    let mut out = Vec::new();
    loop {
        let args = PeekSiginfoArgs {
            off: out.len() as u64,
            flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 },
            nr: 32,
        };
        let mut buf = [[0u8; 128]; 32];
        let n = ptrace(
            "PTRACE_PEEKSIGINFO",
            libc::PTRACE_PEEKSIGINFO,
            pid,
            &args as *const _ as usize,
            buf.as_mut_ptr() as usize,
        )?;
        if n <= 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    Ok(out)
}

/// PTRACE_GET_RSEQ_CONFIGURATION. Returns a zeroed configuration when none is registered.
pub fn get_rseq(pid: i32) -> SysResult<RseqConfiguration> {
    let mut conf = RseqConfiguration::default();
    ptrace(
        "PTRACE_GET_RSEQ_CONFIGURATION",
        PTRACE_GET_RSEQ_CONFIGURATION,
        pid,
        std::mem::size_of::<RseqConfiguration>(),
        &mut conf as *mut _ as usize,
    )?;
    Ok(conf)
}

/// How a traced task stopped or ended, from waitpid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStatus {
    /// Exited with a code.
    Exited(i32),
    /// Killed by a signal.
    Signaled(i32),
    /// Stopped: the raw status `>> 8` (signal in the low byte, ptrace event above).
    Stopped { sig: i32, event: i32 },
    /// Continued (WCONTINUED).
    Continued,
}

/// waitpid(2) with `__WALL` added. Returns None for WNOHANG with nothing to report.
pub fn wait(pid: i32, flags: i32) -> SysResult<Option<(i32, WaitStatus)>> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        let ret = unsafe { libc::waitpid(pid, &mut status, flags | libc::__WALL) };
        if ret == -1 {
            let err = SysError::last("waitpid");
            if err.errno == libc::EINTR {
                continue;
            }
            return Err(err);
        }
        if ret == 0 {
            return Ok(None);
        }
        return Ok(Some((ret, decode_status(status))));
    }
}

/// Decodes a waitpid status word.
pub fn decode_status(status: i32) -> WaitStatus {
    if libc::WIFEXITED(status) {
        WaitStatus::Exited(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        WaitStatus::Signaled(libc::WTERMSIG(status))
    } else if libc::WIFSTOPPED(status) {
        WaitStatus::Stopped {
            sig: libc::WSTOPSIG(status),
            event: (status >> 16) & 0xff,
        }
    } else {
        WaitStatus::Continued
    }
}

/// Sends a signal to one thread.
pub fn tgkill(tgid: i32, tid: i32, sig: i32) -> SysResult<()> {
    // SAFETY: plain syscall with integer arguments.
    let ret = unsafe { libc::syscall(libc::SYS_tgkill, tgid, tid, sig) };
    check("tgkill", ret).map(drop)
}

/// Turns a wait status that is not the expected stop into an error.
pub fn unexpected(call: &'static str) -> SysError {
    SysError::from_errno(call, libc::ESRCH)
}
