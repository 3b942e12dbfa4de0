//! Network namespaces and the network lock: what dump and restore of sockets need outside
//! the sockets themselves. [`Netns`] names the namespace a process's sockets live in and runs
//! work inside it (a short-lived thread that enters it, so cryo itself never moves);
//! [`lock`] keeps packets of checkpointed TCP connections away while they are frozen.

pub mod lock;

use crate::sys::{net_ffi, SysError};
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

/// A network namespace, held open.
#[derive(Debug)]
pub struct Netns {
    file: File,
    /// The namespace's inode (what /proc/PID/ns/net links to).
    pub ino: u64,
    ours: bool,
}

impl Netns {
    /// The network namespace of process `pid`.
    pub fn of_pid(pid: i32) -> std::io::Result<Self> {
        Self::open(&format!("/proc/{pid}/ns/net"))
    }

    /// The namespace cryo's calling thread is in.
    pub fn current() -> std::io::Result<Self> {
        Self::open("/proc/thread-self/ns/net")
    }

    /// The namespace at `path` (/run/netns/NAME, /proc/PID/ns/net, ...).
    pub fn open_path(path: &str) -> std::io::Result<Self> {
        Self::open(path)
    }

    /// Moves cryo's calling thread into this namespace for good (threads it starts later
    /// are in it too). Call before cryo starts any thread.
    pub fn join(&self) -> std::io::Result<()> {
        net_ffi::enter_netns(self.file.as_fd())
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno))
    }

    fn open(path: &str) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let m = file.metadata()?;
        let own = std::fs::metadata("/proc/thread-self/ns/net")?;
        Ok(Self {
            ino: m.ino(),
            ours: (m.dev(), m.ino()) == (own.dev(), own.ino()),
            file,
        })
    }

    /// Runs `f` in this namespace: directly if cryo is in it already, else on a thread that
    /// enters it (sockets and processes that thread creates belong to the namespace).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, SysError> {
        if self.ours {
            return Ok(f());
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                net_ffi::enter_netns(self.file.as_fd())?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| {
                Err(SysError::from_errno(
                    "thread in a network namespace",
                    libc::EIO,
                ))
            })
        })
    }
}
