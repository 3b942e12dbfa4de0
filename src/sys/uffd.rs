//! userfaultfd as a way to fill another process's fresh anonymous memory: a userfaultfd that
//! process created (taken over with `pidfd_getfd`) lets cryo register ranges of *that*
//! process's address space and `UFFDIO_COPY` bytes from cryo's own memory into them. The kernel
//! allocates each page and copies into it in one step: no zeroing of the page first, no page
//! fault in the target, no copy through the target. Only the wrappers live here; which ranges
//! to fill and with what is the caller's business. [`FileWindow`] maps part of a file so that
//! its bytes can be copied from the page cache directly.

use super::{SysError, SysResult};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// `UFFD_API`.
const UFFD_API: u64 = 0xaa;
/// `UFFD_USER_MODE_ONLY`: faults from kernel mode are not handled (cryo needs none).
pub const UFFD_USER_MODE_ONLY: u64 = 1;
/// `UFFDIO_REGISTER_MODE_MISSING`.
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
/// `_IOWR(0xaa, 0x3f, struct uffdio_api)`.
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
/// `_IOWR(0xaa, 0x00, struct uffdio_register)`.
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
/// `_IOR(0xaa, 0x01, struct uffdio_range)`.
const UFFDIO_UNREGISTER: libc::c_ulong = 0x8010_aa01;
/// `_IOWR(0xaa, 0x03, struct uffdio_copy)`.
const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;

/// `struct uffdio_api`.
#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

/// `struct uffdio_copy`.
#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// A userfaultfd of some process, after the API handshake.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
}

fn ioctl<T>(fd: &OwnedFd, call: &'static str, req: libc::c_ulong, arg: &mut T) -> SysResult<()> {
    // SAFETY: each request passed here reads and writes exactly the struct `arg` points to,
    // which lives for the whole call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg as *mut T) };
    if ret == -1 {
        Err(SysError::last(call))
    } else {
        Ok(())
    }
}

impl Uffd {
    /// Takes a userfaultfd (created by the process whose memory it serves) and makes the API
    /// handshake with no features.
    pub fn new(fd: OwnedFd) -> SysResult<Self> {
        let mut api = UffdioApi {
            api: UFFD_API,
            features: 0,
            ioctls: 0,
        };
        ioctl(&fd, "ioctl(UFFDIO_API)", UFFDIO_API, &mut api)?;
        Ok(Self { fd })
    }

    /// Registers `[start, start + len)` of the fd's process for missing-page handling, so
    /// that [`Uffd::copy`] can fill it.
    pub fn register(&self, start: u64, len: u64) -> SysResult<()> {
        let mut reg = UffdioRegister {
            range: UffdioRange { start, len },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        ioctl(
            &self.fd,
            "ioctl(UFFDIO_REGISTER)",
            UFFDIO_REGISTER,
            &mut reg,
        )
    }

    /// Undoes [`Uffd::register`] for `[start, start + len)`.
    pub fn unregister(&self, start: u64, len: u64) -> SysResult<()> {
        let mut range = UffdioRange { start, len };
        ioctl(
            &self.fd,
            "ioctl(UFFDIO_UNREGISTER)",
            UFFDIO_UNREGISTER,
            &mut range,
        )
    }

    /// Copies `src` (whole pages) to `dst` in the fd's process, into pages that must not be
    /// present yet. Returns the bytes copied; on an error after a partial copy, the error
    /// comes with the bytes that were copied before it.
    pub fn copy(&self, dst: u64, src: &[u8]) -> Result<u64, (u64, SysError)> {
        let mut done = 0u64;
        let len = src.len() as u64;
        while done < len {
            let mut c = UffdioCopy {
                dst: dst + done,
                src: src.as_ptr() as u64 + done,
                len: len - done,
                mode: 0,
                copy: 0,
            };
            let r = ioctl(&self.fd, "ioctl(UFFDIO_COPY)", UFFDIO_COPY, &mut c);
            let copied = if c.copy > 0 { c.copy as u64 } else { 0 };
            done += copied;
            match r {
                Ok(()) => {}
                // Interrupted by a change of the address space: go on from where it stopped.
                Err(e) if e.errno == libc::EAGAIN => continue,
                Err(e) => return Err((done, e)),
            }
            if copied == 0 {
                return Err((done, SysError::from_errno("ioctl(UFFDIO_COPY)", libc::EIO)));
            }
        }
        Ok(done)
    }

    /// Like [`Uffd::copy`], but pages of `dst` that are present already (which `UFFDIO_COPY`
    /// refuses with `EEXIST`) are written with `process_vm_writev` into process `pid` instead.
    /// Returns the bytes placed with `UFFDIO_COPY`; an error names the address it is about.
    pub fn copy_or_write(&self, pid: i32, dst: u64, src: &[u8]) -> Result<u64, (u64, SysError)> {
        match self.copy(dst, src) {
            Ok(n) => Ok(n),
            Err((copied, e)) if e.errno == libc::EEXIST => {
                // Page by page from the first page not copied.
                let mut via_uffd = copied;
                let page = super::PAGE_SIZE as usize;
                for (i, data) in src[copied as usize..].chunks(page).enumerate() {
                    let at = dst + copied + (i * page) as u64;
                    match self.copy(at, data) {
                        Ok(n) => via_uffd += n,
                        Err((_, e)) if e.errno == libc::EEXIST => {
                            super::mem::write(pid, at, data).map_err(|e| (at, e))?
                        }
                        Err((_, e)) => return Err((at, e)),
                    }
                }
                Ok(via_uffd)
            }
            Err((copied, e)) => Err((dst + copied, e)),
        }
    }
}

/// A read-only, populated mapping of part of a file in cryo's memory: its bytes can be given to
/// [`Uffd::copy`] straight from the page cache, without copying them into a buffer first.
///
/// The file must keep its size while the window lives (reading a page past the end of a file
/// raises SIGBUS), and the bytes change if someone writes the file meanwhile. Page stores are
/// written once, by the dump, in a directory only root can write; restore checks every run's
/// checksum on the bytes it copies.
#[derive(Debug)]
pub struct FileWindow {
    addr: u64,
    len: usize,
}

impl FileWindow {
    /// Maps `len` bytes of `file` from `offset` (a multiple of the page size).
    pub fn map(file: BorrowedFd<'_>, offset: u64, len: usize) -> SysResult<Self> {
        // SAFETY: a new read-only shared mapping chosen by the kernel; no existing memory is
        // touched. MAP_POPULATE maps the cached pages now, in one go.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(SysError::last("mmap"));
        }
        Ok(Self {
            addr: ptr as u64,
            len,
        })
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes and lives as long as `self`; the file is
        // not written while restore reads it (see the type's documentation).
        unsafe { std::slice::from_raw_parts(self.addr as *const u8, self.len) }
    }
}

/// posix_fadvise(2) `POSIX_FADV_DONTNEED`: drops the clean cached pages of `[offset, offset +
/// len)` of `file` (dirty ones stay; a later read comes from the disk).
pub fn drop_cached(file: BorrowedFd<'_>, offset: u64, len: u64) -> SysResult<()> {
    // SAFETY: a plain syscall on an open fd; no memory is passed.
    let ret = unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            offset as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    if ret != 0 {
        return Err(SysError::from_errno("posix_fadvise", ret));
    }
    Ok(())
}

impl Drop for FileWindow {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; `bytes` borrows cannot outlive self.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_ioctl_numbers() {
        let size = |req: libc::c_ulong| ((req >> 16) & 0x3fff) as usize;
        assert_eq!(std::mem::size_of::<UffdioApi>(), size(UFFDIO_API));
        assert_eq!(std::mem::size_of::<UffdioRegister>(), size(UFFDIO_REGISTER));
        assert_eq!(std::mem::size_of::<UffdioRange>(), size(UFFDIO_UNREGISTER));
        assert_eq!(std::mem::size_of::<UffdioCopy>(), size(UFFDIO_COPY));
    }

    #[test]
    fn copy_fills_a_registered_range_of_our_own() {
        const LEN: usize = 64 * 4096;
        // SAFETY: a plain syscall creating an fd.
        let raw = unsafe {
            libc::syscall(
                libc::SYS_userfaultfd,
                libc::O_CLOEXEC as u64 | UFFD_USER_MODE_ONLY,
            )
        };
        if raw < 0 {
            eprintln!("SKIP: userfaultfd: {}", std::io::Error::last_os_error());
            return;
        }
        // SAFETY: raw is a new fd we own.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw as i32) };
        let uffd = Uffd::new(fd).expect("UFFDIO_API");
        // SAFETY: a fresh private anonymous mapping, unmapped at the end.
        let dst = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(dst, libc::MAP_FAILED);
        let dst = dst as u64;
        uffd.register(dst, LEN as u64).expect("register");
        let src: Vec<u8> = (0..LEN).map(|i| (i % 251) as u8 + 1).collect();
        assert_eq!(uffd.copy(dst, &src[..LEN / 2]), Ok(LEN as u64 / 2));
        // A page that is present already is refused.
        let err = uffd.copy(dst, &src[..4096]).expect_err("page exists");
        assert_eq!((err.0, err.1.errno), (0, libc::EEXIST));
        uffd.unregister(dst, LEN as u64).expect("unregister");
        // SAFETY: the mapping is LEN bytes; the first half was filled, the rest reads zero.
        let got = unsafe { std::slice::from_raw_parts(dst as *const u8, LEN) };
        assert_eq!(&got[..LEN / 2], &src[..LEN / 2]);
        assert!(got[LEN / 2..].iter().all(|&b| b == 0));
        // SAFETY: unmapping the mapping made above.
        unsafe { libc::munmap(dst as *mut libc::c_void, LEN) };
    }

    #[test]
    fn file_window_shows_the_file() {
        use std::io::Write;
        let mut f = tempfile::tempfile().expect("tempfile");
        let data: Vec<u8> = (0..3 * 4096).map(|i| (i % 241) as u8).collect();
        f.write_all(&data).expect("write");
        let w = FileWindow::map(std::os::fd::AsFd::as_fd(&f), 4096, 2 * 4096).expect("map");
        assert_eq!(w.bytes(), &data[4096..]);
    }

    #[test]
    fn copy_or_write_writes_present_pages_another_way() {
        const LEN: usize = 8 * 4096;
        // SAFETY: a plain syscall creating an fd.
        let raw = unsafe {
            libc::syscall(
                libc::SYS_userfaultfd,
                libc::O_CLOEXEC as u64 | UFFD_USER_MODE_ONLY,
            )
        };
        if raw < 0 {
            eprintln!("SKIP: userfaultfd: {}", std::io::Error::last_os_error());
            return;
        }
        // SAFETY: raw is a new fd we own.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw as i32) };
        let uffd = Uffd::new(fd).expect("UFFDIO_API");
        // SAFETY: a fresh private anonymous mapping, unmapped at the end.
        let dst = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(dst, libc::MAP_FAILED);
        // Pages 3 and 4 present before registration (touching a registered missing page would
        // wait for a fault handler).
        // SAFETY: inside the mapping.
        unsafe {
            *(dst as *mut u8).add(3 * 4096) = 0xee;
            *(dst as *mut u8).add(4 * 4096) = 0xee;
        }
        let dst = dst as u64;
        uffd.register(dst, LEN as u64).expect("register");
        let src: Vec<u8> = (0..LEN).map(|i| (i % 253) as u8 + 1).collect();
        let pid = std::process::id() as i32;
        assert_eq!(uffd.copy_or_write(pid, dst, &src), Ok(6 * 4096));
        uffd.unregister(dst, LEN as u64).expect("unregister");
        // SAFETY: the mapping is LEN bytes, all of it filled now.
        let got = unsafe { std::slice::from_raw_parts(dst as *const u8, LEN) };
        assert_eq!(got, &src[..]);
        // SAFETY: unmapping the mapping made above.
        unsafe { libc::munmap(dst as *mut libc::c_void, LEN) };
    }
}
