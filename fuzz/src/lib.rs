//! The bodies of cryo's fuzz targets: every reader of the image layer (`cryo::image`) gets
//! untrusted bytes, and must answer with an error, never a panic, an abort, a hang or an
//! allocation sized by the input. Three targets:
//!
//! - [`image_file`]: one file in memory, decoded as the image type the first byte picks
//!   (metadata records as their prost message, or a page store's header block). Records that
//!   decode are re-encoded and must decode to the same messages.
//! - [`checkpoint_dir`]: a whole checkpoint directory written to a temporary directory and
//!   read the way `cryo restore`, `cryo show` and `cryo restore --sign-key` read one.
//! - [`verify_pages`]: a page store and a fuzzed page map checked by
//!   `ImageReader::verify_pages`, whose verdict is compared with an independent oracle.
//!
//! Checksums would stop most mutations at the first crc32c, so flag bits in the input ask
//! the harness to recompute them after mutation ("fix-ups"), letting the fuzzer reach the
//! protobuf decoders, the manifest logic and the page run checks behind them.
//!
//! The seed corpus is made from real checkpoints by `tests/robust.rs`
//! (`fuzz_seed_corpus`, run by `scripts/fuzz.sh`), which encodes inputs in the formats below;
//! the two must agree.
//!
//! This crate only drives the public API of `cryo::image`; it never changes cryo.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cryo::image::{
    check_page_store, decode_records, encode_records, show, ImageReader, ImageType, SignKey,
    FORMAT_MAJOR, FORMAT_MINOR, HEADER_LEN, INVENTORY_FILE, MAGIC, PAGE_SIZE,
};
use cryo::proto::{
    FdEntry, Inventory, MmState, PageRun, ProcessCore, PstreeEntry, Signature, TaskCore,
};

/// The key fuzzed checkpoints are signed with (the seed generator uses the same bytes).
pub const FUZZ_KEY: &[u8; 32] = b"cryo-fuzz-key-0123456789abcdef!!";

/// Flag: recompute the crc32c of every record of every metadata file.
pub const FIX_RECORD_CRCS: u8 = 1;
/// Flag (checkpoint_dir): rewrite the inventory's manifest to match the files' sizes and crcs.
pub const FIX_MANIFEST: u8 = 2;
/// Flag (checkpoint_dir): also open the checkpoint with [`FUZZ_KEY`].
pub const OPEN_SIGNED: u8 = 4;

/// The end record's length field.
const END_MARKER: u32 = 0xFFFF_FFFF;

/// A directory for this fuzzing process, emptied before each input. Under `$TMPDIR`:
/// `scripts/fuzz.sh` points that at a directory of its own on a tmpfs and removes it at the
/// end (libFuzzer exits without running destructors, so the target cannot).
fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("cryo-fuzz-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the fuzz scratch directory");
        dir
    })
}

/// Empties the scratch directory and returns it.
fn fresh_dir() -> &'static Path {
    let dir = scratch_dir();
    for entry in fs::read_dir(dir)
        .expect("read the scratch directory")
        .flatten()
    {
        let p = entry.path();
        let _ = fs::remove_file(&p).or_else(|_| fs::remove_dir_all(&p));
    }
    dir
}

/// Recomputes the crc32c of every record of a metadata file in place, following its framing
/// from offset 16 for as long as it is well formed.
pub fn fix_record_crcs(bytes: &mut [u8]) {
    let mut pos = HEADER_LEN;
    while pos + 8 <= bytes.len() {
        let len = u32::from_le_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]]);
        if len == END_MARKER {
            return;
        }
        let start = pos + 8;
        let Some(end) = start
            .checked_add(len as usize)
            .filter(|&e| e <= bytes.len())
        else {
            return;
        };
        let crc = crc32c::crc32c(&bytes[start..end]);
        bytes[pos + 4..pos + 8].copy_from_slice(&crc.to_le_bytes());
        pos = end;
    }
}

/// Decodes `bytes` as a file of records of `M`; on success re-encodes them and checks that
/// they decode to the same messages.
fn decode_round_trip<M>(path: &Path, ty: ImageType, bytes: &[u8])
where
    M: prost::Message + Default + PartialEq + std::fmt::Debug,
{
    match decode_records::<M>(path, ty, bytes) {
        Ok(records) => {
            let again = encode_records(path, ty, &records).expect("re-encoding decoded records");
            let back = decode_records::<M>(path, ty, &again).expect("decoding re-encoded records");
            assert_eq!(back, records, "records changed across a round trip");
        }
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.contains(&*path.to_string_lossy()),
                "error does not name the file: {text}"
            );
        }
    }
}

/// Target `image_file`. Input: `[type selector][flags][file bytes...]`; the selector picks
/// `ImageType::ALL[selector % 10]` (so code - 1 for the types numbered 1..=10), the flags may
/// ask for [`FIX_RECORD_CRCS`].
pub fn image_file(data: &[u8]) {
    let [sel, flags, file @ ..] = data else {
        return;
    };
    let ty = ImageType::ALL[*sel as usize % ImageType::ALL.len()];
    let mut bytes = file.to_vec();
    if flags & FIX_RECORD_CRCS != 0 && ty.has_records() {
        fix_record_crcs(&mut bytes);
    }
    let name = ty.file_name(Some(1));
    let path = Path::new(&name);
    match ty {
        ImageType::Inventory => decode_round_trip::<Inventory>(path, ty, &bytes),
        ImageType::Pstree => decode_round_trip::<PstreeEntry>(path, ty, &bytes),
        ImageType::Core => decode_round_trip::<ProcessCore>(path, ty, &bytes),
        ImageType::Tasks => decode_round_trip::<TaskCore>(path, ty, &bytes),
        ImageType::Mm => decode_round_trip::<MmState>(path, ty, &bytes),
        ImageType::Pagemap => decode_round_trip::<PageRun>(path, ty, &bytes),
        ImageType::Fds => decode_round_trip::<FdEntry>(path, ty, &bytes),
        ImageType::Signature => decode_round_trip::<Signature>(path, ty, &bytes),
        // pack.img has no format of its own to check alone: its layout comes from the manifest
        // (the checkpoint_dir target reaches it).
        ImageType::Pack => {}
        ImageType::Pages => {
            if let Err(e) = check_page_store(path, &bytes) {
                assert!(
                    e.to_string().contains(&name),
                    "error does not name the file: {e}"
                );
            }
        }
    }
}

/// The files of a checkpoint container: (name, contents).
pub type Files = Vec<(String, Vec<u8>)>;

/// Splits a checkpoint container into its flags and `(name, bytes)` pairs. Format: `[flags]`
/// then any number of `[name_len: u8][name][data_len: u32 LE][data]`; a short tail is ignored.
pub fn parse_container(data: &[u8]) -> Option<(u8, Files)> {
    let (&flags, mut rest) = data.split_first()?;
    let mut files = Vec::new();
    while let Some((&name_len, tail)) = rest.split_first() {
        let name_len = name_len as usize;
        if tail.len() < name_len + 4 {
            break;
        }
        let name = String::from_utf8_lossy(&tail[..name_len]).into_owned();
        let len_bytes = &tail[name_len..name_len + 4];
        let len = u32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        let body = &tail[name_len + 4..];
        let len = (len as usize).min(body.len());
        files.push((name, body[..len].to_vec()));
        rest = &body[len..];
    }
    Some((flags, files))
}

/// Whether a name is safe to create in the scratch directory (and so fuzzing cannot write
/// elsewhere): 1 to 64 of `[A-Za-z0-9._-]`, not starting with a dot.
fn safe_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Rewrites the inventory's manifest entries to the sizes (and, for metadata files, the
/// crc32c) of the files given, and its pack size to pack.img's; a packed entry's crc32c is
/// that of its part of pack.img. So the reader looks past the manifest.
fn fix_manifest(files: &mut [(String, Vec<u8>)]) {
    let Some(inv_idx) = files.iter().position(|(n, _)| n == INVENTORY_FILE) else {
        return;
    };
    let path = Path::new(INVENTORY_FILE);
    let Ok(mut invs) = decode_records::<Inventory>(path, ImageType::Inventory, &files[inv_idx].1)
    else {
        return;
    };
    let pack = files
        .iter()
        .find(|(n, _)| n == "pack.img")
        .map(|(_, b)| b.clone());
    for inv in &mut invs {
        if let Some(p) = &pack {
            inv.pack_size = p.len() as u64;
        }
        for entry in &mut inv.manifest {
            if entry.packed {
                let part = pack.as_ref().and_then(|p| {
                    let end = entry.offset.checked_add(entry.size)?;
                    p.get(usize::try_from(entry.offset).ok()?..usize::try_from(end).ok()?)
                });
                if let (Some(part), false) = (part, entry.pages) {
                    entry.crc32c = crc32c::crc32c(part);
                }
                continue;
            }
            if let Some((_, bytes)) = files.iter().find(|(n, _)| *n == entry.name) {
                entry.size = bytes.len() as u64;
                entry.crc32c = if entry.pages {
                    0
                } else {
                    crc32c::crc32c(bytes)
                };
            }
        }
    }
    if let Ok(bytes) = encode_records(path, ImageType::Inventory, &invs) {
        files[inv_idx].1 = bytes;
    }
}

/// Reads everything a reader lets us read: every metadata file of the manifest as its
/// message, and every page store against its page map.
fn read_all(r: &ImageReader) {
    let names: Vec<String> = r
        .inventory()
        .manifest
        .iter()
        .map(|e| e.name.clone())
        .collect();
    for name in names {
        let Some((ty, pid)) = ImageType::parse_file_name(&name) else {
            continue;
        };
        let _ = match ty {
            ImageType::Pstree => r.read::<PstreeEntry>(ty, pid).map(drop),
            ImageType::Core => r.read_one::<ProcessCore>(ty, pid).map(drop),
            ImageType::Tasks => r.read::<TaskCore>(ty, pid).map(drop),
            ImageType::Mm => r.read_one::<MmState>(ty, pid).map(drop),
            ImageType::Pagemap => r.read::<PageRun>(ty, pid).map(drop),
            ImageType::Fds => r.read::<FdEntry>(ty, pid).map(drop),
            ImageType::Inventory | ImageType::Pages | ImageType::Signature | ImageType::Pack => {
                Ok(())
            }
        };
    }
    let _ = r.verify_all_pages();
}

/// Target `checkpoint_dir`. Input: a container (see [`parse_container`]) whose files are
/// written into an empty directory; flags may ask for [`FIX_RECORD_CRCS`] (every file with
/// records, by its name's type), [`FIX_MANIFEST`] and [`OPEN_SIGNED`]. Then: `cryo show` (text
/// and JSON), an unsigned open reading every file and page store, and a signed open likewise.
pub fn checkpoint_dir(data: &[u8]) {
    let Some((flags, mut files)) = parse_container(data) else {
        return;
    };
    files.retain(|(n, _)| safe_name(n));
    files.truncate(64);
    if flags & FIX_RECORD_CRCS != 0 {
        for (name, bytes) in &mut files {
            if ImageType::parse_file_name(name).is_some_and(|(t, _)| t.has_records()) {
                fix_record_crcs(bytes);
            }
        }
    }
    if flags & FIX_MANIFEST != 0 {
        fix_manifest(&mut files);
    }
    let dir = fresh_dir();
    for (name, bytes) in &files {
        fs::write(dir.join(name), bytes).expect("write a fuzzed image file");
    }
    let _ = show::render(dir, false);
    let _ = show::render(dir, true);
    // Every refusal names a file of the checkpoint (or the directory).
    let names_dir = |e: &cryo::image::ImageError| {
        let text = e.to_string();
        assert!(
            text.contains(&*dir.to_string_lossy()),
            "error names no file of the checkpoint: {text}"
        );
    };
    match ImageReader::open(dir) {
        Ok(r) => {
            assert!(!r.is_verified());
            read_all(&r);
        }
        Err(e) => names_dir(&e),
    }
    if flags & OPEN_SIGNED != 0 {
        let key = SignKey::from_bytes(Path::new("fuzz-key"), FUZZ_KEY).expect("fuzz key");
        match ImageReader::open_signed(dir, &key) {
            Ok(r) => {
                assert!(r.is_verified());
                read_all(&r);
            }
            Err(e) => names_dir(&e),
        }
    }
}

/// The pid of the page store in the `verify_pages` target.
const VP_PID: i32 = 1;
/// The most page runs the `verify_pages` target reads from one input.
const VP_MAX_RUNS: usize = 64;
/// Size of one encoded run in the `verify_pages` input.
pub const VP_RUN_LEN: usize = 32;

/// Encodes a page run for the `verify_pages` input: vaddr, nr_pages, offset (u64 LE each),
/// crc32c (u32 LE), 4 unused bytes.
pub fn encode_run(run: &PageRun) -> [u8; VP_RUN_LEN] {
    let mut out = [0u8; VP_RUN_LEN];
    out[0..8].copy_from_slice(&run.vaddr.to_le_bytes());
    out[8..16].copy_from_slice(&run.nr_pages.to_le_bytes());
    out[16..24].copy_from_slice(&run.offset.to_le_bytes());
    out[24..28].copy_from_slice(&run.crc32c.to_le_bytes());
    out
}

fn decode_run(b: &[u8]) -> PageRun {
    let u64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(a)
    };
    PageRun {
        vaddr: u64_at(0),
        nr_pages: u64_at(8),
        offset: u64_at(16),
        crc32c: u32::from_le_bytes([b[24], b[25], b[26], b[27]]),
    }
}

/// The page map checks of `verify_pages`, written independently and naively: the runs are
/// acceptable for a page store `store` (header block included) iff this returns true.
fn runs_are_valid(runs: &[PageRun], store: &[u8]) -> bool {
    let page = u128::from(PAGE_SIZE);
    let len = store.len() as u128;
    let max = u128::from(u64::MAX);
    for (i, r) in runs.iter().enumerate() {
        let bytes = u128::from(r.nr_pages) * page;
        let (vaddr, offset) = (u128::from(r.vaddr), u128::from(r.offset));
        if r.nr_pages == 0
            || vaddr % page != 0
            || offset % page != 0
            || offset < page
            || bytes > max
            || vaddr + bytes > max
            || offset + bytes > max
            || offset + bytes > len
        {
            return false;
        }
        if i > 0 {
            let p = &runs[i - 1];
            if vaddr < u128::from(p.vaddr) + u128::from(p.nr_pages) * page {
                return false;
            }
        }
        for q in &runs[..i] {
            let (qs, qe) = (
                u128::from(q.offset),
                u128::from(q.offset) + u128::from(q.nr_pages) * page,
            );
            if offset < qe && qs < offset + bytes {
                return false;
            }
        }
    }
    runs.iter().all(|r| {
        let (s, e) = (
            r.offset as usize,
            (r.offset + r.nr_pages * PAGE_SIZE) as usize,
        );
        crc32c::crc32c(&store[s..e]) == r.crc32c
    })
}

/// Target `verify_pages`. Input: `[flags][run count][count x 32-byte runs (see
/// [`encode_run`])][page data...]`. The page data, zero-padded to whole pages, follows a
/// valid header block in `pages-1.img` of an otherwise valid checkpoint; with
/// [`FIX_RECORD_CRCS`] in the flags each run that lies inside the store gets the crc32c of its
/// data. `verify_pages` must accept the runs exactly when the oracle does.
pub fn verify_pages(data: &[u8]) {
    let [flags, count, rest @ ..] = data else {
        return;
    };
    let count = (*count as usize)
        .min(VP_MAX_RUNS)
        .min(rest.len() / VP_RUN_LEN);
    let (run_bytes, page_data) = rest.split_at(count * VP_RUN_LEN);
    let mut runs: Vec<PageRun> = run_bytes.chunks_exact(VP_RUN_LEN).map(decode_run).collect();

    let mut store = vec![0u8; PAGE_SIZE as usize];
    store[..4].copy_from_slice(&MAGIC);
    store[4..8].copy_from_slice(&ImageType::Pages.code().to_le_bytes());
    store[8..10].copy_from_slice(&(FORMAT_MAJOR as u16).to_le_bytes());
    store[10..12].copy_from_slice(&(FORMAT_MINOR as u16).to_le_bytes());
    store.extend_from_slice(page_data);
    let padded = store.len().div_ceil(PAGE_SIZE as usize) * PAGE_SIZE as usize;
    store.resize(padded, 0);

    if flags & FIX_RECORD_CRCS != 0 {
        for r in &mut runs {
            let end = r
                .nr_pages
                .checked_mul(PAGE_SIZE)
                .and_then(|b| r.offset.checked_add(b))
                .filter(|&e| e <= store.len() as u64);
            if let Some(end) = end {
                r.crc32c = crc32c::crc32c(&store[r.offset as usize..end as usize]);
            }
        }
    }

    let dir = fresh_dir();
    let pages_name = ImageType::Pages.file_name(Some(VP_PID));
    fs::write(dir.join(&pages_name), &store).expect("write the page store");
    let inventory = Inventory {
        format_major: FORMAT_MAJOR,
        format_minor: FORMAT_MINOR,
        root_pid: VP_PID,
        pids: vec![VP_PID],
        manifest: vec![cryo::proto::ManifestEntry {
            name: pages_name,
            size: store.len() as u64,
            crc32c: 0,
            pages: true,
            ..Default::default()
        }],
        ..Default::default()
    };
    let inv_path = dir.join(INVENTORY_FILE);
    let inv = encode_records(&inv_path, ImageType::Inventory, &[inventory]).expect("inventory");
    fs::write(&inv_path, inv).expect("write the inventory");

    let reader = ImageReader::open(dir).expect("the harness writes a valid checkpoint");
    let verdict = reader.verify_pages(VP_PID, &runs);
    let expected = runs_are_valid(&runs, &store);
    assert_eq!(
        verdict.is_ok(),
        expected,
        "verify_pages says {verdict:?}, the oracle says {expected} for {runs:?}"
    );
}
