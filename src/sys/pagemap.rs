//! The PAGEMAP_SCAN ioctl on `/proc/PID/pagemap` (Linux 6.7+): which pages of a range are
//! present, swapped, file-backed or the shared zero page, as merged regions instead of one
//! 8-byte entry per page. Callers fall back to reading the pagemap file when the kernel does
//! not know the ioctl ([`is_unsupported`]).

use super::{SysError, SysResult};
use std::os::fd::{AsRawFd, BorrowedFd};

/// The page is file-backed (not anonymous).
pub const PAGE_IS_FILE: u64 = 1 << 2;
/// The page is present in memory.
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
/// The page is swapped out.
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
/// The page is the shared zero page (read but never written).
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: libc::c_ulong = 0xC060_6610;
/// Regions asked for per ioctl.
const REGIONS_PER_CALL: usize = 512;

/// `struct pm_scan_arg`.
#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `struct page_region`: pages `start..end` all have `categories`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PageRegion {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// `PAGE_IS_*` bits.
    pub categories: u64,
}

/// Whether a scan error means the kernel has no PAGEMAP_SCAN.
pub fn is_unsupported(e: &SysError) -> bool {
    matches!(e.errno, libc::ENOTTY | libc::EINVAL | libc::EOPNOTSUPP)
}

/// Appends to `out` the regions of `start..end` whose pages are present or swapped, with
/// their present/swapped/file/zero-page categories.
pub fn scan_populated(
    pagemap: BorrowedFd<'_>,
    start: u64,
    end: u64,
    out: &mut Vec<PageRegion>,
) -> SysResult<()> {
    let masks = Masks {
        anyof: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        report: PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_FILE | PAGE_IS_PFNZERO,
        ..Masks::default()
    };
    scan(pagemap, start, end, masks, out)
}

/// Which pages a scan reports (the `pm_scan_arg` category masks), and which categories it
/// reports them with.
#[derive(Debug, Clone, Copy, Default)]
pub struct Masks {
    /// Pages must have every one of these categories.
    pub all: u64,
    /// Pages must have at least one of these (0: no condition).
    pub anyof: u64,
    /// The categories reported in each region.
    pub report: u64,
}

/// Appends to `out` the regions of `start..end` of the mm behind `pagemap` (an open
/// `/proc/PID/pagemap`) whose pages match `masks`, asking again until the whole range is
/// walked.
pub fn scan(
    pagemap: BorrowedFd<'_>,
    start: u64,
    end: u64,
    masks: Masks,
    out: &mut Vec<PageRegion>,
) -> SysResult<()> {
    let mut buf = vec![PageRegion::default(); REGIONS_PER_CALL];
    let mut at = start;
    while at < end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            start: at,
            end,
            vec: buf.as_mut_ptr() as u64,
            vec_len: buf.len() as u64,
            category_mask: masks.all,
            category_anyof_mask: masks.anyof,
            return_mask: masks.report,
            ..PmScanArg::default()
        };
        // SAFETY: arg is a valid pm_scan_arg whose vec points to buf, which has room for
        // vec_len regions and outlives the call; the kernel writes only there and to walk_end.
        let ret = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg) };
        if ret < 0 {
            let e = SysError::last("ioctl(PAGEMAP_SCAN)");
            if e.errno == libc::EINTR {
                continue;
            }
            return Err(e);
        }
        let n = (ret as usize).min(buf.len());
        out.extend_from_slice(&buf[..n]);
        if arg.walk_end <= at {
            // No progress would loop forever; the kernel always advances, but be sure.
            return Err(SysError::from_errno("ioctl(PAGEMAP_SCAN)", libc::EIO));
        }
        at = arg.walk_end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_sizes_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<PmScanArg>(), 96);
        assert_eq!(std::mem::size_of::<PageRegion>(), 24);
        // The ioctl number encodes the argument's size in bits 16..30.
        assert_eq!((PAGEMAP_SCAN >> 16) & 0x3fff, 96);
    }
}
