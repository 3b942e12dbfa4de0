//! Address-space arithmetic for restore: finding holes that are free both in the restorer's
//! current layout and in the target's, for the trampoline and for temporary moves. Pure logic.

/// Lowest address cryo places anything at (above any vm.mmap_min_addr).
const MIN_ADDR: u64 = 0x1_0000_0000;
/// Top of the 47-bit user address space.
const TASK_SIZE: u64 = 0x7fff_ffff_f000;

/// Finds `len` bytes (page-multiple) that overlap none of `busy` (half-open ranges), searching
/// upwards from `MIN_ADDR`. Returns the start.
pub fn find_hole(busy: &[(u64, u64)], len: u64) -> Option<u64> {
    let mut ranges: Vec<(u64, u64)> = busy.iter().copied().filter(|r| r.0 < r.1).collect();
    ranges.sort_unstable();
    // Keep one guard page clear on both sides so nothing merges with a neighbour.
    let guard = 0x1000;
    let mut cand = MIN_ADDR;
    for (s, e) in ranges {
        if e + guard <= cand {
            continue;
        }
        if s >= cand + len + guard {
            break;
        }
        cand = cand.max(e + guard);
    }
    (cand + len <= TASK_SIZE).then_some(cand)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// True when [a0, a1) and [b0, b1) share a byte.
    fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
        a.0 < b.1 && b.0 < a.1
    }

    #[test]
    fn hole_skips_busy_ranges() {
        let busy = [
            (MIN_ADDR, MIN_ADDR + 0x5000),
            (MIN_ADDR + 0x7000, MIN_ADDR + 0x9000),
        ];
        let h = find_hole(&busy, 0x1000).unwrap();
        assert!(busy.iter().all(|b| !overlaps(*b, (h, h + 0x1000))));
        assert_eq!(h, MIN_ADDR + 0xa000);
        let h2 = find_hole(&busy, 0x1000).unwrap();
        assert_eq!(h, h2);
    }

    #[test]
    fn hole_in_empty_space_and_below_busy() {
        assert_eq!(find_hole(&[], 0x3000), Some(MIN_ADDR));
        let busy = [(MIN_ADDR + 0x10_0000, MIN_ADDR + 0x20_0000)];
        assert_eq!(find_hole(&busy, 0x2000), Some(MIN_ADDR));
    }

    #[test]
    fn no_hole_when_full() {
        assert_eq!(find_hole(&[(0, TASK_SIZE)], 0x1000), None);
    }
}
