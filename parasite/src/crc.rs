//! crc32c of whole pages with the SSE4.2 `crc32` instruction, three pages at a time.
//!
//! One `crc32` has a latency of three cycles but a throughput of one per cycle, so three
//! independent streams keep the unit busy. The three page CRCs are joined with the linearity
//! of CRCs: for a raw (not inverted) CRC register `r`, `raw(r, A ++ B) = shift(raw(r, A), |B|)
//! ^ raw(0, B)`, where `shift(r, n)` multiplies by `x^(8n)` modulo the polynomial. The two
//! shift constants (one and two pages) are computed at compile time. Compiled into the blob
//! and, for testing against the `crc32c` crate, into cryo.

use core::arch::x86_64::_mm_crc32_u64;

/// The Castagnoli polynomial, bit-reflected.
const POLY: u32 = 0x82f6_3b78;

/// Bytes in a page.
const PAGE_BYTES: usize = 4096;
/// 64-bit words in a page.
const PAGE_WORDS: usize = PAGE_BYTES / 8;

/// `a * b mod P` in the bit-reflected representation (x^0 is the top bit).
pub const fn multmodp(a: u32, mut b: u32) -> u32 {
    let mut m: u32 = 1 << 31;
    let mut p: u32 = 0;
    loop {
        if a & m != 0 {
            p ^= b;
            if a & (m - 1) == 0 {
                break;
            }
        }
        m >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
        if m == 0 {
            break;
        }
    }
    p
}

/// `x^(8 * n) mod P`: the operator that moves a CRC register over `n` bytes of zeros.
pub const fn x8nmodp(mut n: u64) -> u32 {
    let mut p: u32 = 1 << 31; // x^0
    let mut sq: u32 = 1 << 30; // x^1
    let mut k = 0;
    while k < 3 {
        sq = multmodp(sq, sq); // up to x^8 = x^(2^3)
        k += 1;
    }
    while n != 0 {
        if n & 1 != 0 {
            p = multmodp(sq, p);
        }
        n >>= 1;
        sq = multmodp(sq, sq);
    }
    p
}

const SHIFT_1_PAGE: u32 = x8nmodp(PAGE_BYTES as u64);
const SHIFT_2_PAGES: u32 = x8nmodp(2 * PAGE_BYTES as u64);

/// Advances the raw CRC register `crc` over `pages` whole pages starting at `p`.
///
/// # Safety
/// `p` must be 8-byte aligned and valid for reading `pages * 4096` bytes, and the CPU must
/// have SSE4.2.
#[target_feature(enable = "sse4.2")]
pub unsafe fn crc_pages(mut crc: u32, p: *const u8, pages: usize) -> u32 {
    let w = p.cast::<u64>();
    let mut page = 0;
    while page + 3 <= pages {
        let (mut a, mut b, mut c) = (crc as u64, 0u64, 0u64);
        // SAFETY: the three pages lie inside the caller's range.
        let (pa, pb, pc) = unsafe {
            let pa = w.add(page * PAGE_WORDS);
            (pa, pa.add(PAGE_WORDS), pa.add(2 * PAGE_WORDS))
        };
        for i in 0..PAGE_WORDS {
            // SAFETY: i < PAGE_WORDS, inside each page; aligned as the caller promised.
            unsafe {
                a = _mm_crc32_u64(a, pa.add(i).read());
                b = _mm_crc32_u64(b, pb.add(i).read());
                c = _mm_crc32_u64(c, pc.add(i).read());
            }
        }
        crc = multmodp(SHIFT_2_PAGES, a as u32) ^ multmodp(SHIFT_1_PAGE, b as u32) ^ c as u32;
        page += 3;
    }
    while page < pages {
        let mut a = crc as u64;
        // SAFETY: the page lies inside the caller's range.
        let pa = unsafe { w.add(page * PAGE_WORDS) };
        for i in 0..PAGE_WORDS {
            // SAFETY: as above.
            a = unsafe { _mm_crc32_u64(a, pa.add(i).read()) };
        }
        crc = a as u32;
        page += 1;
    }
    crc
}
