//! Directory-level tests: writer, reader, manifest, page stores, `show`.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use crate::proto::{
    Creds, FdEntry, FdKind, FileId, Inventory, ItimerVal, MmState, PageRun, PosixTimer,
    ProcessCore, PstreeEntry, Rlimit, SigAction, TaskCore, UserRegs, Vma, VmaKind,
};

use super::format::encode_records;
use super::reader::{PARALLEL_VERIFY_FROM, PIECE};
use super::*;

const ROOT: i32 = 100;
const CHILD: i32 = 101;

fn pstree() -> Vec<PstreeEntry> {
    vec![
        PstreeEntry {
            pid: ROOT,
            ppid: 0,
            pgid: ROOT,
            sid: ROOT,
            threads: vec![ROOT, 102],
            ..Default::default()
        },
        PstreeEntry {
            pid: CHILD,
            ppid: ROOT,
            pgid: ROOT,
            sid: ROOT,
            threads: vec![CHILD],
            ..Default::default()
        },
    ]
}

fn core(pid: i32) -> ProcessCore {
    ProcessCore {
        pid,
        sigactions: vec![
            SigAction {
                signo: 2,
                handler: 0x40_1000,
                flags: 0x0400_0000,
                restorer: 0x7f00_0000_1000,
                mask: 0,
            },
            SigAction {
                signo: 13,
                handler: 1,
                ..Default::default()
            },
            SigAction {
                signo: 15,
                handler: 0,
                ..Default::default()
            },
        ],
        itimers: vec![ItimerVal {
            which: 0,
            interval_us: 500_000,
            value_us: 250_000,
        }],
        posix_timers: vec![PosixTimer {
            id: 0,
            clock_id: 1,
            sigev_notify: 0,
            sigev_signo: 10,
            interval_ns: 1_000_000,
            value_ns: 300,
            ..Default::default()
        }],
        rlimits: vec![
            Rlimit {
                resource: 7,
                cur: 1024,
                max: 4096,
            },
            Rlimit {
                resource: 9,
                cur: u64::MAX,
                max: u64::MAX,
            },
        ],
        umask: 0o022,
        cwd: "/srv/work".into(),
        root: "/".into(),
        creds: Some(Creds {
            uids: vec![0; 4],
            gids: vec![0; 4],
            groups: vec![],
        }),
        personality: 0,
        exe: "/usr/bin/sleeper".into(),
        exit_signal: 17,
        shared_pending: vec![],
    }
}

fn tasks(pid: i32) -> Vec<TaskCore> {
    let tids = if pid == ROOT {
        vec![ROOT, 102]
    } else {
        vec![pid]
    };
    tids.into_iter()
        .map(|tid| TaskCore {
            tid,
            regs: Some(UserRegs {
                rip: 0x40_1234 + tid as u64,
                rsp: 0x7ffd_0000_0000,
                ..Default::default()
            }),
            xsave: vec![0xab; 64],
            sigmask: 1 << 9,
            comm: "sleeper".into(),
            ..Default::default()
        })
        .collect()
}

fn mm() -> MmState {
    MmState {
        vmas: vec![
            Vma {
                start: 0x40_0000,
                end: 0x40_2000,
                prot: 5,
                flags: 2,
                kind: VmaKind::VmaFilePrivate as i32,
                pgoff: 0x1000,
                file: Some(FileId {
                    path: "/usr/bin/sleeper".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Vma {
                start: 0x7f00_0000_0000,
                end: 0x7f00_0000_4000,
                prot: 3,
                flags: 0x22,
                kind: VmaKind::VmaAnon as i32,
                ..Default::default()
            },
        ],
        brk: 0x60_0000,
        start_brk: 0x60_0000,
        auxv: vec![6, 4096, 0, 0],
        ..Default::default()
    }
}

fn fds() -> Vec<FdEntry> {
    vec![
        FdEntry {
            fd: 0,
            kind: FdKind::FdChr as i32,
            path: "/dev/null".into(),
            flags: libc::O_RDWR as u32,
            ..Default::default()
        },
        FdEntry {
            fd: 3,
            kind: FdKind::FdReg as i32,
            path: "/srv/work/log".into(),
            flags: (libc::O_WRONLY | libc::O_APPEND) as u32,
            cloexec: true,
            pos: 4242,
            ..Default::default()
        },
    ]
}

/// Page data for a run: every byte depends on the page's address.
fn page_data(vaddr: u64, nr_pages: u64) -> Vec<u8> {
    (0..nr_pages * PAGE_SIZE)
        .map(|i| ((vaddr / PAGE_SIZE + i / PAGE_SIZE) as u8) ^ (i as u8).wrapping_mul(31))
        .collect()
}

fn inventory() -> Inventory {
    Inventory {
        tool_version: "cryo 0.1.0".into(),
        kernel: "6.18.0-test".into(),
        root_pid: ROOT,
        pids: vec![ROOT, CHILD],
        dump_time_unix_ms: 1_700_000_000_123,
        ..Default::default()
    }
}

/// Writes a complete two-process checkpoint; returns the page runs of each process.
fn write_checkpoint(dir: &Path) -> Vec<(i32, Vec<PageRun>)> {
    write_checkpoint_signed(dir, None)
}

/// Writes a complete two-process checkpoint, signed with `key` if given.
fn write_checkpoint_signed(dir: &Path, key: Option<SignKey>) -> Vec<(i32, Vec<PageRun>)> {
    let mut w = ImageWriter::create(dir, false).unwrap();
    // One file per image: what most tests here damage file by file (the packed layout has
    // its own tests below).
    w.set_packing(false);
    w.set_sign_key(key);
    w.write(ImageType::Pstree, None, &pstree()).unwrap();
    let mut all_runs = Vec::new();
    for pid in [ROOT, CHILD] {
        w.write(ImageType::Core, Some(pid), &[core(pid)]).unwrap();
        w.write(ImageType::Tasks, Some(pid), &tasks(pid)).unwrap();
        w.write(ImageType::Mm, Some(pid), &[mm()]).unwrap();
        w.write(ImageType::Fds, Some(pid), &fds()).unwrap();
        let mut pages = w.create_pages(pid).unwrap();
        assert_eq!(pages.offset().unwrap(), 4096);
        let mut runs = Vec::new();
        for (vaddr, n) in [(0x40_0000u64, 2u64), (0x7f00_0000_0000, 3)] {
            runs.push(pages.append_run(vaddr, &page_data(vaddr, n)).unwrap());
        }
        assert_eq!(
            pages.checksum(runs[1].offset, 3 * PAGE_SIZE).unwrap(),
            runs[1].crc32c
        );
        w.finish_pages(pages).unwrap();
        w.write(ImageType::Pagemap, Some(pid), &runs).unwrap();
        all_runs.push((pid, runs));
    }
    w.commit(inventory()).unwrap();
    all_runs
}

/// Writes `invs` as the inventory file at `path` (framing and checksums valid).
fn put_inventory(path: &Path, invs: &[Inventory]) {
    fs::write(
        path,
        encode_records(path, ImageType::Inventory, invs).unwrap(),
    )
    .unwrap();
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn file_names() {
    assert_eq!(ImageType::Mm.file_name(Some(123)), "mm-123.img");
    assert_eq!(ImageType::Pstree.file_name(Some(5)), "pstree.img");
    assert_eq!(ImageType::Inventory.file_name(None), "inventory.img");
    for ty in ImageType::ALL {
        assert_eq!(ImageType::from_code(ty.code()), Some(ty));
        let pid = ty.per_process().then_some(4711);
        assert_eq!(
            ImageType::parse_file_name(&ty.file_name(pid)),
            Some((ty, pid))
        );
    }
    assert_eq!(
        ImageType::parse_file_name(SIGNATURE_FILE),
        Some((ImageType::Signature, None))
    );
    for bad in [
        "signature-1.img",
        "mm-0.img",
        "mm-007.img",
        "mm--1.img",
        "mm-+1.img",
        "mm.img",
        "core-1.imgx",
        "x-1.img",
        "mm-99999999999.img",
        "pstree-1.img",
        "inventory.img.tmp",
        "../mm-1.img",
    ] {
        assert_eq!(ImageType::parse_file_name(bad), None, "{bad}");
    }
}

#[test]
fn round_trip_every_file_type() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    let runs = write_checkpoint(&dir);

    let r = ImageReader::open(&dir).unwrap();
    assert_eq!(r.dir(), dir);
    let inv = r.inventory();
    assert_eq!(
        (inv.format_major, inv.format_minor),
        (FORMAT_MAJOR, FORMAT_MINOR)
    );
    assert_eq!(inv.root_pid, ROOT);
    assert_eq!(inv.kernel, "6.18.0-test");
    // Every file but the inventory is in the manifest, sorted by name.
    let mut expected: Vec<String> = names_in(&dir)
        .into_iter()
        .filter(|n| n != INVENTORY_FILE)
        .collect();
    expected.sort();
    let listed: Vec<String> = inv.manifest.iter().map(|e| e.name.clone()).collect();
    assert_eq!(listed, expected);
    assert_eq!(listed.len(), 1 + 2 * 6);
    for e in &inv.manifest {
        let size = fs::metadata(dir.join(&e.name)).unwrap().len();
        assert_eq!(e.size, size, "{}", e.name);
        assert_eq!(e.pages, e.name.starts_with("pages-"));
        if !e.pages {
            assert_eq!(
                e.crc32c,
                crc32c::crc32c(&fs::read(dir.join(&e.name)).unwrap())
            );
        }
    }

    assert_eq!(
        r.read::<PstreeEntry>(ImageType::Pstree, None).unwrap(),
        pstree()
    );
    for (pid, runs) in &runs {
        let p = Some(*pid);
        assert_eq!(
            r.read_one::<ProcessCore>(ImageType::Core, p).unwrap(),
            core(*pid)
        );
        assert_eq!(
            r.read::<TaskCore>(ImageType::Tasks, p).unwrap(),
            tasks(*pid)
        );
        assert_eq!(r.read_one::<MmState>(ImageType::Mm, p).unwrap(), mm());
        assert_eq!(r.read::<FdEntry>(ImageType::Fds, p).unwrap(), fds());
        let back: Vec<PageRun> = r.read(ImageType::Pagemap, p).unwrap();
        assert_eq!(&back, runs);
        assert_eq!(back[0].offset, 4096);
        assert_eq!(back[1].offset, 3 * 4096);
        r.verify_pages(*pid, &back).unwrap();
        let store = fs::read(r.pages_path(*pid)).unwrap();
        assert_eq!(store.len(), 4096 + 5 * 4096);
        assert_eq!(&store[..4], b"CRYO");
        for run in &back {
            let at = run.offset as usize;
            assert_eq!(
                &store[at..at + (run.nr_pages * PAGE_SIZE) as usize],
                &page_data(run.vaddr, run.nr_pages)[..]
            );
        }
    }
    r.verify_all_pages().unwrap();
    assert!(r.has(ImageType::Mm, Some(ROOT)));
    assert!(!r.has(ImageType::Mm, Some(999)));
    // read_one on a multi-record file.
    let err = r
        .read_one::<TaskCore>(ImageType::Tasks, Some(ROOT))
        .unwrap_err();
    assert!(
        matches!(err, ImageError::RecordNumber { found: 2, .. }),
        "{err}"
    );
    // Files not in the manifest, and calls that do not apply.
    let err = r.read::<FdEntry>(ImageType::Fds, Some(999)).unwrap_err();
    assert!(matches!(err, ImageError::NotInManifest { .. }), "{err}");
    assert!(err.to_string().contains("fds-999.img"), "{err}");
    assert!(matches!(
        r.read::<Inventory>(ImageType::Inventory, None),
        Err(ImageError::BadRequest { .. })
    ));
    assert!(matches!(
        r.read::<PageRun>(ImageType::Pages, Some(ROOT)),
        Err(ImageError::BadRequest { .. })
    ));
    assert!(matches!(
        r.read::<MmState>(ImageType::Mm, None),
        Err(ImageError::BadRequest { .. })
    ));
    // No runs and no page store: nothing to check. Runs but no page store: an error.
    r.verify_pages(999, &[]).unwrap();
    assert!(matches!(
        r.verify_pages(999, &runs[0].1),
        Err(ImageError::NotInManifest { .. })
    ));
}

#[test]
fn empty_checkpoint_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let w = ImageWriter::create(tmp.path(), false).unwrap();
    w.commit(Inventory::default()).unwrap();
    let r = ImageReader::open(tmp.path()).unwrap();
    assert!(r.inventory().manifest.is_empty());
    assert_eq!(r.inventory().format_major, FORMAT_MAJOR);
}

#[test]
fn permissions() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/b/ckpt");
    write_checkpoint(&dir);
    for d in [tmp.path().join("a"), tmp.path().join("a/b"), dir.clone()] {
        let mode = fs::metadata(&d).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700, "{}", d.display());
    }
    for name in names_in(&dir) {
        let mode = fs::metadata(dir.join(&name)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600, "{name}");
    }
}

#[test]
fn each_corrupted_byte_of_a_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    write_checkpoint(&dir);
    let reader = ImageReader::open(&dir).unwrap();

    // The inventory: covered by its record checksum and the version cross-check.
    let inv_path = dir.join(INVENTORY_FILE);
    let inv_good = fs::read(&inv_path).unwrap();
    for pos in 0..inv_good.len() {
        for pattern in [0x01u8, 0x80, 0xff] {
            let mut bad = inv_good.clone();
            bad[pos] ^= pattern;
            fs::write(&inv_path, &bad).unwrap();
            let err = ImageReader::open(&dir).unwrap_err();
            assert!(
                err.to_string().contains(INVENTORY_FILE),
                "byte {pos}: {err}"
            );
        }
    }
    fs::write(&inv_path, &inv_good).unwrap();

    let name = "fds-101.img";
    let path = dir.join(name);
    let good = fs::read(&path).unwrap();
    assert!(good.len() < 200);
    for pos in 0..good.len() {
        for pattern in [0x01u8, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[pos] ^= pattern;
            fs::write(&path, &bad).unwrap();
            // Caught by open ...
            let err = ImageReader::open(&dir).unwrap_err();
            assert!(err.to_string().contains(name), "byte {pos}: {err}");
            // ... and by a reader opened before the corruption.
            let err = reader
                .read::<FdEntry>(ImageType::Fds, Some(CHILD))
                .unwrap_err();
            assert!(err.to_string().contains(name), "byte {pos}: {err}");
        }
    }
    fs::write(&path, &good).unwrap();
    ImageReader::open(&dir).unwrap();
}

#[test]
fn each_truncation_of_a_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    write_checkpoint(&dir);
    for name in ["fds-101.img", INVENTORY_FILE] {
        let path = dir.join(name);
        let good = fs::read(&path).unwrap();
        for len in 0..good.len() {
            fs::write(&path, &good[..len]).unwrap();
            let err = ImageReader::open(&dir).unwrap_err();
            assert!(err.to_string().contains(name), "{name} cut to {len}: {err}");
            if name == INVENTORY_FILE {
                assert!(matches!(err, ImageError::Truncated { .. }), "{err}");
            } else {
                assert!(matches!(err, ImageError::SizeMismatch { .. }), "{err}");
            }
        }
        fs::write(&path, &good).unwrap();
    }
    ImageReader::open(&dir).unwrap();
}

#[test]
fn foreign_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    write_checkpoint(&dir);
    let inv = dir.join(INVENTORY_FILE);
    let good = fs::read(&inv).unwrap();
    let mut elf = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
    elf.resize(64, 0);
    fs::write(&inv, &elf).unwrap();
    let err = ImageReader::open(&dir).unwrap_err();
    assert!(err.to_string().contains("not a cryo image"), "{err}");
    assert!(err.to_string().contains("inventory.img"), "{err}");

    // A metadata file of the wrong type (the right size and crc do not help).
    fs::write(&inv, &good).unwrap();
    let mm_path = dir.join("mm-100.img");
    let mm_good = fs::read(&mm_path).unwrap();
    let mut wrong_type = mm_good.clone();
    wrong_type[4] = ImageType::Fds.code() as u8;
    fs::write(&mm_path, &wrong_type).unwrap();
    let err = ImageReader::open(&dir).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::WrongType {
                expected: ImageType::Mm,
                found: 8,
                ..
            }
        ),
        "{err}"
    );
    fs::write(&mm_path, &mm_good).unwrap();

    // No checkpoint at all.
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let err = ImageReader::open(&empty).unwrap_err();
    assert!(err.to_string().contains("inventory.img"), "{err}");
}

#[test]
fn newer_major_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    write_checkpoint(&dir);
    let good = ImageReader::open(&dir).unwrap().inventory().clone();
    let inv = dir.join(INVENTORY_FILE);
    let mut bytes = fs::read(&inv).unwrap();
    bytes[8] = 3;
    fs::write(&inv, &bytes).unwrap();
    let err = ImageReader::open(&dir).unwrap_err();
    assert!(
        matches!(err, ImageError::UnsupportedVersion { major: 3, .. }),
        "{err}"
    );

    // A newer minor is read (with a warning) when header and record agree, refused otherwise.
    let mut newer = good.clone();
    newer.format_minor = 1;
    let mut bytes = encode_records(&inv, ImageType::Inventory, &[newer]).unwrap();
    fs::write(&inv, &bytes).unwrap();
    let err = ImageReader::open(&dir).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::UnsupportedVersion {
                major: FORMAT_MAJOR,
                minor: 1,
                ..
            }
        ),
        "{err}"
    );
    bytes[10] = 1;
    fs::write(&inv, &bytes).unwrap();
    // Page store headers (which no checksum covers) must give the inventory's minor too.
    let err = ImageReader::open(&dir).unwrap_err();
    assert!(
        matches!(&err, ImageError::MinorMismatch { path, found: 0, expected: 1 }
            if path.ends_with("pages-100.img")),
        "{err}"
    );
    for pid in [ROOT, CHILD] {
        let store = dir.join(format!("pages-{pid}.img"));
        let mut b = fs::read(&store).unwrap();
        b[10] = 1;
        fs::write(&store, &b).unwrap();
    }
    let r = ImageReader::open(&dir).unwrap();
    assert_eq!(r.inventory().format_minor, 1);

    // The version inside the inventory record is checked too.
    let mut newer = inventory();
    newer.format_major = 3;
    put_inventory(&inv, &[newer]);
    let err = ImageReader::open(&dir).unwrap_err();
    assert!(
        matches!(err, ImageError::UnsupportedVersion { major: 3, .. }),
        "{err}"
    );
}

#[test]
fn manifest_mismatches_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    write_checkpoint(&dir);
    let path = dir.join("mm-100.img");
    let good = fs::read(&path).unwrap();

    let mut longer = good.clone();
    longer.push(0);
    fs::write(&path, &longer).unwrap();
    let err = ImageReader::open(&dir).unwrap_err();
    assert!(matches!(err, ImageError::SizeMismatch { .. }), "{err}");
    assert!(err.to_string().contains("mm-100.img"), "{err}");

    // Same size, different content that is itself well formed: only the manifest crc knows.
    let mut other = mm();
    other.brk += 0x1000;
    let bytes = encode_records(&path, ImageType::Mm, &[other]).unwrap();
    assert_eq!(bytes.len(), good.len());
    fs::write(&path, &bytes).unwrap();
    let err = ImageReader::open(&dir).unwrap_err();
    assert!(matches!(err, ImageError::ChecksumMismatch { .. }), "{err}");
    assert!(err.to_string().contains("mm-100.img"), "{err}");

    // A page store whose size changed.
    fs::write(&path, &good).unwrap();
    let pages = dir.join("pages-101.img");
    let f = fs::OpenOptions::new().append(true).open(&pages).unwrap();
    f.set_len(f.metadata().unwrap().len() + 4096).unwrap();
    let err = ImageReader::open(&dir).unwrap_err();
    assert!(matches!(err, ImageError::SizeMismatch { .. }), "{err}");
    assert!(err.to_string().contains("pages-101.img"), "{err}");
    f.set_len(f.metadata().unwrap().len() - 4096).unwrap();

    // A page store header that is not zero-padded.
    let mut store = fs::read(&pages).unwrap();
    store[100] = 1;
    fs::write(&pages, &store).unwrap();
    let err = ImageReader::open(&dir).unwrap_err();
    assert!(
        matches!(err, ImageError::BadHeader { offset: 100, .. }),
        "{err}"
    );
    store[100] = 0;
    store[4] = 1;
    fs::write(&pages, &store).unwrap();
    let err = ImageReader::open(&dir).unwrap_err();
    assert!(matches!(err, ImageError::WrongType { .. }), "{err}");
    store[4] = ImageType::Pages.code() as u8;
    fs::write(&pages, &store).unwrap();

    // A missing file, and extra files (ignored).
    ImageReader::open(&dir).unwrap();
    fs::write(dir.join("notes.txt"), b"hello").unwrap();
    fs::write(dir.join("mm-555.img"), b"junk").unwrap();
    ImageReader::open(&dir).unwrap();
    fs::remove_file(dir.join("fds-100.img")).unwrap();
    let err = ImageReader::open(&dir).unwrap_err();
    assert!(matches!(err, ImageError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("fds-100.img"), "{err}");
}

#[test]
fn bad_manifests_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    write_checkpoint(&dir);
    let inv_path = dir.join(INVENTORY_FILE);
    let good = ImageReader::open(&dir).unwrap().inventory().clone();
    type Change = Box<dyn Fn(&mut Inventory)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "traversal",
            Box::new(|i| i.manifest[0].name = "../mm-100.img".into()),
        ),
        (
            "foreign name",
            Box::new(|i| i.manifest[0].name = "passwd".into()),
        ),
        (
            "inventory",
            Box::new(|i| i.manifest[0].name = INVENTORY_FILE.into()),
        ),
        (
            "duplicate",
            Box::new(|i| {
                let e = i.manifest[0].clone();
                i.manifest.push(e);
            }),
        ),
        (
            "pages flag",
            Box::new(|i| {
                let e = i.manifest.iter_mut().find(|e| e.pages).unwrap();
                e.pages = false;
            }),
        ),
        (
            "pages crc",
            Box::new(|i| {
                let e = i.manifest.iter_mut().find(|e| e.pages).unwrap();
                e.crc32c = 1;
            }),
        ),
    ];
    for (what, change) in cases {
        let mut inv = good.clone();
        change(&mut inv);
        put_inventory(&inv_path, &[inv]);
        let err = ImageReader::open(&dir).unwrap_err();
        assert!(
            matches!(err, ImageError::BadManifest { .. }),
            "{what}: {err}"
        );
    }
    // Two inventory records.
    put_inventory(&inv_path, &[good.clone(), good.clone()]);
    let err = ImageReader::open(&dir).unwrap_err();
    assert!(
        matches!(err, ImageError::RecordNumber { found: 2, .. }),
        "{err}"
    );
    put_inventory(&inv_path, &[good]);
    ImageReader::open(&dir).unwrap();
}

#[test]
fn page_run_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    let runs = write_checkpoint(&dir);
    let r = ImageReader::open(&dir).unwrap();
    let good = runs[0].1.clone();
    let pages_path = r.pages_path(ROOT);
    assert_eq!(pages_path, dir.join("pages-100.img"));

    // A flipped byte in the second run's data.
    let mut store = fs::read(&pages_path).unwrap();
    let at = good[1].offset as usize + 5000;
    store[at] ^= 0x40;
    fs::write(&pages_path, &store).unwrap();
    let err = r.verify_pages(ROOT, &good).unwrap_err();
    assert!(
        matches!(err, ImageError::PageRunChecksum { offset, vaddr, .. }
            if offset == good[1].offset && vaddr == good[1].vaddr),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("pages-100.img"), "{msg}");
    assert!(msg.contains(&format!("{:#x}", good[1].offset)), "{msg}");
    assert!(msg.contains("0x7f0000000000"), "{msg}");
    store[at] ^= 0x40;
    fs::write(&pages_path, &store).unwrap();
    r.verify_pages(ROOT, &good).unwrap();

    let with = |f: &dyn Fn(&mut Vec<PageRun>)| {
        let mut v = good.clone();
        f(&mut v);
        r.verify_pages(ROOT, &v).unwrap_err()
    };
    let bad_run = |e: &ImageError, what: &str| {
        assert!(
            matches!(e, ImageError::BadPageRun { reason, .. } if reason.contains(what)),
            "{what}: {e}"
        );
        assert!(e.to_string().contains("pages-100.img"), "{e}");
    };
    bad_run(&with(&|v| v[0].offset += 1), "offset not page aligned");
    bad_run(&with(&|v| v[0].vaddr += 8), "address not page aligned");
    bad_run(&with(&|v| v[0].offset = 0), "header block");
    bad_run(&with(&|v| v[1].nr_pages = 4), "past the end");
    bad_run(&with(&|v| v[1].nr_pages = 0), "empty");
    bad_run(&with(&|v| v[1].nr_pages = u64::MAX / 2), "overflows");
    let err = with(&|v| v[1].offset = v[0].offset + PAGE_SIZE);
    assert!(
        matches!(err, ImageError::PageRunOverlap { space, .. } if space.contains("page store")),
        "{err}"
    );
    let err = with(&|v| v[1].vaddr = v[0].vaddr + PAGE_SIZE);
    assert!(
        matches!(err, ImageError::PageRunOverlap { space, .. } if space.contains("addresses")),
        "{err}"
    );
    let err = with(&|v| v.swap(0, 1));
    assert!(matches!(err, ImageError::PageRunOverlap { .. }), "{err}");
    // A run whose crc does not match although the data is intact.
    let err = with(&|v| v[0].crc32c ^= 1);
    assert!(matches!(err, ImageError::PageRunChecksum { .. }), "{err}");
}

#[test]
fn verify_pages_across_chunk_boundaries() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    let mut w = ImageWriter::create(&dir, false).unwrap();
    let mut pages = w.create_pages(7).unwrap();
    // Runs of odd sizes with a hole between some of them; stored out of address order.
    let layout = [
        (0x9000_0000u64, 5u64),
        (0x1000_0000, 1),
        (0x2000_0000, 7),
        (0x3000_0000, 2),
    ];
    let mut runs = Vec::new();
    for (i, (vaddr, n)) in layout.iter().enumerate() {
        runs.push(pages.append_run(*vaddr, &page_data(*vaddr, *n)).unwrap());
        if i == 1 {
            pages.append(&[0u8; 3 * PAGE_SIZE as usize]).unwrap();
        }
    }
    w.finish_pages(pages).unwrap();
    runs.sort_by_key(|r| r.vaddr);
    w.write(ImageType::Pagemap, Some(7), &runs).unwrap();
    w.commit(Inventory::default()).unwrap();
    let r = ImageReader::open(&dir).unwrap();
    for chunk in [4096, 8192, 3 * 4096, 5 * 4096, 64 << 10, 4 << 20] {
        r.verify_pages_chunked(7, &runs, chunk).unwrap();
    }
    // A flipped byte in each page is found with every chunk size.
    let path = r.pages_path(7);
    let good = fs::read(&path).unwrap();
    for run in &runs {
        for page in 0..run.nr_pages {
            let mut bad = good.clone();
            bad[(run.offset + page * PAGE_SIZE + 17) as usize] ^= 1;
            fs::write(&path, &bad).unwrap();
            for chunk in [4096, 3 * 4096, 64 << 10] {
                let err = r.verify_pages_chunked(7, &runs, chunk).unwrap_err();
                assert!(
                    matches!(err, ImageError::PageRunChecksum { vaddr, .. } if vaddr == run.vaddr),
                    "{err}"
                );
            }
        }
    }
    fs::write(&path, &good).unwrap();
    r.verify_all_pages().unwrap();
}

/// A page store big enough to be verified by several threads, one of its runs cut into pieces
/// shared between them: intact it passes; a flipped byte anywhere is found and blamed on its run.
#[test]
fn verify_pages_in_parallel_pieces() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    let mut w = ImageWriter::create(&dir, false).unwrap();
    let mut pages = w.create_pages(3).unwrap();
    let big = (PARALLEL_VERIFY_FROM + 6 * PIECE) / PAGE_SIZE;
    let layout = [(0x1000_0000u64, 3u64), (0x2000_0000, big), (0x9000_0000, 9)];
    let mut runs: Vec<_> = layout
        .iter()
        .map(|&(vaddr, n)| pages.append_run(vaddr, &page_data(vaddr, n)).unwrap())
        .collect();
    w.finish_pages(pages).unwrap();
    runs.sort_by_key(|r| r.vaddr);
    w.write(ImageType::Pagemap, Some(3), &runs).unwrap();
    w.commit(Inventory::default()).unwrap();
    let r = ImageReader::open(&dir).unwrap();
    r.verify_pages(3, &runs).unwrap();
    let path = r.pages_path(3);
    let good = fs::read(&path).unwrap();
    let big_run = &runs[1];
    for (run, at) in [
        (big_run, big_run.nr_pages * PAGE_SIZE * 3 / 4 + 5),
        (big_run, PIECE + 1),
        (&runs[2], 8 * PAGE_SIZE),
        (&runs[0], 0),
    ] {
        let mut bad = good.clone();
        bad[(run.offset + at) as usize] ^= 0x40;
        fs::write(&path, &bad).unwrap();
        let err = r.verify_pages(3, &runs).unwrap_err();
        assert!(
            matches!(err, ImageError::PageRunChecksum { vaddr, .. } if vaddr == run.vaddr),
            "{err}"
        );
    }
    fs::write(&path, &good).unwrap();
    r.verify_pages(3, &runs).unwrap();
}

#[test]
fn create_refuses_an_existing_checkpoint_and_overwrite_replaces_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    write_checkpoint(&dir);
    fs::write(dir.join("notes.txt"), b"keep me").unwrap();
    let before = names_in(&dir);

    let err = ImageWriter::create(&dir, false).unwrap_err();
    assert!(
        matches!(&err, ImageError::Exists { name, .. } if name == INVENTORY_FILE),
        "{err}"
    );
    assert_eq!(names_in(&dir), before);

    // Leftovers of an interrupted dump (no inventory) are refused too.
    fs::remove_file(dir.join(INVENTORY_FILE)).unwrap();
    let err = ImageWriter::create(&dir, false).unwrap_err();
    assert!(matches!(err, ImageError::Exists { .. }), "{err}");

    let mut w = ImageWriter::create(&dir, true).unwrap();
    assert_eq!(names_in(&dir), ["notes.txt"]);
    w.write(ImageType::Pstree, None, &pstree()[..1]).unwrap();
    w.commit(inventory()).unwrap();
    assert_eq!(names_in(&dir), ["inventory.img", "notes.txt", "pack.img"]);
    let r = ImageReader::open(&dir).unwrap();
    assert_eq!(r.inventory().manifest.len(), 1);
    assert_eq!(
        r.read::<PstreeEntry>(ImageType::Pstree, None)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(fs::read(dir.join("notes.txt")).unwrap(), b"keep me");

    // A path that is a file.
    let err = ImageWriter::create(&dir.join("notes.txt"), false).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::NotADirectory { .. } | ImageError::Io { .. }
        ),
        "{err}"
    );
}

#[test]
fn uncommitted_writer_removes_only_its_own_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("notes.txt"), b"keep me").unwrap();
    {
        let mut w = ImageWriter::create(&dir, false).unwrap();
        w.set_packing(false);
        w.write(ImageType::Pstree, None, &pstree()).unwrap();
        w.write(ImageType::Mm, Some(ROOT), &[mm()]).unwrap();
        let mut pages = w.create_pages(ROOT).unwrap();
        pages.append(&page_data(0, 2)).unwrap();
        // Someone else's file appears meanwhile; it has a cryo name but is not ours.
        fs::write(dir.join("fds-100.img"), b"not ours").unwrap();
        let err = w.write(ImageType::Fds, Some(ROOT), &fds()).unwrap_err();
        assert!(matches!(err, ImageError::Io { .. }), "{err}");
        assert!(names_in(&dir).len() > 2);
        drop(pages);
    }
    assert_eq!(names_in(&dir), ["fds-100.img", "notes.txt"]);
    assert_eq!(fs::read(dir.join("fds-100.img")).unwrap(), b"not ours");

    // A writer that made its directory removes it too (when empty) ...
    let fresh = tmp.path().join("x/y");
    {
        let mut w = ImageWriter::create(&fresh, false).unwrap();
        w.write(ImageType::Pstree, None, &pstree()).unwrap();
    }
    assert!(!tmp.path().join("x").exists());

    // ... and a failed commit leaves nothing behind either.
    let mut w = ImageWriter::create(&fresh, false).unwrap();
    w.write(ImageType::Pstree, None, &pstree()).unwrap();
    let _pages = w.create_pages(ROOT).unwrap();
    let err = w.commit(inventory()).unwrap_err();
    assert!(matches!(err, ImageError::PagesState { .. }), "{err}");
    assert!(!tmp.path().join("x").exists());
}

#[test]
fn writer_refuses_misuse() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = ImageWriter::create(tmp.path(), false).unwrap();
    assert_eq!(w.dir(), tmp.path());
    w.write(ImageType::Mm, Some(1), &[mm()]).unwrap();
    assert!(matches!(
        w.write(ImageType::Mm, Some(1), &[mm()]),
        Err(ImageError::AlreadyWritten { .. })
    ));
    assert!(matches!(
        w.write(ImageType::Mm, None, &[mm()]),
        Err(ImageError::BadRequest { .. })
    ));
    assert!(matches!(
        w.write(ImageType::Mm, Some(-3), &[mm()]),
        Err(ImageError::BadRequest { .. })
    ));
    assert!(matches!(
        w.write(ImageType::Pstree, Some(1), &pstree()),
        Err(ImageError::BadRequest { .. })
    ));
    assert!(matches!(
        w.write(ImageType::Inventory, None, &[inventory()]),
        Err(ImageError::BadRequest { .. })
    ));
    assert!(matches!(
        w.write(ImageType::Pages, Some(1), &[mm()]),
        Err(ImageError::BadRequest { .. })
    ));
    let mut pages = w.create_pages(1).unwrap();
    assert!(matches!(
        pages.append(&[0u8; 100]),
        Err(ImageError::PartialPage { .. })
    ));
    assert!(matches!(
        w.create_pages(1),
        Err(ImageError::AlreadyWritten { .. })
    ));
    // A page store that does not end on a page boundary.
    use std::io::Write;
    pages.file.write_all(&[1, 2, 3]).unwrap();
    let path = pages.path.clone();
    let err = w.finish_pages(pages).unwrap_err();
    assert!(
        matches!(err, ImageError::PagesSize { size: 4099, .. }),
        "{err}"
    );
    // A PagesFile from elsewhere.
    let _ = path;
    let mut other = ImageWriter::create(&tmp.path().join("other"), false).unwrap();
    let stray = other.create_pages(2).unwrap();
    assert!(matches!(
        w.finish_pages(stray),
        Err(ImageError::PagesState { .. })
    ));
}

#[test]
fn symlinked_image_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    write_checkpoint(&dir);
    for name in ["fds-100.img", "pages-100.img", INVENTORY_FILE] {
        let path = dir.join(name);
        let copy = tmp.path().join(format!("copy-{name}"));
        fs::rename(&path, &copy).unwrap();
        symlink(&copy, &path).unwrap();
        let err = ImageReader::open(&dir).unwrap_err();
        assert!(
            matches!(&err, ImageError::NotRegularFile { path: p, .. } if p.ends_with(name)),
            "{err}"
        );
        fs::remove_file(&path).unwrap();
        fs::rename(&copy, &path).unwrap();
    }
    // A directory in place of a file.
    let path = dir.join("mm-101.img");
    let copy = tmp.path().join("mm-copy");
    fs::rename(&path, &copy).unwrap();
    fs::create_dir(&path).unwrap();
    let err = ImageReader::open(&dir).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::NotRegularFile {
                what: "a directory",
                ..
            }
        ),
        "{err}"
    );
    fs::remove_dir(&path).unwrap();
    fs::rename(&copy, &path).unwrap();
    ImageReader::open(&dir).unwrap();

    // The writer never writes through a symlink planted at one of its names, and leaves it.
    let dir2 = tmp.path().join("ckpt2");
    let mut w = ImageWriter::create(&dir2, false).unwrap();
    w.set_packing(false);
    let target = tmp.path().join("victim");
    fs::write(&target, b"precious").unwrap();
    symlink(&target, dir2.join("mm-100.img")).unwrap();
    assert!(w.write(ImageType::Mm, Some(ROOT), &[mm()]).is_err());
    drop(w);
    assert_eq!(fs::read(&target).unwrap(), b"precious");
    assert!(fs::symlink_metadata(dir2.join("mm-100.img"))
        .unwrap()
        .file_type()
        .is_symlink());

    // Nor through one planted at pack.img: the first packed write fails and leaves it.
    let dir3 = tmp.path().join("ckpt3");
    let mut w = ImageWriter::create(&dir3, false).unwrap();
    symlink(&target, dir3.join("pack.img")).unwrap();
    assert!(w.write(ImageType::Mm, Some(ROOT), &[mm()]).is_err());
    drop(w);
    assert_eq!(fs::read(&target).unwrap(), b"precious");
    assert!(fs::symlink_metadata(dir3.join("pack.img"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(!dir3.join(INVENTORY_FILE).exists());
}

#[test]
fn show_renders_text_and_json() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    write_checkpoint(&dir);
    let text = show::render(&dir, false).unwrap();
    for needle in [
        "format      2.0",
        "cryo 0.1.0",
        "6.18.0-test",
        "2023-11-14 22:13:20.123 UTC",
        "root pid    100",
        "pages-100.img",
        "(page store)",
        "process 101",
        "/usr/bin/sleeper",
        "/srv/work",
        "0x401298", // rip of tid 100
        "0x7ffd00000000",
        "SIGUSR1",
        "SIGINT",
        "SIG_IGN",
        "ITIMER_REAL",
        "CLOCK_MONOTONIC",
        "RLIMIT_NOFILE",
        "400000-402000",
        "r-xp",
        "rw-p",
        "file_private",
        "O_WRONLY|O_APPEND|O_CLOEXEC",
        "4242",
        "/srv/work/log",
        "2 runs, 5 pages, 20480 bytes stored",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    // Default actions and unlimited rlimits are not listed.
    assert!(!text.contains("SIGTERM"), "{text}");
    assert!(!text.contains("RLIMIT_AS"), "{text}");

    let json: serde_json::Value = serde_json::from_str(&show::render(&dir, true).unwrap()).unwrap();
    assert_eq!(json["inventory"]["root_pid"], 100);
    assert_eq!(json["inventory"]["format"], "2.0");
    assert_eq!(json["inventory"]["files"].as_array().unwrap().len(), 13);
    assert_eq!(json["pstree"][1]["ppid"], 100);
    assert_eq!(json["pstree"][0]["threads"], serde_json::json!([100, 102]));
    let p = &json["processes"][0];
    assert_eq!(p["pid"], 100);
    assert_eq!(p["exe"], "/usr/bin/sleeper");
    assert_eq!(p["threads"][1]["tid"], 102);
    assert_eq!(p["threads"][0]["rip"], "0x401298");
    assert_eq!(p["sigactions"].as_array().unwrap().len(), 2);
    assert_eq!(p["rlimits"][0]["resource"], "RLIMIT_NOFILE");
    assert_eq!(p["vmas"][0]["start"], "0x400000");
    assert_eq!(p["vmas"][0]["pgoff"], "0x1000");
    assert_eq!(p["fds"][1]["pos"], 4242);
    assert_eq!(p["pages"]["pages"], 5);
    assert_eq!(p["pages"]["bytes"], 20480);
    assert_eq!(p["pages"]["store_size"], 6 * 4096);

    // A checkpoint with only an inventory still renders.
    let bare = tmp.path().join("bare");
    ImageWriter::create(&bare, false)
        .unwrap()
        .commit(inventory())
        .unwrap();
    let text = show::render(&bare, false).unwrap();
    assert!(
        text.contains("(no pstree.img)") && text.contains("(no core-100.img)"),
        "{text}"
    );
    serde_json::from_str::<serde_json::Value>(&show::render(&bare, true).unwrap()).unwrap();
    // And a broken one is an error naming the file.
    fs::write(bare.join(INVENTORY_FILE), b"junk").unwrap();
    let err = show::render(&bare, false).unwrap_err();
    assert!(err.to_string().contains("inventory.img"), "{err}");
}

#[test]
fn errors_are_send_and_sync() {
    fn check<T: std::error::Error + Send + Sync + 'static>() {}
    check::<ImageError>();
}

/// Throughput of `verify_pages` (run with `cargo test --release --lib verify_pages_throughput
/// -- --ignored --nocapture`).
#[test]
#[ignore]
fn verify_pages_throughput() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    let mut w = ImageWriter::create(&dir, false).unwrap();
    let mut pages = w.create_pages(1).unwrap();
    let total_pages = 256 * 256; // 256 MiB
    let data = page_data(0, 16);
    let mut runs = Vec::new();
    let mut vaddr = 0x1000_0000u64;
    for _ in 0..total_pages / 16 {
        runs.push(pages.append_run(vaddr, &data).unwrap());
        vaddr += 32 * PAGE_SIZE;
    }
    w.finish_pages(pages).unwrap();
    w.commit(Inventory::default()).unwrap();
    let r = ImageReader::open(&dir).unwrap();
    r.verify_pages(1, &runs).unwrap();
    for chunk in [256 << 10, 1 << 20, 4 << 20, 16 << 20] {
        let start = std::time::Instant::now();
        r.verify_pages_chunked(1, &runs, chunk).unwrap();
        let secs = start.elapsed().as_secs_f64();
        let bytes = (total_pages as u64 * PAGE_SIZE) as f64;
        println!(
            "verify_pages: chunk {} KiB, {} runs, {} MiB in {:.3} s = {:.2} GB/s",
            chunk >> 10,
            runs.len(),
            bytes as u64 >> 20,
            secs,
            bytes / secs / 1e9
        );
    }
}

// ---- signed checkpoints ----

fn sign_key(b: u8) -> SignKey {
    SignKey::from_bytes(Path::new("test-key"), &[b; 32]).unwrap()
}

/// Rewrites `name` in the checkpoint with `bytes` and fixes the inventory's manifest entry
/// (size and crc32c) to match: a deliberate alteration that every crc check accepts.
fn forge_file(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(name), bytes).unwrap();
    let raw = fs::read(dir.join(INVENTORY_FILE)).unwrap();
    let mut inv: Inventory = decode_records(Path::new("inv"), ImageType::Inventory, &raw)
        .unwrap()
        .remove(0);
    let e = inv.manifest.iter_mut().find(|e| e.name == name).unwrap();
    e.size = bytes.len() as u64;
    if !e.pages {
        e.crc32c = crc32c::crc32c(bytes);
    }
    let inv_path = dir.join(INVENTORY_FILE);
    put_inventory(&inv_path, &[inv]);
}

#[test]
fn signed_checkpoint_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    let runs = write_checkpoint_signed(&dir, Some(sign_key(1)));
    assert!(is_signed(&dir));
    let mode = fs::metadata(dir.join(SIGNATURE_FILE))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o600);
    let r = ImageReader::open_signed(&dir, &sign_key(1)).unwrap();
    assert!(r.is_verified());
    assert_eq!(
        r.read::<FdEntry>(ImageType::Fds, Some(ROOT)).unwrap(),
        fds()
    );
    for (pid, runs) in &runs {
        r.verify_pages(*pid, runs).unwrap();
    }
    // The signature is not a manifest file, and cannot be read or written as one.
    assert!(!r.has(ImageType::Signature, None));
    assert!(r.read::<FdEntry>(ImageType::Signature, None).is_err());
    // Without a key the signature is ignored: allowed, not verified.
    let r = ImageReader::open(&dir).unwrap();
    assert!(!r.is_verified());
    // show says so, without checking it.
    assert!(show::render(&dir, false)
        .unwrap()
        .contains("signed      yes"));
    assert!(show::render(&dir, true)
        .unwrap()
        .contains("\"signed\": true"));
}

#[test]
fn unsigned_or_wrongly_signed_checkpoints_are_refused_with_a_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plain");
    write_checkpoint(&dir);
    let err = ImageReader::open_signed(&dir, &sign_key(1)).unwrap_err();
    assert!(
        matches!(&err, ImageError::Unsigned { path } if path.ends_with(SIGNATURE_FILE)),
        "{err}"
    );

    let dir = tmp.path().join("signed");
    write_checkpoint_signed(&dir, Some(sign_key(1)));
    let err = ImageReader::open_signed(&dir, &sign_key(2)).unwrap_err();
    assert!(matches!(err, ImageError::BadSignature { .. }), "{err}");
    assert!(err.to_string().contains(SIGNATURE_FILE), "{err}");

    // Another checkpoint's signature (same key) does not fit this one.
    let other = tmp.path().join("other");
    ImageWriter::create(&other, false)
        .map(|mut w| {
            w.set_sign_key(Some(sign_key(1)));
            w.write(ImageType::Pstree, None, &pstree()).unwrap();
            w.commit(inventory()).unwrap();
        })
        .unwrap();
    fs::copy(other.join(SIGNATURE_FILE), dir.join(SIGNATURE_FILE)).unwrap();
    assert!(ImageReader::open_signed(&dir, &sign_key(1)).is_err());

    // A signature file that is a symlink, or gone.
    fs::remove_file(dir.join(SIGNATURE_FILE)).unwrap();
    symlink(other.join(SIGNATURE_FILE), dir.join(SIGNATURE_FILE)).unwrap();
    let err = ImageReader::open_signed(&dir, &sign_key(1)).unwrap_err();
    assert!(matches!(err, ImageError::NotRegularFile { .. }), "{err}");
    fs::remove_file(dir.join(SIGNATURE_FILE)).unwrap();
    let err = ImageReader::open_signed(&dir, &sign_key(1)).unwrap_err();
    assert!(matches!(err, ImageError::Unsigned { .. }), "{err}");
    // ... while an open without a key still works.
    ImageReader::open(&dir).unwrap();
}

/// Every byte of every file of a signed checkpoint matters (the page stores' data sampled).
#[test]
fn each_altered_byte_of_a_signed_checkpoint_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    write_checkpoint_signed(&dir, Some(sign_key(7)));
    let key = sign_key(7);
    ImageReader::open_signed(&dir, &key).unwrap();
    for name in names_in(&dir) {
        let path = dir.join(&name);
        let good = fs::read(&path).unwrap();
        let positions: Vec<usize> = if name.starts_with("pages-") {
            (0..good.len())
                .step_by(509)
                .chain([good.len() - 1])
                .collect()
        } else {
            (0..good.len()).collect()
        };
        for pos in positions {
            let mut bad = good.clone();
            bad[pos] ^= 0x10;
            fs::write(&path, &bad).unwrap();
            let err = ImageReader::open_signed(&dir, &key).unwrap_err();
            assert!(
                err.to_string().contains(&name),
                "{name} byte {pos}: error does not name the file: {err}"
            );
        }
        fs::write(&path, &good).unwrap();
    }
    ImageReader::open_signed(&dir, &key).unwrap();
}

/// A deliberate alteration that keeps every crc32c valid passes an unsigned open; the
/// signature catches it.
#[test]
fn forged_crcs_are_caught_by_the_signature() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    let runs = write_checkpoint_signed(&dir, Some(sign_key(3)));
    let key = sign_key(3);

    // Metadata: another file offset for fd 3, with valid record and manifest checksums.
    let mut evil = fds();
    evil[1].pos = 0;
    let path = dir.join("fds-100.img");
    forge_file(
        &dir,
        "fds-100.img",
        &encode_records(&path, ImageType::Fds, &evil).unwrap(),
    );
    let r = ImageReader::open(&dir).unwrap();
    assert_eq!(r.read::<FdEntry>(ImageType::Fds, Some(ROOT)).unwrap(), evil);
    let err = ImageReader::open_signed(&dir, &key).unwrap_err();
    assert!(matches!(err, ImageError::SignatureMismatch { .. }), "{err}");

    // Page data: a changed page whose run crc in the page map was fixed to match.
    let dir = tmp.path().join("ckpt2");
    write_checkpoint_signed(&dir, Some(sign_key(3)));
    let pages = dir.join("pages-101.img");
    let mut store = fs::read(&pages).unwrap();
    let mut runs101 = runs[1].1.clone();
    let run = &mut runs101[0];
    let at = run.offset as usize + 10;
    store[at] ^= 0xff;
    run.crc32c = crc32c::crc32c(
        &store[run.offset as usize..(run.offset + run.nr_pages * PAGE_SIZE) as usize],
    );
    forge_file(&dir, "pages-101.img", &store);
    let map = dir.join("pagemap-101.img");
    forge_file(
        &dir,
        "pagemap-101.img",
        &encode_records(&map, ImageType::Pagemap, &runs101).unwrap(),
    );
    let r = ImageReader::open(&dir).unwrap();
    let read_runs: Vec<PageRun> = r.read(ImageType::Pagemap, Some(CHILD)).unwrap();
    r.verify_pages(CHILD, &read_runs).unwrap();
    let err = ImageReader::open_signed(&dir, &key).unwrap_err();
    assert!(matches!(err, ImageError::SignatureMismatch { .. }), "{err}");
}

/// A file changed after a signed open is caught when it is read.
#[test]
fn signed_reader_rechecks_files_it_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    write_checkpoint_signed(&dir, Some(sign_key(4)));
    let r = ImageReader::open_signed(&dir, &sign_key(4)).unwrap();
    let mut evil = fds();
    evil[0].path = "/dev/zero".into();
    let path = dir.join("fds-101.img");
    forge_file(
        &dir,
        "fds-101.img",
        &encode_records(&path, ImageType::Fds, &evil).unwrap(),
    );
    // The forgery keeps the size, so it only shows in the checksums the reader holds.
    let err = r.read::<FdEntry>(ImageType::Fds, Some(CHILD)).unwrap_err();
    assert!(err.to_string().contains("fds-101.img"), "{err}");
    assert!(r.read::<FdEntry>(ImageType::Fds, Some(ROOT)).is_ok());
}

#[test]
fn overwrite_replaces_a_signature_and_writer_cleans_it_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    write_checkpoint_signed(&dir, Some(sign_key(5)));
    // A signature alone makes the directory a cryo directory.
    let err = ImageWriter::create(&dir, false).unwrap_err();
    assert!(matches!(err, ImageError::Exists { .. }), "{err}");
    // An unsigned checkpoint over a signed one leaves no stale signature.
    let mut w = ImageWriter::create(&dir, true).unwrap();
    assert!(!is_signed(&dir));
    w.write(ImageType::Pstree, None, &pstree()).unwrap();
    w.commit(inventory()).unwrap();
    assert!(!is_signed(&dir));
    assert!(ImageReader::open_signed(&dir, &sign_key(5)).is_err());

    // A signed commit that fails after writing the signature removes it with the rest.
    let dir2 = tmp.path().join("ckpt2");
    let mut w = ImageWriter::create(&dir2, false).unwrap();
    w.set_sign_key(Some(sign_key(5)));
    w.write(ImageType::Pstree, None, &pstree()).unwrap();
    // A directory planted at the inventory's temporary name makes the commit fail after
    // the signature was written.
    fs::create_dir(dir2.join("inventory.img.tmp")).unwrap();
    assert!(w.commit(inventory()).is_err());
    assert_eq!(names_in(&dir2), vec!["inventory.img.tmp".to_string()]);
}

#[test]
fn key_files_through_the_writer_and_reader() {
    let tmp = tempfile::tempdir().unwrap();
    let key_path = tmp.path().join("key");
    fs::write(&key_path, b"0123456789abcdef0123456789abcdef").unwrap();
    let dir = tmp.path().join("ckpt");
    let mut w = ImageWriter::create(&dir, false).unwrap();
    w.set_sign_key_file(Some(&key_path)).unwrap();
    w.write(ImageType::Pstree, None, &pstree()).unwrap();
    w.commit(inventory()).unwrap();
    let r = ImageReader::open_with_key_file(&dir, Some(&key_path)).unwrap();
    assert!(r.is_verified());
    assert!(!ImageReader::open_with_key_file(&dir, None)
        .unwrap()
        .is_verified());
    let short = tmp.path().join("short");
    fs::write(&short, b"abc").unwrap();
    let err = ImageReader::open_with_key_file(&dir, Some(&short)).unwrap_err();
    assert!(matches!(err, ImageError::BadKey { .. }), "{err}");
    let mut w = ImageWriter::create(&tmp.path().join("x"), false).unwrap();
    assert!(w.set_sign_key_file(Some(&short)).is_err());
}

#[test]
fn in_memory_checks_match_the_directory_reader() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    write_checkpoint(&dir);
    let bytes = fs::read(dir.join("fds-100.img")).unwrap();
    let recs: Vec<FdEntry> = decode_records(Path::new("f"), ImageType::Fds, &bytes).unwrap();
    assert_eq!(recs, fds());
    let store = fs::read(dir.join("pages-100.img")).unwrap();
    check_page_store(Path::new("p"), &store).unwrap();
    assert!(check_page_store(Path::new("p"), &store[..4095]).is_err());
    assert!(check_page_store(Path::new("p"), &store[..4097]).is_err());
    assert!(check_page_store(Path::new("p"), &[]).is_err());
    let mut bad = store.clone();
    bad[4000] = 1;
    assert!(check_page_store(Path::new("p"), &bad).is_err());
}

/// Cost of signing and of a signed open, next to an unsigned open, for a 256 MiB page store
/// (run with `cargo test --release --lib signed_open_throughput -- --ignored --nocapture`).
#[test]
#[ignore]
fn signed_open_throughput() {
    let tmp = tempfile::tempdir().unwrap();
    let data = page_data(0, 256);
    let write = |dir: &Path, key: Option<SignKey>| {
        let mut w = ImageWriter::create(dir, false).unwrap();
        w.set_sign_key(key);
        let mut pages = w.create_pages(1).unwrap();
        for i in 0..256u64 {
            pages
                .append_run(0x1000_0000 + i * (1 << 20), &data)
                .unwrap();
        }
        w.finish_pages(pages).unwrap();
        let start = std::time::Instant::now();
        w.commit(Inventory::default()).unwrap();
        start.elapsed().as_secs_f64()
    };
    let plain = write(&tmp.path().join("plain"), None);
    let signed = write(&tmp.path().join("signed"), Some(sign_key(1)));
    let start = std::time::Instant::now();
    ImageReader::open(&tmp.path().join("signed")).unwrap();
    let open = start.elapsed().as_secs_f64();
    let start = std::time::Instant::now();
    ImageReader::open_signed(&tmp.path().join("signed"), &sign_key(1)).unwrap();
    let open_signed = start.elapsed().as_secs_f64();
    println!(
        "256 MiB: commit {plain:.3} s, signed commit {signed:.3} s; open {open:.3} s, signed open {open_signed:.3} s ({:.2} GB/s hashed)",
        (256u64 << 20) as f64 / (open_signed - open) / 1e9
    );
}

/// A two-process checkpoint in the packed layout: the metadata files in `pack.img`, ROOT's
/// page store too (created for a few pages), CHILD's a file of its own (created for more than
/// [`writer::PACK_PAGES_MAX`]). Returns the page runs of each process.
fn write_packed_checkpoint(dir: &Path, key: Option<SignKey>) -> Vec<(i32, Vec<PageRun>)> {
    let mut w = ImageWriter::create(dir, false).unwrap();
    w.set_sign_key(key);
    w.write(ImageType::Pstree, None, &pstree()).unwrap();
    let mut all_runs = Vec::new();
    for pid in [ROOT, CHILD] {
        w.write(ImageType::Core, Some(pid), &[core(pid)]).unwrap();
        w.write(ImageType::Tasks, Some(pid), &tasks(pid)).unwrap();
        w.write(ImageType::Mm, Some(pid), &[mm()]).unwrap();
        w.write(ImageType::Fds, Some(pid), &fds()).unwrap();
        let want = if pid == ROOT {
            5 * PAGE_SIZE
        } else {
            writer::PACK_PAGES_MAX + PAGE_SIZE
        };
        let mut pages = w.create_pages_for(pid, want).unwrap();
        let mut runs = Vec::new();
        for (vaddr, n) in [(0x40_0000u64, 2u64), (0x7f00_0000_0000, 3)] {
            runs.push(pages.append_run(vaddr, &page_data(vaddr, n)).unwrap());
        }
        w.finish_pages(pages).unwrap();
        w.write(ImageType::Pagemap, Some(pid), &runs).unwrap();
        all_runs.push((pid, runs));
    }
    w.commit(inventory()).unwrap();
    all_runs
}

#[test]
fn packed_checkpoint_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    let runs = write_packed_checkpoint(&dir, None);
    assert_eq!(
        names_in(&dir),
        ["inventory.img", "pack.img", "pages-101.img"]
    );
    assert_eq!(
        fs::metadata(dir.join("pack.img"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let r = ImageReader::open(&dir).unwrap();
    assert_eq!(
        r.inventory().pack_size,
        fs::metadata(dir.join("pack.img")).unwrap().len()
    );
    assert_eq!(
        r.read::<PstreeEntry>(ImageType::Pstree, None).unwrap(),
        pstree()
    );
    for pid in [ROOT, CHILD] {
        assert_eq!(
            r.read_one::<ProcessCore>(ImageType::Core, Some(pid))
                .unwrap(),
            core(pid)
        );
        assert_eq!(
            r.read::<TaskCore>(ImageType::Tasks, Some(pid)).unwrap(),
            tasks(pid)
        );
        assert_eq!(
            r.read_one::<MmState>(ImageType::Mm, Some(pid)).unwrap(),
            mm()
        );
        assert_eq!(r.read::<FdEntry>(ImageType::Fds, Some(pid)).unwrap(), fds());
    }
    for (pid, want) in &runs {
        let back: Vec<PageRun> = r.read(ImageType::Pagemap, Some(*pid)).unwrap();
        assert_eq!(&back, want);
        r.verify_pages(*pid, &back).unwrap();
        r.check_page_runs(*pid, &back).unwrap();
        let loc = r.pages_loc(*pid).unwrap().unwrap();
        let store = PageStore::open_at(&loc).unwrap();
        for run in &back {
            let mut buf = vec![0u8; (run.nr_pages * PAGE_SIZE) as usize];
            store.read_exact_at(&mut buf, run.offset).unwrap();
            assert_eq!(buf, page_data(run.vaddr, run.nr_pages));
        }
        // Reading past the store's end is refused even when the file goes on.
        let mut past = vec![0u8; PAGE_SIZE as usize];
        assert!(store.read_exact_at(&mut past, loc.len).is_err());
    }
    let packed = r.pages_loc(ROOT).unwrap().unwrap();
    assert_eq!(packed.file, dir.join("pack.img"));
    assert!(
        packed.base > 0 && packed.base % PAGE_SIZE == 0,
        "{packed:?}"
    );
    assert!(
        packed.name.ends_with("pack.img:pages-100.img"),
        "{packed:?}"
    );
    let own = r.pages_loc(CHILD).unwrap().unwrap();
    assert_eq!((own.file.clone(), own.base), (dir.join("pages-101.img"), 0));
    r.verify_all_pages().unwrap();
    // `show` reads it like any other.
    let text = show::render(&dir, false).unwrap();
    assert!(text.contains("pack.img @ 0x1000"), "{text}");
    assert!(text.contains("12 of them in pack.img"), "{text}");
}

/// Packed page stores of more than `PACK_COPY_THREADS_FROM` bytes in all (copied into the pack
/// by several threads where there are several CPUs), of uneven sizes, come back page for page
/// in the layout the reader checks.
#[test]
fn many_packed_stores_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    let mut w = ImageWriter::create(&dir, false).unwrap();
    w.write(ImageType::Pstree, None, &pstree()).unwrap();
    let mut all = Vec::new();
    for (k, pid) in (300..309).enumerate() {
        w.write(ImageType::Core, Some(pid), &[core(pid)]).unwrap();
        let n = 7 + 13 * k as u64;
        let mut pages = w.create_pages_for(pid, (n + 1) * PAGE_SIZE).unwrap();
        let runs = vec![
            pages
                .append_run(0x10_0000 * (k as u64 + 1), &page_data(k as u64, n))
                .unwrap(),
            pages
                .append_run(0x7f00_0000_0000, &page_data(99, 1))
                .unwrap(),
        ];
        w.finish_pages(pages).unwrap();
        w.write(ImageType::Pagemap, Some(pid), &runs).unwrap();
        all.push((pid, runs));
    }
    w.commit(inventory()).unwrap();
    assert_eq!(names_in(&dir), ["inventory.img", "pack.img"]);
    let r = ImageReader::open(&dir).unwrap();
    r.verify_all_pages().unwrap();
    for (pid, runs) in &all {
        let loc = r.pages_loc(*pid).unwrap().unwrap();
        assert_eq!(loc.file, dir.join("pack.img"));
        let store = PageStore::open_at(&loc).unwrap();
        for run in runs {
            let mut buf = vec![0u8; (run.nr_pages * PAGE_SIZE) as usize];
            store.read_exact_at(&mut buf, run.offset).unwrap();
            let seed = if run.vaddr == 0x7f00_0000_0000 {
                99
            } else {
                run.vaddr / 0x10_0000 - 1
            };
            assert_eq!(buf, page_data(seed, run.nr_pages), "pid {pid}");
        }
    }
}

#[test]
fn each_corrupted_byte_of_the_pack_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    write_packed_checkpoint(&dir, None);
    let loc = ImageReader::open(&dir)
        .unwrap()
        .pages_loc(ROOT)
        .unwrap()
        .unwrap();
    let path = dir.join("pack.img");
    let good = fs::read(&path).unwrap();
    // Every byte up to the packed page store's first page (the pack's header block, the
    // metadata files, the zeros before the store and the store's header block), then the
    // page data sampled.
    let data_from = (loc.base + PAGE_SIZE) as usize;
    let positions = (0..data_from)
        .chain((data_from..good.len()).step_by(509))
        .chain([good.len() - 1]);
    for pos in positions {
        let mut bad = good.clone();
        bad[pos] ^= 0x01;
        fs::write(&path, &bad).unwrap();
        let r = ImageReader::open(&dir).and_then(|r| r.verify_all_pages());
        let err = r.expect_err(&format!("byte {pos} of {} flipped", good.len()));
        assert!(err.to_string().contains("pack.img"), "byte {pos}: {err}");
    }
    // Truncated, or longer.
    for len in [0, 15, 4095, 4096, data_from, good.len() - 1] {
        fs::write(&path, &good[..len]).unwrap();
        let err = ImageReader::open(&dir).unwrap_err();
        assert!(err.to_string().contains("pack.img"), "length {len}: {err}");
    }
    let mut longer = good.clone();
    longer.extend_from_slice(&[0; 4096]);
    fs::write(&path, &longer).unwrap();
    let err = ImageReader::open(&dir).unwrap_err();
    assert!(matches!(err, ImageError::SizeMismatch { .. }), "{err}");
    fs::remove_file(&path).unwrap();
    let err = ImageReader::open(&dir).unwrap_err();
    assert!(matches!(err, ImageError::Missing { .. }), "{err}");
    fs::write(&path, &good).unwrap();
    ImageReader::open(&dir).unwrap().verify_all_pages().unwrap();
}

#[test]
fn pack_layouts_other_than_the_writers_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    write_packed_checkpoint(&dir, None);
    let inv_path = dir.join(INVENTORY_FILE);
    let good = ImageReader::open(&dir).unwrap().inventory().clone();
    type Change = Box<dyn Fn(&mut Inventory)>;
    let meta = |i: &mut Inventory| -> usize {
        i.manifest
            .iter()
            .position(|e| e.packed && !e.pages && e.offset > 4096)
            .unwrap()
    };
    let cases: Vec<(&str, Change)> = vec![
        (
            "metadata moved by a byte",
            Box::new(move |i| {
                let k = meta(i);
                i.manifest[k].offset += 1;
            }),
        ),
        (
            "page store moved by a byte",
            Box::new(|i| {
                let e = i.manifest.iter_mut().find(|e| e.packed && e.pages).unwrap();
                e.offset += 1;
            }),
        ),
        (
            "page store moved by a page",
            Box::new(|i| {
                let e = i.manifest.iter_mut().find(|e| e.packed && e.pages).unwrap();
                e.offset += PAGE_SIZE;
            }),
        ),
        (
            "metadata after the page store",
            Box::new(|i| {
                let p = i
                    .manifest
                    .iter()
                    .find(|e| e.packed && e.pages)
                    .unwrap()
                    .offset;
                let e = i
                    .manifest
                    .iter_mut()
                    .find(|e| e.packed && !e.pages)
                    .unwrap();
                e.offset = p + 8192;
            }),
        ),
        (
            "an unpacked file with an offset",
            Box::new(|i| {
                let e = i.manifest.iter_mut().find(|e| !e.packed).unwrap();
                e.offset = 4096;
            }),
        ),
        (
            "a file dropped from the pack",
            Box::new(move |i| {
                let k = meta(i);
                i.manifest.remove(k);
            }),
        ),
        (
            "a pack size without packed files",
            Box::new(|i| {
                for e in i.manifest.iter_mut() {
                    e.packed = false;
                    e.offset = 0;
                }
            }),
        ),
        ("another pack size", Box::new(|i| i.pack_size -= 1)),
    ];
    for (what, change) in cases {
        let mut inv = good.clone();
        change(&mut inv);
        put_inventory(&inv_path, &[inv]);
        let err = ImageReader::open(&dir).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::BadManifest { .. }
                    | ImageError::BadPack { .. }
                    | ImageError::SizeMismatch { .. }
            ),
            "{what}: {err}"
        );
    }
    put_inventory(&inv_path, &[good]);
    ImageReader::open(&dir).unwrap();
}

#[test]
fn signed_packed_checkpoint_names_the_altered_part() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    write_packed_checkpoint(&dir, Some(sign_key(9)));
    let key = sign_key(9);
    let r = ImageReader::open_signed(&dir, &key).unwrap();
    assert!(r.is_verified());
    let loc = r.pages_loc(ROOT).unwrap().unwrap();
    let path = dir.join("pack.img");
    let good = fs::read(&path).unwrap();
    for pos in (0..good.len())
        .step_by(97)
        .chain([(loc.base + PAGE_SIZE + 5) as usize])
    {
        let mut bad = good.clone();
        bad[pos] ^= 0x10;
        fs::write(&path, &bad).unwrap();
        let err = ImageReader::open_signed(&dir, &key).unwrap_err();
        assert!(err.to_string().contains("pack.img"), "byte {pos}: {err}");
    }
    // Page data of the packed store: caught by the signature, named as the store in the pack.
    let mut bad = good.clone();
    bad[(loc.base + PAGE_SIZE + 5) as usize] ^= 0x10;
    fs::write(&path, &bad).unwrap();
    let err = ImageReader::open_signed(&dir, &key).unwrap_err();
    assert!(err.to_string().contains("pack.img:pages-100.img"), "{err}");
    fs::write(&path, &good).unwrap();
    ImageReader::open_signed(&dir, &key).unwrap();
}

#[test]
fn packing_stays_within_its_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    let mut w = ImageWriter::create(&dir, false).unwrap();
    let own = |pid: i32| dir.join(format!("pages-{pid}.img")).exists();
    // Too big for the pack: a file of its own.
    let big = w.create_pages_for(1, writer::PACK_PAGES_MAX + 1).unwrap();
    assert!(own(1));
    // The budget holds this many of the biggest packed stores, then files again.
    let fit = (writer::PACK_PAGES_BUDGET / writer::PACK_PAGES_MAX) as i32;
    let mut held = Vec::new();
    for pid in 2..2 + fit {
        held.push(w.create_pages_for(pid, writer::PACK_PAGES_MAX).unwrap());
        assert!(!own(pid), "pid {pid}");
    }
    let over = w.create_pages_for(100, PAGE_SIZE).unwrap();
    assert!(own(100));
    // A packed store holding more than it was created for is refused.
    let mut small = held.pop().unwrap();
    let n = writer::PACK_PAGES_MAX / PAGE_SIZE + 1;
    small.append(&page_data(0, n)).unwrap();
    let err = w.finish_pages(small).unwrap_err();
    assert!(matches!(err, ImageError::PagesState { .. }), "{err}");
    // Without packing, every store is a file.
    w.set_packing(false);
    let plain = w.create_pages_for(200, PAGE_SIZE).unwrap();
    assert!(own(200));
    drop((big, held, over, plain));
}

/// fds records holding TCP queues (byte fields big enough to pass through unbuffered) between
/// small ones.
fn fds_with_queues() -> Vec<FdEntry> {
    use crate::proto::{fd_entry::State, InetSocketState, TcpConnection};
    let queue = |n: usize, k: u8| {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(k))
            .collect::<Vec<_>>()
    };
    let mut all = fds();
    for (fd, inq, outq) in [(4, 300_000, 70_001), (5, 0, 20_000), (6, 3, 5)] {
        all.push(FdEntry {
            fd,
            kind: FdKind::FdInet as i32,
            state: Some(State::Inet(InetSocketState {
                tcp: Some(TcpConnection {
                    inq: queue(inq, 7).into(),
                    outq: queue(outq, 13).into(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            ..Default::default()
        });
    }
    all.extend(fds());
    all
}

/// Streaming a metadata file gives exactly the bytes of encoding it in memory, with its
/// length and checksum; a failing sink's error is returned.
#[test]
fn streamed_records_are_the_encoded_bytes() {
    let path = Path::new("/x/fds-1.img");
    for records in [fds_with_queues(), fds(), Vec::new()] {
        let want = encode_records(path, ImageType::Fds, &records).unwrap();
        let mut got = Vec::new();
        let mut calls = 0;
        let (len, crc) = super::format::stream_records(path, ImageType::Fds, &records, &mut |d| {
            calls += 1;
            got.extend_from_slice(d);
            Ok(())
        })
        .unwrap();
        assert_eq!(got, want);
        assert_eq!(len, want.len() as u64);
        assert_eq!(super::format::records_len(&records), len);
        assert_eq!(crc, crc32c::crc32c(&want));
        assert!(calls <= 7, "{calls} pieces: small ones are gathered");
    }
    let err = super::format::stream_records(path, ImageType::Fds, &fds_with_queues(), &mut |_| {
        Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
    })
    .unwrap_err();
    assert!(err.to_string().contains("/x/fds-1.img"), "{err}");
}

/// A file reserved in pack.img and filled later, with other files written in between, reads
/// back like the others; one reserved but never filled is refused at finish.
#[test]
fn reserved_files_are_filled_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    let mut w = ImageWriter::create(&dir, false).unwrap();
    let big = fds_with_queues();
    assert!(
        super::format::records_len(&big) >= 256 << 10,
        "big enough to be streamed"
    );
    let mut place = w.reserve(ImageType::Fds, Some(ROOT), &big).unwrap();
    w.write(ImageType::Fds, Some(ROOT + 1), &fds()).unwrap();
    let unfilled = w.reserve(ImageType::Fds, Some(ROOT + 2), &fds()).unwrap();
    assert!(matches!(
        w.reserve(ImageType::Fds, Some(ROOT), &big).unwrap_err(),
        ImageError::AlreadyWritten { .. }
    ));
    place.fill(&big).unwrap();
    w.finish_reserved(place).unwrap();
    let err = w.finish_reserved(unfilled).unwrap_err();
    assert!(err.to_string().contains("fds-102.img"), "{err}");
    let err = w
        .commit(Inventory {
            root_pid: ROOT,
            ..Default::default()
        })
        .unwrap_err();
    assert!(err.to_string().contains("fds-102.img"), "{err}");
    assert!(!dir.exists(), "a refused commit leaves nothing behind");

    // Again, every reserved file filled.
    let mut w = ImageWriter::create(&dir, false).unwrap();
    let mut place = w.reserve(ImageType::Fds, Some(ROOT), &big).unwrap();
    w.write(ImageType::Fds, Some(ROOT + 1), &fds()).unwrap();
    let mut other = w.reserve(ImageType::Fds, Some(ROOT + 3), &fds()).unwrap();
    other.fill(&fds()).unwrap();
    w.finish_reserved(other).unwrap();
    place.fill(&big).unwrap();
    w.finish_reserved(place).unwrap();
    w.commit(Inventory {
        root_pid: ROOT,
        ..Default::default()
    })
    .unwrap();
    let r = ImageReader::open(&dir).unwrap();
    assert_eq!(r.read::<FdEntry>(ImageType::Fds, Some(ROOT)).unwrap(), big);
    assert_eq!(
        r.read::<FdEntry>(ImageType::Fds, Some(ROOT + 1)).unwrap(),
        fds()
    );
    assert_eq!(
        r.read::<FdEntry>(ImageType::Fds, Some(ROOT + 3)).unwrap(),
        fds()
    );
}
