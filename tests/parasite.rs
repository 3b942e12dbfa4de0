//! Integration tests of the parasite against a real process: a small C workload sets up signal
//! actions, itimers, a POSIX timer, an alternate stack, umask, a tid address and memory with a
//! known pattern (zero pages, a PROT_NONE and a write-only region); the test seizes it, infects
//! it, reads all of it back through the parasite, dumps its pages, cures it and checks that
//! nothing of the task changed (maps, fds, registers, xsave area, signal mask, memory) and that
//! it keeps running. A crash of the blob is provoked too: the task must survive it.
//!
//! `speed_1gib` (ignored; run with `cargo test --release --test parasite -- --ignored
//! --nocapture`) measures how fast `dump_pages` streams 1 GiB.

use cryo::dump::handback::Handback;
use cryo::infect::{InfectError, PageRunReq, Parasite};
use cryo::sys::{proc_ctl, ptrace};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WORKLOAD_C: &str = r#"/* Workload for tests/parasite.rs: sets up per-task state the parasite must read back, fills
 * memory with a known pattern, prints where everything is, then counts forever. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile uint64_t counter;
static int tid_word;

static void on_signal(int sig) { (void)sig; }

/* Page i of the big region: every 7th page zero, every 11th page zero but its last byte,
 * the rest a pattern of i and the word index. */
static void fill_page(uint64_t *p, uint64_t i) {
    if (i % 7 == 3) {
        memset(p, 0, 4096);
        return;
    }
    if (i % 11 == 5) {
        memset(p, 0, 4096);
        ((unsigned char *)p)[4095] = 1;
        return;
    }
    for (uint64_t w = 0; w < 512; w++)
        p[w] = (i * 0x9E3779B97F4A7C15ull) ^ (w << 32) ^ w;
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGUSR2);
    sigaddset(&sa.sa_mask, SIGTERM);
    if (sigaction(SIGUSR1, &sa, NULL)) return 2;
    sa.sa_flags = 0;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGALRM, &sa, NULL)) return 2;
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTRAP, SIG_IGN); /* the parasite must not disturb an ignored SIGTRAP */

    struct itimerval it = {{10, 250000}, {100, 0}};
    if (setitimer(ITIMER_REAL, &it, NULL)) return 3;

    timer_t timer;
    struct sigevent sev;
    memset(&sev, 0, sizeof sev);
    sev.sigev_notify = SIGEV_SIGNAL;
    sev.sigev_signo = SIGUSR1;
    if (timer_create(CLOCK_MONOTONIC, &sev, &timer)) return 4;
    struct itimerspec its = {{7, 500}, {50, 0}};
    if (timer_settime(timer, 0, &its, NULL)) return 4;

    size_t alt_size = 65536;
    void *alt = malloc(alt_size);
    stack_t ss = {.ss_sp = alt, .ss_flags = 0, .ss_size = alt_size};
    if (sigaltstack(&ss, NULL)) return 5;

    umask(027);
    syscall(SYS_set_tid_address, &tid_word);

    size_t len = mib << 20;
    uint64_t *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) return 6;
    for (uint64_t i = 0; i < len / 4096; i++) fill_page(mem + i * 512, i);

    /* 16 pages, the first 8 with data, then PROT_NONE. */
    unsigned char *none = mmap(NULL, 16 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (none == MAP_FAILED) return 7;
    for (int i = 0; i < 16; i++) none[i * 4096 + 17] = (i < 8) ? (unsigned char)(0xA0 + i) : 0;
    if (mprotect(none, 16 * 4096, PROT_NONE)) return 7;

    /* 4 write-only pages, 2 with data. */
    unsigned char *wo = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (wo == MAP_FAILED) return 8;
    memset(wo, 0, 4 * 4096);
    wo[1] = 0x5a;
    wo[2 * 4096 + 4000] = 0xa5;
    if (mprotect(wo, 4 * 4096, PROT_WRITE)) return 8;

    /* 1092 touched pages, all zero but pages 40 and 51: runs of 40, 10 and 1040 zero pages.
     * Page 60 is 2 MiB-aligned, so the long run reaches a 2 MiB boundary 8 pages after its
     * start and its last one 8 pages before its end (the blob frees long runs at these
     * boundaries). A PROT_NONE page on each side keeps the mapping from merging. */
    size_t zlen = 1092 * 4096, slack = 2 << 20, rawlen = zlen + slack + 2 * 4096;
    unsigned char *raw = mmap(NULL, rawlen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return 10;
    uintptr_t b = ((uintptr_t)raw + 61 * 4096 + slack - 1) & ~(uintptr_t)(slack - 1);
    volatile unsigned char *zeros = (unsigned char *)(b - 60 * 4096);
    unsigned char *before = (unsigned char *)zeros - 4096, *after = (unsigned char *)zeros + zlen;
    if (before > raw && munmap(raw, before - raw)) return 10;
    size_t tail = raw + rawlen - after - 4096;
    if (tail && munmap(after + 4096, tail)) return 10;
    if (mprotect(before, 4096, PROT_NONE) || mprotect(after, 4096, PROT_NONE)) return 10;
    for (size_t i = 0; i < 1092; i++) zeros[i * 4096] = 0;
    zeros[40 * 4096 + 7] = 0x77;
    zeros[51 * 4096 + 9] = 0x99;

    /* A one-page hole between two mappings. */
    unsigned char *h = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (h == MAP_FAILED) return 9;
    if (munmap(h + 4096, 4096)) return 9;

    printf("mem=%lx len=%lx none=%lx wo=%lx zeros=%lx hole=%lx alt=%lx altsize=%lx tidaddr=%lx "
           "timer=%ld counter=%lx usr1=%lx alrm=%lx\n",
           (unsigned long)mem, (unsigned long)len, (unsigned long)none, (unsigned long)wo,
           (unsigned long)zeros,
           (unsigned long)(h + 4096), (unsigned long)alt, (unsigned long)alt_size,
           (unsigned long)&tid_word, (long)(intptr_t)timer, (unsigned long)&counter,
           (unsigned long)on_signal, (unsigned long)on_signal);
    fflush(stdout);

    struct timespec ms = {0, 1000000};
    for (;;) {
        counter++;
        nanosleep(&ms, NULL);
    }
}
"#;

/// Builds the workload once per test binary run (in a temp dir); None when there is no C
/// compiler.
fn workload_binary(dir: &Path) -> Option<PathBuf> {
    let src = dir.join("workload.c");
    std::fs::write(&src, WORKLOAD_C).expect("write workload source");
    let bin = dir.join("workload");
    let out = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .arg("-lrt")
        .output();
    match out {
        Ok(o) if o.status.success() => Some(bin),
        Ok(o) => panic!("cc failed: {}", String::from_utf8_lossy(&o.stderr)),
        Err(e) => {
            eprintln!("SKIPPED: no C compiler (cc): {e}");
            None
        }
    }
}

/// A started workload; killed and reaped on drop (only this child, by its pid).
struct Workload {
    child: Child,
    info: BTreeMap<String, u64>,
}

impl Workload {
    fn start(bin: &Path, mib: u64) -> Workload {
        proc_ctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
        let mut child = Command::new(bin)
            .arg(mib.to_string())
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("start workload");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read workload line");
        let mut info = BTreeMap::new();
        for kv in line.split_whitespace() {
            let (k, v) = kv.split_once('=').expect("key=value");
            let v = if k == "timer" {
                v.parse::<u64>().expect("timer id")
            } else {
                u64::from_str_radix(v, 16).expect("hex value")
            };
            info.insert(k.to_string(), v);
        }
        assert!(info.contains_key("mem"), "workload said: {line}");
        Workload { child, info }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn get(&self, k: &str) -> u64 {
        self.info[k]
    }

    fn counter(&self) -> u64 {
        let mut b = [0u8; 8];
        std::fs::File::open(format!("/proc/{}/mem", self.pid()))
            .expect("open mem")
            .read_exact_at(&mut b, self.get("counter"))
            .expect("read counter");
        u64::from_ne_bytes(b)
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = proc_ctl::kill(self.pid(), libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Builds the workload, starts it with `mib` MiB of patterned memory, seizes it and takes its
/// snapshot; None when there is no C compiler. The temp dir holds the binary: keep it until
/// the workload is done.
fn seized_workload(mib: u64) -> Option<(tempfile::TempDir, Workload, Snapshot)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = workload_binary(dir.path())?;
    let w = Workload::start(&bin, mib);
    seize(w.pid());
    let before = snapshot(w.pid());
    Some((dir, w, before))
}

/// Checks that the seized workload is as `before` (after its parasite was cured), detaches it
/// and checks that it runs on.
fn detach_unchanged(w: &Workload, before: &Snapshot) {
    let after = snapshot(w.pid());
    assert_same(before, &after);
    ptrace::detach(w.pid(), 0).expect("detach");
    assert_runs(w);
}

/// Seizes and interrupts `pid`; returns when it is in the interrupt stop.
fn seize(pid: i32) {
    ptrace::seize(pid, 0).expect("PTRACE_SEIZE");
    ptrace::interrupt(pid).expect("PTRACE_INTERRUPT");
    loop {
        let (_, st) = ptrace::wait(pid, 0).expect("wait").expect("status");
        match st {
            ptrace::WaitStatus::Stopped { event, .. } if event == ptrace::PTRACE_EVENT_STOP => {
                return
            }
            // A signal on its way in: let it through and wait for the interrupt stop.
            ptrace::WaitStatus::Stopped { sig, event: 0 } => ptrace::cont(pid, sig).expect("cont"),
            other => panic!("unexpected stop while seizing: {other:?}"),
        }
    }
}

/// Everything about the task that the parasite must leave as it found it.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    maps: String,
    fds: Vec<(String, String)>,
    regs: String,
    sigmask: u64,
    xstate: Vec<u8>,
    status_sig: Vec<String>,
    memory: Vec<(u64, u64, u32)>,
}

fn snapshot(pid: i32) -> Snapshot {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mut fds: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .map(|e| {
            let e = e.expect("fd entry");
            let target = std::fs::read_link(e.path()).expect("fd link");
            (
                e.file_name().to_string_lossy().into_owned(),
                target.to_string_lossy().into_owned(),
            )
        })
        .collect();
    fds.sort();
    let regs = format!("{:?}", RegsDbg(ptrace::get_regs(pid).expect("regs")));
    let sigmask = ptrace::get_sigmask(pid).expect("sigmask");
    let xstate = ptrace::get_xstate(pid).expect("xstate");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let status_sig = status
        .lines()
        .filter(|l| {
            (l.starts_with("Sig") && !l.starts_with("SigQ"))
                || l.starts_with("ShdPnd")
                || l.starts_with("Umask")
        })
        .map(String::from)
        .collect();
    // crc32c of every readable, writable mapping, the rseq area masked out (the kernel
    // rewrites its cpu fields whenever the task returns to user space).
    let rseq = ptrace::get_rseq(pid).expect("rseq");
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("mem");
    let mut memory = Vec::new();
    for line in maps.lines() {
        let mut it = line.split_whitespace();
        let range = it.next().expect("range");
        let perms = it.next().expect("perms");
        if !perms.starts_with("rw") {
            continue;
        }
        let (s, e) = range.split_once('-').expect("range");
        let (s, e) = (
            u64::from_str_radix(s, 16).expect("start"),
            u64::from_str_radix(e, 16).expect("end"),
        );
        let mut buf = vec![0u8; (e - s) as usize];
        mem.read_exact_at(&mut buf, s).expect("read mapping");
        let r = rseq.rseq_abi_pointer;
        if r >= s && r < e {
            let at = (r - s) as usize;
            let n = (rseq.rseq_abi_size as usize).max(32).min(buf.len() - at);
            buf[at..at + n].fill(0);
        }
        memory.push((s, e, crc32c::crc32c(&buf)));
    }
    Snapshot {
        maps,
        fds,
        regs,
        sigmask,
        xstate,
        status_sig,
        memory,
    }
}

struct RegsDbg(libc::user_regs_struct);

impl std::fmt::Debug for RegsDbg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.0;
        write!(
            f,
            "rip={:x} rsp={:x} rax={:x} orig_rax={:x} rbx={:x} rcx={:x} rdx={:x} rsi={:x} rdi={:x} \
             rbp={:x} r8={:x} r9={:x} r10={:x} r11={:x} r12={:x} r13={:x} r14={:x} r15={:x} \
             eflags={:x} cs={:x} ss={:x} fs_base={:x} gs_base={:x}",
            r.rip, r.rsp, r.rax, r.orig_rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8,
            r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.eflags, r.cs, r.ss, r.fs_base,
            r.gs_base
        )
    }
}

fn assert_same(before: &Snapshot, after: &Snapshot) {
    assert_eq!(before.maps, after.maps, "maps changed");
    assert_eq!(before.fds, after.fds, "fds changed");
    assert_eq!(before.regs, after.regs, "registers changed");
    assert_eq!(before.sigmask, after.sigmask, "signal mask changed");
    assert_eq!(before.status_sig, after.status_sig, "signal state changed");
    assert!(before.xstate == after.xstate, "xsave area changed");
    assert_eq!(before.memory, after.memory, "memory changed");
}

/// The workload keeps running after detach: its counter moves.
fn assert_runs(w: &Workload) {
    let c0 = w.counter();
    let t = Instant::now();
    while w.counter() == c0 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "workload does not run"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut status = String::new();
    std::fs::File::open(format!("/proc/{}/status", w.pid()))
        .expect("status")
        .read_to_string(&mut status)
        .expect("status");
    assert!(!status.contains("State:\tZ"), "workload died");
}

/// The maps line (start, end, perms) holding `addr`.
fn vma_of(maps: &str, addr: u64) -> (u64, u64, String) {
    for line in maps.lines() {
        let mut it = line.split_whitespace();
        let (range, perms) = (it.next().expect("range"), it.next().expect("perms"));
        let (s, e) = range.split_once('-').expect("range");
        let (s, e) = (
            u64::from_str_radix(s, 16).expect("start"),
            u64::from_str_radix(e, 16).expect("end"),
        );
        if (s..e).contains(&addr) {
            return (s, e, perms.to_string());
        }
    }
    panic!("no mapping holds {addr:#x}");
}

fn prot_of(perms: &str) -> u32 {
    let b = perms.as_bytes();
    let mut p = 0;
    if b[0] == b'r' {
        p |= libc::PROT_READ;
    }
    if b[1] == b'w' {
        p |= libc::PROT_WRITE;
    }
    if b[2] == b'x' {
        p |= libc::PROT_EXEC;
    }
    p as u32
}

/// Checks the dumped runs against the task's memory read through /proc/PID/mem: every
/// non-zero page stored once with the right bytes and crc, no zero page stored.
fn verify_dump(
    pid: i32,
    reqs: &[PageRunReq],
    runs: &[cryo::proto::PageRun],
    store: &Path,
    base: u64,
) {
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("mem");
    let store = std::fs::File::open(store).expect("store");
    let mut stored = BTreeMap::new();
    let mut expect_off = base;
    for r in runs {
        assert_eq!(r.offset % 4096, 0, "run offset aligned");
        assert_eq!(r.offset, expect_off, "runs packed in order");
        expect_off += r.nr_pages * 4096;
        let mut data = vec![0u8; (r.nr_pages * 4096) as usize];
        store
            .read_exact_at(&mut data, r.offset)
            .expect("read store");
        assert_eq!(
            crc32c::crc32c(&data),
            r.crc32c,
            "crc of run at {:#x}",
            r.vaddr
        );
        let mut live = vec![0u8; data.len()];
        mem.read_exact_at(&mut live, r.vaddr).expect("read live");
        assert!(data == live, "stored bytes of run at {:#x} differ", r.vaddr);
        for p in 0..r.nr_pages {
            assert!(
                stored.insert(r.vaddr + p * 4096, ()).is_none(),
                "page stored twice"
            );
        }
    }
    let mut page = vec![0u8; 4096];
    for q in reqs {
        for p in 0..q.nr_pages {
            let a = q.vaddr + p * 4096;
            mem.read_exact_at(&mut page, a).expect("read page");
            let zero = page.iter().all(|&b| b == 0);
            assert_eq!(stored.contains_key(&a), !zero, "page {a:#x} zero={zero}");
        }
    }
}

#[test]
fn infect_query_dump_cure() {
    let Some((dir, w, before)) = seized_workload(64) else {
        return;
    };
    let pid = w.pid();

    let mut p = Parasite::infect(pid, &before.maps).expect("infect");

    // Signal actions.
    let acts = p.sigactions().expect("sigactions");
    assert_eq!(acts.len(), 62);
    let by_sig: BTreeMap<u32, &cryo::proto::SigAction> =
        acts.iter().map(|a| (a.signo, a)).collect();
    assert!(!by_sig.contains_key(&9) && !by_sig.contains_key(&19));
    let usr1 = by_sig[&(libc::SIGUSR1 as u32)];
    assert_eq!(usr1.handler, w.get("usr1"));
    assert_ne!(usr1.flags & libc::SA_RESTART as u64, 0, "SA_RESTART");
    let want_mask = (1u64 << (libc::SIGUSR2 - 1)) | (1u64 << (libc::SIGTERM - 1));
    assert_eq!(usr1.mask, want_mask);
    assert_eq!(by_sig[&(libc::SIGALRM as u32)].handler, w.get("alrm"));
    assert_eq!(
        by_sig[&(libc::SIGPIPE as u32)].handler,
        1,
        "SIGPIPE ignored"
    );
    assert_eq!(
        by_sig[&(libc::SIGTRAP as u32)].handler,
        1,
        "SIGTRAP ignored"
    );
    assert_eq!(by_sig[&(libc::SIGINT as u32)].handler, 0, "SIGINT default");

    // itimers.
    let its = p.itimers().expect("itimers");
    assert_eq!(its.len(), 3);
    assert_eq!(its[0].which, 0);
    assert_eq!(its[0].interval_us, 10_250_000);
    assert!(
        its[0].value_us > 80_000_000 && its[0].value_us <= 100_000_000,
        "{its:?}"
    );
    assert_eq!((its[1].interval_us, its[1].value_us), (0, 0));
    assert_eq!((its[2].interval_us, its[2].value_us), (0, 0));

    // POSIX timer.
    let timer = w.get("timer") as i32;
    let t = p.posix_timers(&[timer]).expect("posix_timers");
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].0, timer);
    assert_eq!(t[0].1, 7_000_000_500);
    assert!(t[0].2 > 30_000_000_000 && t[0].2 <= 50_000_000_000, "{t:?}");
    assert_eq!(t[0].3, 0);
    match p.posix_timers(&[timer + 1000]) {
        Err(InfectError::Command { errno, addr, .. }) => {
            assert_eq!(errno, libc::EINVAL);
            assert_eq!(addr, (timer + 1000) as u64);
        }
        other => panic!("bad timer id: {other:?}"),
    }

    // The rest.
    assert_eq!(
        p.sigaltstack().expect("sigaltstack"),
        (w.get("alt"), w.get("altsize"), 0)
    );
    assert_eq!(p.umask().expect("umask"), 0o027);
    assert_eq!(p.tid_address().expect("tid address"), w.get("tidaddr"));
    // All of it, and the program break, in one run.
    let st = p.task_state().expect("task state");
    assert_eq!(st.umask, 0o027);
    assert_eq!(st.tid_address, w.get("tidaddr"));
    assert_eq!(st.altstack, (w.get("alt"), w.get("altsize"), 0));
    assert_eq!(st.sigactions, p.sigactions().expect("sigactions"));
    assert_eq!(st.itimers.len(), 3);
    let heap = before
        .maps
        .lines()
        .find(|l| l.ends_with("[heap]"))
        .and_then(|l| l.split(['-', ' ']).nth(1))
        .and_then(|e| u64::from_str_radix(e, 16).ok());
    if let Some(end) = heap {
        assert!(
            st.brk <= end && st.brk + 4096 > end - 4096,
            "brk {:#x}, heap end {end:#x}",
            st.brk
        );
    }

    // Pages: the big region, the PROT_NONE one and the write-only one.
    let (ms, me, mperm) = vma_of(&before.maps, w.get("mem"));
    assert_eq!(me - ms, w.get("len"));
    let (ns, ne, nperm) = vma_of(&before.maps, w.get("none"));
    let (ws, we, wperm) = vma_of(&before.maps, w.get("wo"));
    assert_eq!(prot_of(&nperm), 0);
    assert_eq!(prot_of(&wperm), libc::PROT_WRITE as u32);
    let mut reqs = vec![
        PageRunReq {
            vaddr: ms,
            nr_pages: (me - ms) / 4096,
            prot: prot_of(&mperm),
            free_zero: false,
            free_data: false,
        },
        PageRunReq {
            vaddr: ns,
            nr_pages: (ne - ns) / 4096,
            prot: 0,
            free_zero: false,
            free_data: false,
        },
        PageRunReq {
            vaddr: ws,
            nr_pages: (we - ws) / 4096,
            prot: libc::PROT_WRITE as u32,
            free_zero: false,
            free_data: false,
        },
    ];
    reqs.sort_by_key(|r| r.vaddr);
    let store_path = dir.path().join("pages.img");
    let mut store = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&store_path)
        .expect("page store");
    std::io::Write::write_all(&mut store, &[0xee; 100]).expect("header");
    // Streamed by the blob through pipes, whatever the size.
    p.set_direct_read_max(0);
    let before_pages = p.remote_calls();
    let runs = p.dump_pages(&reqs, &mut store).expect("dump_pages");
    assert!(runs.len() > 100);
    // Once infected, remote syscalls (the pipes' setup and closes here) take the blob's
    // one-stop gadget, not the two-stop path.
    let calls = p.remote_calls();
    assert!(calls.gadget > before_pages.gadget, "{calls:?}");
    assert_eq!(calls.direct, before_pages.direct, "{calls:?}");
    verify_dump(pid, &reqs, &runs, &store_path, 4096);
    let total: u64 = runs.iter().map(|r| r.nr_pages).sum();
    // A second dump appends after the first.
    let again = p.dump_pages(&reqs[..1], &mut store).expect("second dump");
    assert_eq!(again[0].offset, 4096 + total * 4096);

    // Small batches (many blob commands, resumed in the middle of requests) give the same runs.
    let fresh = |name: &str| {
        std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join(name))
            .expect("page store")
    };
    p.set_batch_limits(4096, 5);
    let mut small = fresh("small.img");
    let batched = p.dump_pages(&reqs, &mut small).expect("batched dump");
    let key = |r: &cryo::proto::PageRun| (r.vaddr, r.nr_pages, r.crc32c, r.offset);
    assert_eq!(
        batched.iter().map(key).collect::<Vec<_>>(),
        runs.iter()
            .map(|r| (r.vaddr, r.nr_pages, r.crc32c, r.offset - 4096))
            .collect::<Vec<_>>()
    );
    verify_dump(pid, &reqs, &batched, &dir.path().join("small.img"), 0);
    // Read by the dumper itself (as for small processes): the same runs.
    p.set_direct_read_max(u64::MAX);
    let mut direct = fresh("direct.img");
    let read = p.dump_pages(&reqs, &mut direct).expect("direct dump");
    assert_eq!(
        read.iter().map(key).collect::<Vec<_>>(),
        batched.iter().map(key).collect::<Vec<_>>()
    );
    verify_dump(pid, &reqs, &read, &dir.path().join("direct.img"), 0);
    p.set_direct_read_max(0);
    // Many small requests (3 pages each), 100 per command.
    p.set_batch_limits(100, 7);
    let split: Vec<PageRunReq> = reqs
        .iter()
        .flat_map(|r| {
            (0..r.nr_pages).step_by(3).map(move |k| PageRunReq {
                vaddr: r.vaddr + k * 4096,
                nr_pages: (r.nr_pages - k).min(3),
                prot: r.prot,
                free_zero: false,
                free_data: false,
            })
        })
        .collect();
    assert!(split.len() > 5000);
    let mut pieces = fresh("pieces.img");
    let split_runs = p.dump_pages(&split, &mut pieces).expect("split dump");
    verify_dump(pid, &split, &split_runs, &dir.path().join("pieces.img"), 0);

    // Malformed requests are refused without touching the task.
    let bad = [PageRunReq {
        vaddr: ms + 1,
        nr_pages: 1,
        prot: 3,
        free_zero: false,
        free_data: false,
    }];
    assert!(matches!(
        p.dump_pages(&bad, &mut store),
        Err(InfectError::BadRequest { .. })
    ));

    p.cure().expect("cure");
    detach_unchanged(&w, &before);
}

#[test]
fn blob_crash_is_cured_and_not_delivered() {
    let Some((_dir, w, before)) = seized_workload(1) else {
        return;
    };
    let pid = w.pid();
    let mut p = Parasite::infect(pid, &before.maps).expect("infect");
    assert_eq!(p.umask().expect("umask"), 0o027);
    p.set_direct_read_max(0);
    // A "readable" run in the hole: the blob faults on it.
    let hole = w.get("hole");
    let reqs = [PageRunReq {
        vaddr: hole,
        nr_pages: 1,
        prot: 3,
        free_zero: false,
        free_data: false,
    }];
    let mut store = tempfile::tempfile().expect("store");
    match p.dump_pages(&reqs, &mut store) {
        Err(InfectError::Crashed { signal, addr, .. }) => {
            assert_eq!(signal, libc::SIGSEGV);
            assert_eq!(addr, hole);
        }
        other => panic!("expected a crash, got {other:?}"),
    }
    // Cured already: further commands are refused, cure is a no-op.
    assert!(matches!(p.umask(), Err(InfectError::Cured { .. })));
    p.cure().expect("cure after crash");
    detach_unchanged(&w, &before);
}

/// Which of the `n` pages from `addr` of `pid` are present, from /proc/PID/pagemap.
fn present_pages(pid: i32, addr: u64, n: u64) -> Vec<bool> {
    let mut buf = vec![0u8; n as usize * 8];
    std::fs::File::open(format!("/proc/{pid}/pagemap"))
        .expect("pagemap")
        .read_exact_at(&mut buf, addr / 4096 * 8)
        .expect("read pagemap");
    buf.chunks(8)
        .map(|e| u64::from_ne_bytes(e.try_into().expect("8 bytes")) >> 63 == 1)
        .collect()
}

/// `free_zero` makes the blob give runs of at least 16 all-zero pages back to the kernel, only
/// in the runs that ask for it; the pages stored are the same, and the task's memory reads
/// the same afterwards.
#[test]
fn zero_pages_are_freed_only_where_asked() {
    let Some((_dir, w, before)) = seized_workload(1) else {
        return;
    };
    let pid = w.pid();
    let (zeros, n) = (w.get("zeros"), 1092);
    assert_eq!(
        (zeros + 60 * 4096) % (2 << 20),
        0,
        "the workload aligns page 60"
    );
    assert!(
        present_pages(pid, zeros, n).iter().all(|&p| p),
        "untouched pages"
    );
    let mut p = Parasite::infect(pid, &before.maps).expect("infect");
    p.set_direct_read_max(0);
    let req = |free_zero| {
        [PageRunReq {
            vaddr: zeros,
            nr_pages: n,
            prot: 3,
            free_zero,
            free_data: false,
        }]
    };
    let key = |runs: &[cryo::proto::PageRun]| -> Vec<(u64, u64, u32)> {
        runs.iter()
            .map(|r| (r.vaddr, r.nr_pages, r.crc32c))
            .collect()
    };
    let mut store = tempfile::tempfile().expect("store");
    let kept = p.dump_pages(&req(false), &mut store).expect("dump_pages");
    assert_eq!(p.zero_freed(), 0);
    assert!(
        present_pages(pid, zeros, n).iter().all(|&p| p),
        "freed unasked"
    );
    let freed = p
        .dump_pages(&req(true), &mut store)
        .expect("dump_pages, freeing");
    assert_eq!(key(&kept), key(&freed));
    assert_eq!(
        key(&freed).iter().map(|k| k.0).collect::<Vec<_>>(),
        [zeros + 40 * 4096, zeros + 51 * 4096]
    );
    // The runs of 40 and 1040 zero pages went, the latter whole though its first and last 8
    // pages lie beyond the 2 MiB boundaries where the blob frees; the two data pages and the
    // 10 zero pages between them (too short a run) stayed.
    assert_eq!(p.zero_freed(), 40 + 1040);
    let want: Vec<bool> = (0..n).map(|i| (40..52).contains(&i)).collect();
    assert_eq!(present_pages(pid, zeros, n), want);
    p.cure().expect("cure");
    detach_unchanged(&w, &before);
}

/// `len` bytes of `pid`'s memory from `addr` (/proc/PID/mem).
fn read_memory(pid: i32, addr: u64, len: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; len as usize];
    std::fs::File::open(format!("/proc/{pid}/mem"))
        .expect("mem")
        .read_exact_at(&mut bytes, addr)
        .expect("read memory");
    bytes
}

/// Writes the `handed` ranges of `pid` back from `store` ([`Handback`] on drop) and checks
/// that its memory from `addr` reads `original` again.
fn write_back_and_check(
    pid: i32,
    store: &std::fs::File,
    handed: Vec<cryo::infect::parasite::HandedOver>,
    addr: u64,
    original: &[u8],
) {
    drop(Handback::new(pid, store, handed));
    let now = read_memory(pid, addr, original.len() as u64);
    assert!(now == original, "memory differs after the write-back");
}

/// `free_data` makes the blob give a run's stored pages back to the kernel once the dumper
/// has them in the page store, and log each range it freed: only in the runs that ask, never
/// before the bytes are stored (each logged range's bytes are in the store at the offset
/// given), nearly all of a long run. Written back from the store ([`Handback`] on drop), the
/// task's memory reads as before and is resident again.
#[test]
fn stored_pages_are_freed_once_stored_and_written_back() {
    let Some((_dir, w, before)) = seized_workload(32) else {
        return;
    };
    let pid = w.pid();
    let (ms, me, perm) = vma_of(&before.maps, w.get("mem"));
    let half = (me - ms) / 2;
    let original = read_memory(pid, ms, me - ms);
    let present_before = present_pages(pid, ms, (me - ms) / 4096);
    let mut p = Parasite::infect(pid, &before.maps).expect("infect");
    p.set_direct_read_max(0);
    let req = |vaddr, free_data| PageRunReq {
        vaddr,
        nr_pages: half / 4096,
        prot: prot_of(&perm),
        free_zero: false,
        free_data,
    };
    let mut store = tempfile::tempfile().expect("store");
    let runs = p
        .dump_pages(&[req(ms, false), req(ms + half, true)], &mut store)
        .expect("dump_pages");
    let handed = p.take_handed_over();
    assert!(p.take_handed_over().is_empty(), "taken twice");
    let stored_upper: u64 = runs
        .iter()
        .filter(|r| r.vaddr >= ms + half)
        .map(|r| r.nr_pages * 4096)
        .sum();
    let freed: u64 = handed.iter().map(|h| h.len).sum();
    // All but the tail the drain had not reached when the blob finished (two pipes' worth,
    // and the 2 MiB the blob frees a growing range up to).
    assert!(
        freed <= stored_upper && freed + (6 << 20) >= stored_upper,
        "freed {freed} of {stored_upper} stored bytes"
    );
    let present = present_pages(pid, ms, (me - ms) / 4096);
    assert_eq!(
        present[..(half / 4096) as usize],
        present_before[..(half / 4096) as usize],
        "pages freed in the run that did not ask"
    );
    let mut bytes = Vec::new();
    for h in &handed {
        assert!(
            h.vaddr >= ms + half && h.vaddr + h.len <= me,
            "{h:?} outside the run"
        );
        assert_eq!((h.vaddr % 4096, h.len % 4096), (0, 0), "{h:?}");
        let first = ((h.vaddr - ms) / 4096) as usize;
        assert!(
            present[first..first + (h.len / 4096) as usize]
                .iter()
                .all(|&p| !p),
            "{h:?} still present"
        );
        bytes.resize(h.len as usize, 0);
        store
            .read_exact_at(&mut bytes, h.offset)
            .expect("read store");
        let at = (h.vaddr - ms) as usize;
        assert!(
            bytes == original[at..at + h.len as usize],
            "{h:?}: the store holds other bytes"
        );
    }
    write_back_and_check(pid, &store, handed, ms, &original);
    assert_eq!(present_pages(pid, ms, (me - ms) / 4096), present_before);
    p.cure().expect("cure");
    detach_unchanged(&w, &before);
}

/// A blob that crashes after it freed stored pages (here: on a page nobody mapped, after the
/// whole big region) is cured at once, and the log of what it freed survives the cure: the
/// pages are written back from the store.
#[test]
fn blob_crash_after_freeing_keeps_the_log_of_freed_pages() {
    let Some((_dir, w, before)) = seized_workload(32) else {
        return;
    };
    let pid = w.pid();
    let (ms, me, perm) = vma_of(&before.maps, w.get("mem"));
    // The first unmapped page above the region.
    let mut gap = me;
    for line in before.maps.lines() {
        let (range, _) = line.split_once(' ').expect("maps line");
        let (s, e) = range.split_once('-').expect("range");
        let (s, e) = (
            u64::from_str_radix(s, 16).expect("start"),
            u64::from_str_radix(e, 16).expect("end"),
        );
        if s <= gap && gap < e {
            gap = e;
        }
    }
    assert!(
        !before
            .maps
            .lines()
            .any(|l| l.starts_with(&format!("{gap:x}-"))),
        "no gap found above the region"
    );
    let original = read_memory(pid, ms, me - ms);
    let mut p = Parasite::infect(pid, &before.maps).expect("infect");
    p.set_direct_read_max(0);
    let reqs = [
        PageRunReq {
            vaddr: ms,
            nr_pages: (me - ms) / 4096,
            prot: prot_of(&perm),
            free_zero: false,
            free_data: true,
        },
        PageRunReq {
            vaddr: gap,
            nr_pages: 1,
            prot: 3,
            free_zero: false,
            free_data: true,
        },
    ];
    let mut store = tempfile::tempfile().expect("store");
    match p.dump_pages(&reqs, &mut store) {
        Err(InfectError::Crashed { signal, addr, .. }) => {
            assert_eq!((signal, addr), (libc::SIGSEGV, gap));
        }
        other => panic!("expected a crash, got {other:?}"),
    }
    let handed = p.take_handed_over();
    let freed: u64 = handed.iter().map(|h| h.len).sum();
    assert!(freed >= 16 << 20, "only {freed} bytes logged as freed");
    write_back_and_check(pid, &store, handed, ms, &original);
    p.cure().expect("cure after crash");
    detach_unchanged(&w, &before);
}

#[test]
fn signal_during_run_is_held_back_and_requeued() {
    let Some((_dir, w, before)) = seized_workload(1) else {
        return;
    };
    let pid = w.pid();
    let mut p = Parasite::infect(pid, &before.maps).expect("infect");
    // SIGTRAP (ignored by the workload, unblocked while the blob runs) sent to the process:
    // the next run sees it and must hold it back, the cure must queue it again.
    proc_ctl::kill(pid, libc::SIGTRAP).expect("kill");
    assert_eq!(p.umask().expect("umask"), 0o027);
    assert_eq!(p.sigactions().expect("sigactions").len(), 62);
    p.cure().expect("cure");
    let mut after = snapshot(pid);
    let shd = after
        .status_sig
        .iter_mut()
        .find(|l| l.starts_with("ShdPnd:"))
        .expect("ShdPnd");
    assert_eq!(
        shd.as_str(),
        "ShdPnd:\t0000000000000010",
        "SIGTRAP pending again"
    );
    *shd = "ShdPnd:\t0000000000000000".to_string();
    assert_same(&before, &after);
    ptrace::detach(pid, 0).expect("detach");
    assert_runs(&w);
}

#[test]
fn drop_cures() {
    let Some((_dir, w, before)) = seized_workload(1) else {
        return;
    };
    let pid = w.pid();
    {
        let mut p = Parasite::infect(pid, &before.maps).expect("infect");
        assert_eq!(p.itimers().expect("itimers").len(), 3);
        let during = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
        assert_ne!(during, before.maps, "the region is mapped while infected");
    }
    detach_unchanged(&w, &before);
}

/// Measures dump_pages on 1 GiB of non-zero pages (plus the workload's zero pages).
#[test]
#[ignore = "benchmark: cargo test --release --test parasite -- --ignored --nocapture"]
fn speed_1gib() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(bin) = workload_binary(dir.path()) else {
        return;
    };
    let w = Workload::start(&bin, 1024);
    let pid = w.pid();
    seize(pid);
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let (ms, me, perm) = vma_of(&maps, w.get("mem"));
    let reqs = [PageRunReq {
        vaddr: ms,
        nr_pages: (me - ms) / 4096,
        prot: prot_of(&perm),
        free_zero: false,
        free_data: false,
    }];
    // Where the page store goes: the null device (the parasite's side alone: zero check, crc,
    // vmsplice, pipe), tmpfs, and the test's temp dir (a disk file system, page cache).
    let mut targets: Vec<(String, PathBuf)> =
        vec![("/dev/null".to_string(), PathBuf::from("/dev/null"))];
    if Path::new("/dev/shm").is_dir() {
        targets.push((
            "tmpfs".to_string(),
            PathBuf::from("/dev/shm/cryo-speed-pages.img"),
        ));
    }
    targets.push(("tempdir".to_string(), dir.path().join("pages.img")));
    for (name, path) in &targets {
        for round in 0..2 {
            let mut store = std::fs::File::options()
                .write(true)
                .create(true)
                .truncate(path != Path::new("/dev/null"))
                .open(path)
                .expect("store");
            let t = Instant::now();
            let mut p = Parasite::infect(pid, &maps).expect("infect");
            let t_infect = t.elapsed();
            let runs = p.dump_pages(&reqs, &mut store).expect("dump");
            let t_dump = t.elapsed() - t_infect;
            p.cure().expect("cure");
            let t_all = t.elapsed();
            let bytes: u64 = runs.iter().map(|r| r.nr_pages * 4096).sum();
            eprintln!(
                "{name} round {round}: {} MiB requested, {} MiB stored in {} runs; infect {:?}, \
                 dump {:?} ({:.2} GB/s of requested memory), total with cure {:?}",
                (me - ms) >> 20,
                bytes >> 20,
                runs.len(),
                t_infect,
                t_dump,
                (me - ms) as f64 / t_dump.as_secs_f64() / 1e9,
                t_all
            );
            drop(store);
            if path != Path::new("/dev/null") {
                std::fs::remove_file(path).expect("remove store");
            }
        }
    }
    ptrace::detach(pid, 0).expect("detach");
    assert_runs(&w);
}
