//! Per-task and per-process kernel state of a restore child, set with remote syscalls: signal
//! actions, itimers, POSIX timers (with their original ids), sigaltstack, clear_child_tid,
//! robust list, rseq, pending signals, credentials; and the final registers with the syscall
//! restart rewound the way the kernel would have done it.

use super::remote_ctx::{Call, Ctx, Le};
use super::{ProcessImage, RestoreError};
use crate::proto::{TaskCore, UserRegs};

/// prctl `PR_TIMER_CREATE_RESTORE_IDS` (Linux 6.15) and its `ON`/`OFF` arguments.
const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const PR_TIMER_CREATE_RESTORE_IDS_ON: u64 = 1;
const PR_TIMER_CREATE_RESTORE_IDS_OFF: u64 = 0;

/// Kernel-internal syscall restart codes, as seen in rax of a task stopped inside a syscall.
const ERESTARTSYS: i64 = -512;
const ERESTARTNOINTR: i64 = -513;
const ERESTARTNOHAND: i64 = -514;
const ERESTART_RESTARTBLOCK: i64 = -516;

/// Signal actions, for every signal the dump recorded. (Like the other settings here that
/// only need to succeed, they are deferred: see [`Ctx::defer`].)
pub fn restore_sigactions(ctx: &mut Ctx, img: &ProcessImage) -> Result<(), RestoreError> {
    let calls = img
        .core
        .sigactions
        .iter()
        .filter(|a| a.signo as i32 != libc::SIGKILL && a.signo as i32 != libc::SIGSTOP)
        .map(|a| {
            let act = Le::default()
                .u64(a.handler)
                .u64(a.flags)
                .u64(a.restorer)
                .u64(a.mask);
            Call::with_data(
                format!("rt_sigaction({})", a.signo),
                libc::SYS_rt_sigaction,
                [a.signo as u64, 0, 0, 8, 0, 0],
                1,
                act.0,
            )
        })
        .collect();
    ctx.defer(calls)
}

/// Whether the checkpoint has SIGTRAP's action at the default, so that remote calls made
/// without the stubs may single-step (see `RemoteTask::set_single_step`).
pub fn sigtrap_is_default(img: &ProcessImage) -> bool {
    img.core
        .sigactions
        .iter()
        .any(|a| a.signo as i32 == libc::SIGTRAP && a.handler == 0)
}

/// The three itimers.
pub fn restore_itimers(ctx: &mut Ctx, img: &ProcessImage) -> Result<(), RestoreError> {
    let mut calls = Vec::new();
    for t in &img.core.itimers {
        if t.value_us == 0 && t.interval_us == 0 {
            continue;
        }
        // A periodic ITIMER_REAL that has fired but whose SIGALRM was not dequeued yet reads
        // as value 0: the kernel re-arms it only when that signal is dequeued. The signal is
        // re-queued with the pending ones; arm the timer one interval ahead, which is where
        // the kernel would have put it.
        let value_us = if t.value_us == 0 {
            t.interval_us
        } else {
            t.value_us
        };
        let v = Le::default()
            .u64(t.interval_us / 1_000_000)
            .u64(t.interval_us % 1_000_000)
            .u64(value_us / 1_000_000)
            .u64(value_us % 1_000_000);
        calls.push(Call::with_data(
            format!("setitimer({})", t.which),
            libc::SYS_setitimer,
            [t.which as u64, 0, 0, 0, 0, 0],
            1,
            v.0,
        ));
    }
    ctx.defer(calls)
}

/// POSIX timers, recreated with their original ids.
pub fn restore_posix_timers(ctx: &mut Ctx, img: &ProcessImage) -> Result<(), RestoreError> {
    if img.core.posix_timers.is_empty() {
        return Ok(());
    }
    let mut timers = img.core.posix_timers.clone();
    timers.sort_by_key(|t| t.id);
    let restore_ids = ctx
        .rt
        .syscall_raw(
            libc::SYS_prctl,
            [
                PR_TIMER_CREATE_RESTORE_IDS,
                PR_TIMER_CREATE_RESTORE_IDS_ON,
                0,
                0,
                0,
                0,
            ],
        )
        .map_err(RestoreError::from)?
        == 0;
    for t in &timers {
        let sev = Le::default()
            .u64(t.sigev_value)
            .u32(t.sigev_signo as u32)
            .u32(t.sigev_notify as u32)
            .u32(t.notify_tid as u32)
            .pad_to(64);
        let sev_addr = ctx.put(0, &sev.0)?;
        let id_addr = ctx.put(128, &(t.id as u32).to_le_bytes())?;
        let id = t.id;
        ctx.sys(
            || format!("timer_create(id {id}, clock {})", t.clock_id),
            libc::SYS_timer_create,
            [t.clock_id as u64, sev_addr, id_addr, 0, 0, 0],
        )?;
        let got = ctx.get(128, 4)?;
        let got = i32::from_le_bytes([got[0], got[1], got[2], got[3]]);
        if got != t.id {
            return Err(RestoreError::Invalid {
                pid: ctx.pid(),
                what: format!(
                    "POSIX timer {} came back as id {got}{}",
                    t.id,
                    if restore_ids {
                        ""
                    } else {
                        " (kernel lacks PR_TIMER_CREATE_RESTORE_IDS)"
                    }
                ),
            });
        }
        if t.value_ns != 0 {
            let its = Le::default()
                .u64(t.interval_ns / 1_000_000_000)
                .u64(t.interval_ns % 1_000_000_000)
                .u64(t.value_ns / 1_000_000_000)
                .u64(t.value_ns % 1_000_000_000);
            let p = ctx.put(0, &its.0)?;
            ctx.sys(
                || format!("timer_settime({id})"),
                libc::SYS_timer_settime,
                [t.id as u64, 0, p, 0, 0, 0],
            )?;
        }
    }
    if restore_ids {
        ctx.sys(
            || "prctl(PR_TIMER_CREATE_RESTORE_IDS, OFF)".into(),
            libc::SYS_prctl,
            [
                PR_TIMER_CREATE_RESTORE_IDS,
                PR_TIMER_CREATE_RESTORE_IDS_OFF,
                0,
                0,
                0,
                0,
            ],
        )?;
    }
    Ok(())
}

/// sigaltstack, clear_child_tid, robust list and rseq of one task (run in that task).
pub fn restore_thread_bits(ctx: &mut Ctx, t: &TaskCore) -> Result<(), RestoreError> {
    let mut calls = Vec::new();
    if t.altstack_flags & libc::SS_DISABLE == 0 && t.altstack_size != 0 {
        let ss = Le::default()
            .u64(t.altstack_sp)
            .u32(0)
            .u32(0)
            .u64(t.altstack_size);
        calls.push(Call::with_data(
            format!("sigaltstack({:#x}, {})", t.altstack_sp, t.altstack_size),
            libc::SYS_sigaltstack,
            [0; 6],
            0,
            ss.0,
        ));
    }
    calls.push(Call::new(
        format!("set_tid_address({:#x})", t.clear_tid_addr),
        libc::SYS_set_tid_address,
        [t.clear_tid_addr, 0, 0, 0, 0, 0],
    ));
    if t.robust_list != 0 {
        calls.push(Call::new(
            format!("set_robust_list({:#x})", t.robust_list),
            libc::SYS_set_robust_list,
            [t.robust_list, t.robust_list_len, 0, 0, 0, 0],
        ));
    }
    if let Some(r) = t.rseq.as_ref().filter(|r| r.ptr != 0) {
        calls.push(Call::new(
            format!("rseq({:#x})", r.ptr),
            libc::SYS_rseq,
            [r.ptr, r.len as u64, 0, r.sig as u64, 0, 0],
        ));
    }
    ctx.defer(calls)
}

/// Whether any pending signal to queue, process-wide or of a thread, is SIGCONT.
pub fn queues_sigcont(img: &ProcessImage) -> bool {
    let is_cont = |s: &crate::proto::SigInfo| {
        s.raw
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(i32::from_le_bytes)
            == Some(libc::SIGCONT)
    };
    img.core.shared_pending.iter().any(is_cont)
        || img.tasks.iter().any(|t| t.pending.iter().any(is_cont))
}

/// Re-queues one created thread's private pending signals.
pub fn restore_pending_private(
    ctx: &mut Ctx,
    img: &ProcessImage,
    t: &TaskCore,
) -> Result<(), RestoreError> {
    queue_signals(ctx, img.pid(), t.tid, false, &t.pending)
}

/// Re-queues pending signals: the process-wide ones and one task's private ones. All
/// signals are blocked while we drive the task, so they stay pending until the real mask is
/// set.
pub fn restore_pending(
    ctx: &mut Ctx,
    img: &ProcessImage,
    t: &TaskCore,
) -> Result<(), RestoreError> {
    queue_signals(ctx, img.pid(), t.tid, true, &img.core.shared_pending)?;
    queue_signals(ctx, img.pid(), t.tid, false, &t.pending)
}

fn queue_signals(
    ctx: &mut Ctx,
    pid: i32,
    tid: i32,
    shared: bool,
    sigs: &[crate::proto::SigInfo],
) -> Result<(), RestoreError> {
    for s in sigs {
        if s.raw.len() != 128 {
            return Err(RestoreError::Invalid {
                pid,
                what: format!("pending siginfo of {} bytes", s.raw.len()),
            });
        }
        let signo = u32::from_le_bytes([s.raw[0], s.raw[1], s.raw[2], s.raw[3]]) as u64;
        let p = ctx.put(0, &s.raw)?;
        if shared {
            ctx.sys(
                || format!("rt_sigqueueinfo({signo})"),
                libc::SYS_rt_sigqueueinfo,
                [pid as u64, signo, p, 0, 0, 0],
            )?;
        } else {
            ctx.sys(
                || format!("rt_tgsigqueueinfo({tid}, {signo})"),
                libc::SYS_rt_tgsigqueueinfo,
                [pid as u64, tid as u64, signo, p, 0, 0],
            )?;
        }
    }
    Ok(())
}

/// uids, gids and supplementary groups, when they differ from the restorer's (root).
pub fn restore_creds(ctx: &mut Ctx, img: &ProcessImage) -> Result<(), RestoreError> {
    let Some(c) = img.core.creds.as_ref() else {
        return Ok(());
    };
    if c.uids.len() != 4 || c.gids.len() != 4 {
        return Err(RestoreError::Invalid {
            pid: img.pid(),
            what: "credentials need 4 uids and 4 gids".into(),
        });
    }
    let mut groups = Le::default();
    for g in &c.groups {
        groups = groups.u32(*g);
    }
    // In this order (the uids last, while the task may still change its gids), as one batch.
    let mut calls = vec![Call::with_data(
        "setgroups".into(),
        libc::SYS_setgroups,
        [c.groups.len() as u64, 0, 0, 0, 0, 0],
        1,
        groups.0,
    )];
    calls.push(Call::new(
        format!("setresgid({:?})", &c.gids[..3]),
        libc::SYS_setresgid,
        [
            c.gids[0] as u64,
            c.gids[1] as u64,
            c.gids[2] as u64,
            0,
            0,
            0,
        ],
    ));
    calls.push(Call::new(
        format!("setfsgid({})", c.gids[3]),
        libc::SYS_setfsgid,
        [c.gids[3] as u64, 0, 0, 0, 0, 0],
    ));
    if c.uids.iter().any(|&u| u != 0) {
        calls.push(Call::new(
            format!("setresuid({:?})", &c.uids[..3]),
            libc::SYS_setresuid,
            [
                c.uids[0] as u64,
                c.uids[1] as u64,
                c.uids[2] as u64,
                0,
                0,
                0,
            ],
        ));
        calls.push(Call::new(
            format!("setfsuid({})", c.uids[3]),
            libc::SYS_setfsuid,
            [c.uids[3] as u64, 0, 0, 0, 0, 0],
        ));
    }
    ctx.defer(calls)
}

/// Converts saved registers to the kernel struct, rewinding an interrupted syscall the way the
/// kernel's signal path would have: ERESTARTSYS/NOINTR/NOHAND restart the same syscall;
/// ERESTART_RESTARTBLOCK (whose restart block is kernel memory we cannot carry) returns EINTR,
/// as a signal would make it do. `orig_rax` is set to -1 so no further restart logic applies.
pub fn final_regs(r: &UserRegs) -> libc::user_regs_struct {
    let mut k = libc::user_regs_struct::from(r);
    if (k.orig_rax as i64) >= 0 {
        match k.rax as i64 {
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                k.rax = k.orig_rax;
                k.rip -= 2;
            }
            ERESTART_RESTARTBLOCK => k.rax = (-libc::EINTR) as i64 as u64,
            _ => {}
        }
    }
    k.orig_rax = u64::MAX;
    k
}

/// What a restore process that exec'd its stub (see child.rs) gets back of what execve reset:
/// its name, and the close-on-exec flag of the fds that had it (all of them went through the
/// execve open). Deferred to the next stop.
pub fn after_exec(ctx: &mut Ctx, img: &ProcessImage) -> Result<(), RestoreError> {
    let mut calls: Vec<Call> = img
        .fds
        .iter()
        .filter(|f| f.cloexec)
        .map(|f| {
            Call::new(
                format!("fcntl({}, F_SETFD, FD_CLOEXEC)", f.fd),
                libc::SYS_fcntl,
                [
                    f.fd as u64,
                    libc::F_SETFD as u64,
                    libc::FD_CLOEXEC as u64,
                    0,
                    0,
                    0,
                ],
            )
        })
        .collect();
    if let Some(comm) = img
        .tasks
        .first()
        .map(|t| t.comm.as_bytes())
        .filter(|c| !c.is_empty())
    {
        let mut name = comm[..comm.len().min(15)].to_vec();
        name.push(0);
        calls.push(Call::with_data(
            "prctl(PR_SET_NAME)".into(),
            libc::SYS_prctl,
            [libc::PR_SET_NAME as u64, 0, 0, 0, 0, 0],
            1,
            name,
        ));
    }
    ctx.defer(calls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_codes_are_rewound() {
        let mut r = UserRegs {
            rip: 0x1002,
            orig_rax: 35,
            rax: ERESTARTNOHAND as u64,
            ..Default::default()
        };
        let k = final_regs(&r);
        assert_eq!((k.rip, k.rax, k.orig_rax), (0x1000, 35, u64::MAX));
        r.rax = ERESTART_RESTARTBLOCK as u64;
        let k = final_regs(&r);
        assert_eq!((k.rip, k.rax as i64), (0x1002, -(libc::EINTR as i64)));
        r.orig_rax = u64::MAX;
        r.rax = 7;
        let k = final_regs(&r);
        assert_eq!((k.rip, k.rax), (0x1002, 7));
    }
}
