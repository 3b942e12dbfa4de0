//! Trustworthiness of checkpoints on disk, through the `cryo` binary: signed checkpoints
//! (`--sign-key`) are refused when unsigned, signed with another key or altered in any byte of
//! any file, and restore when intact; image files are private and never reached through a
//! planted symlink. Also the seed corpus of the fuzz targets (`fuzz_seed_corpus`, run by
//! `scripts/fuzz.sh`).

mod common;

use common::*;
use cryo::image::{ImageReader, ImageType, ImageWriter, SignKey, SIGNATURE_FILE};
use cryo::proto::{
    FdEntry, FdKind, FileId, Inventory, MmState, PageRun, ProcessCore, PstreeEntry, SigAction,
    TaskCore, UserRegs, Vma, VmaKind,
};
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .expect("stat")
        .permissions()
        .mode()
        & 0o7777
}

/// `cryo restore -D DIR -d ARGS`, expected to be refused before any process is created:
/// returns its stderr.
fn restore_refused(w: &Workload, dir: &Path, extra: &[&str], what: &str) -> String {
    let d = dir.to_str().expect("utf-8 path");
    let mut args = vec!["restore", "-D", d, "-d"];
    args.extend_from_slice(extra);
    let out = cryo_output(&args, TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{what}: restore was not refused\n{}",
        show_output("cryo restore", &out)
    );
    assert!(
        proc_state(w.pid).is_none(),
        "{what}: a process with pid {} exists after a refused restore",
        w.pid
    );
    stderr
}

/// A signed checkpoint: every file with one byte flipped (in turn), the checkpoint without
/// its signature, and a wrong key are all refused by `restore --sign-key`, naming what is
/// wrong and creating no process; the intact checkpoint with the right key restores and the
/// workload passes its own check.
#[test]
fn signed_checkpoint_refuses_any_alteration_and_restores_intact() {
    let _serial = serial();
    const TEST: &str = "signed_checkpoint_refuses_any_alteration_and_restores_intact";
    let Some(bin) = prepare(TEST, "full_state") else {
        return;
    };
    let keys = tempfile::tempdir().expect("key dir");
    let key = keys.path().join("key");
    let other_key = keys.path().join("other");
    write_key(&key, 1, 32);
    write_key(&other_key, 2, 32);
    let key_s = key.to_str().expect("utf-8");

    let mut w = Workload::start(&bin, &[]);
    let images = images_dir();
    dump_ok(&w, images.path(), &["--sign-key", key_s]);
    w.wait_killed_by_dump();
    let names = dir_names(images.path());
    assert!(names.iter().any(|n| n == SIGNATURE_FILE), "{names:?}");
    assert_eq!(mode(&images.path().join(SIGNATURE_FILE)), 0o600);

    for name in &names {
        let path = images.path().join(name);
        let good = fs::read(&path).expect("read image");
        // A byte in the middle: inside the records of a metadata file, inside the page data
        // of a page store.
        let pos = if name.starts_with("pages-") {
            4096 + (good.len() - 4096) / 2
        } else {
            good.len() / 2
        };
        let mut bad = good.clone();
        bad[pos] ^= 0x01;
        fs::write(&path, &bad).expect("write image");
        let stderr = restore_refused(&w, images.path(), &["--sign-key", key_s], name);
        assert!(
            stderr.contains(name.as_str()),
            "{name} byte {pos} flipped: the error does not name the file:\n{stderr}"
        );
        fs::write(&path, &good).expect("restore image");
    }

    let stderr = restore_refused(
        &w,
        images.path(),
        &["--sign-key", other_key.to_str().expect("utf-8")],
        "wrong key",
    );
    assert!(stderr.contains("bad signature"), "{stderr}");

    let unsigned = copy_images(images.path());
    fs::remove_file(unsigned.path().join(SIGNATURE_FILE)).expect("remove signature");
    let stderr = restore_refused(&w, unsigned.path(), &["--sign-key", key_s], "unsigned");
    assert!(stderr.contains("not signed"), "{stderr}");

    let short = keys.path().join("short");
    write_key(&short, 3, 8);
    let stderr = restore_refused(
        &w,
        images.path(),
        &["--sign-key", short.to_str().expect("utf-8")],
        "short key",
    );
    assert!(stderr.contains("at least 16"), "{stderr}");

    let result = restore_and_check_with(&w, images.path(), &["--sign-key", key_s]);
    assert_eq!(result, "PASS", "{}", w.logs());
}

/// Without `--sign-key`, a signed checkpoint restores as any other (its signature is not
/// checked); a dump with an unusable key file is refused before the target is touched and
/// leaves nothing behind.
#[test]
fn signing_is_optional_at_restore_and_a_bad_key_stops_the_dump_early() {
    let _serial = serial();
    const TEST: &str = "signing_is_optional_at_restore_and_a_bad_key_stops_the_dump_early";
    let Some(bin) = prepare(TEST, "counter") else {
        return;
    };
    let keys = tempfile::tempdir().expect("key dir");
    let key = keys.path().join("key");
    let short = keys.path().join("short");
    write_key(&key, 4, 64);
    write_key(&short, 5, 15);
    let mut w = Workload::start(&bin, &[]);

    let images = images_dir();
    let dir = images.path().join("new");
    let out = dump(&w, &dir, &["--sign-key", short.to_str().expect("utf-8")]);
    assert!(!out.status.success(), "{}", show_output("dump", &out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("signing key"),
        "{}",
        show_output("dump", &out)
    );
    assert!(!dir.exists(), "a refused dump left {}", dir.display());
    assert!(w.original_running(), "the target died\n{}", w.logs());
    assert_eq!(tracer_pid(w.pid), Some(0), "the target is still traced");
    assert!(!matches!(proc_state(w.pid), Some('T' | 't')));

    dump_ok(&w, &dir, &["--sign-key", key.to_str().expect("utf-8")]);
    w.wait_killed_by_dump();
    let result = restore_and_check(&w, &dir);
    assert_eq!(result, "PASS", "{}", w.logs());
}

/// A real dump: the directories cryo creates are 0700 and every file 0600. Symlinks planted
/// at image names are never followed: without --overwrite the dump is refused, with it the
/// links are replaced and their targets left as they were. At restore a symlinked image is
/// refused.
#[test]
fn image_files_are_private_and_symlinks_are_not_followed() {
    let _serial = serial();
    const TEST: &str = "image_files_are_private_and_symlinks_are_not_followed";
    let Some(bin) = prepare(TEST, "counter") else {
        return;
    };
    let mut w = Workload::start(&bin, &[]);
    let images = images_dir();
    let dir = images.path().join("a/b");
    let pid = w.pid;

    // Symlinks at image names, pointing at files that must stay untouched.
    let victims = tempfile::tempdir().expect("victims dir");
    let planted = [
        format!("mm-{pid}.img"),
        "inventory.img.tmp".to_string(),
        SIGNATURE_FILE.to_string(),
    ];
    fs::create_dir_all(&dir).expect("mkdir");
    for name in &planted {
        let victim = victims.path().join(name);
        fs::write(&victim, b"precious").expect("victim");
        symlink(&victim, dir.join(name)).expect("symlink");
    }
    let out = dump(&w, &dir, &[]);
    assert!(!out.status.success(), "{}", show_output("dump", &out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--overwrite"),
        "{}",
        show_output("dump", &out)
    );
    assert!(w.original_running(), "the target died\n{}", w.logs());

    let key = victims.path().join("key");
    write_key(&key, 6, 32);
    dump_ok(
        &w,
        &dir,
        &["--overwrite", "--sign-key", key.to_str().expect("utf-8")],
    );
    w.wait_killed_by_dump();
    for name in &planted {
        assert_eq!(
            fs::read(victims.path().join(name)).expect("victim"),
            b"precious",
            "{name}: the symlink's target was written"
        );
    }
    assert!(!dir.join("inventory.img.tmp").exists());
    for name in dir_names(&dir) {
        let path = dir.join(&name);
        let ft = fs::symlink_metadata(&path).expect("stat").file_type();
        assert!(ft.is_file(), "{name} is not a regular file");
        assert_eq!(mode(&path), 0o600, "{name}");
    }

    // Directories cryo creates itself are 0700.
    let fresh = images.path().join("c/d");
    ImageReader::open(&dir).expect("the overwritten checkpoint is valid");
    let mut w2 = Workload::start(&bin, &[]);
    dump_ok(&w2, &fresh, &[]);
    w2.wait_killed_by_dump();
    for d in [images.path().join("c"), fresh.clone()] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
    for name in dir_names(&fresh) {
        assert_eq!(mode(&fresh.join(&name)), 0o600, "{name}");
    }
    drop(w2);

    // Restore refuses a symlinked image file (the pack, holding every image of this small
    // process).
    let pack = dir.join("pack.img");
    let moved = victims.path().join("pack-moved");
    fs::rename(&pack, &moved).expect("move pack");
    symlink(&moved, &pack).expect("symlink pack");
    let stderr = restore_refused(&w, &dir, &[], "symlinked pack");
    assert!(stderr.contains("pack.img"), "{stderr}");
    fs::remove_file(&pack).expect("remove link");
    fs::rename(&moved, &pack).expect("move pack back");
    let result = restore_and_check(&w, &dir);
    assert_eq!(result, "PASS", "{}", w.logs());
}

// ---- The fuzz targets' seed corpus ----

/// The key the fuzz targets open signed checkpoints with (`fuzz/src/lib.rs`, `FUZZ_KEY`).
const FUZZ_KEY: &[u8; 32] = b"cryo-fuzz-key-0123456789abcdef!!";
/// Flags of the fuzz inputs (`fuzz/src/lib.rs`).
const FIX_RECORD_CRCS: u8 = 1;
const FIX_MANIFEST: u8 = 2;
const OPEN_SIGNED: u8 = 4;
/// At most this many page runs in a `verify_pages` input.
const VP_MAX_RUNS: usize = 64;

/// A small checkpoint of every file type written through the public writer, signed with
/// the fuzz key: two processes, a few records of each kind, two page runs each.
fn write_synthetic_checkpoint(dir: &Path) {
    let key = SignKey::from_bytes(Path::new("fuzz-key"), FUZZ_KEY).expect("key");
    let mut w = ImageWriter::create(dir, false).expect("create");
    w.set_sign_key(Some(key));
    let pids = [40, 41];
    let tree: Vec<PstreeEntry> = pids
        .iter()
        .map(|&pid| PstreeEntry {
            pid,
            ppid: if pid == 40 { 0 } else { 40 },
            pgid: 40,
            sid: 40,
            threads: vec![pid],
            ..Default::default()
        })
        .collect();
    w.write(ImageType::Pstree, None, &tree).expect("pstree");
    for pid in pids {
        let core = ProcessCore {
            pid,
            sigactions: vec![SigAction {
                signo: 14,
                handler: 0x40_1000,
                flags: 0x0400_0000,
                restorer: 0x7f00_0000_1000,
                mask: 1 << 9,
            }],
            umask: 0o22,
            cwd: "/".into(),
            root: "/".into(),
            exe: "/bin/true".into(),
            exit_signal: 17,
            ..Default::default()
        };
        w.write(ImageType::Core, Some(pid), &[core]).expect("core");
        let task = TaskCore {
            tid: pid,
            regs: Some(UserRegs {
                rip: 0x40_1234,
                rsp: 0x7ffd_0000_1000,
                ..Default::default()
            }),
            xsave: vec![0x5a; 64],
            comm: "seed".into(),
            ..Default::default()
        };
        w.write(ImageType::Tasks, Some(pid), &[task])
            .expect("tasks");
        let mm = MmState {
            vmas: vec![
                Vma {
                    start: 0x40_0000,
                    end: 0x40_2000,
                    prot: 5,
                    flags: 2,
                    kind: VmaKind::VmaFilePrivate as i32,
                    file: Some(FileId {
                        path: "/bin/true".into(),
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
            ..Default::default()
        };
        w.write(ImageType::Mm, Some(pid), &[mm]).expect("mm");
        let fds = vec![FdEntry {
            fd: 0,
            kind: FdKind::FdChr as i32,
            path: "/dev/null".into(),
            ..Default::default()
        }];
        w.write(ImageType::Fds, Some(pid), &fds).expect("fds");
        let mut pages = w.create_pages(pid).expect("pages");
        let mut runs = Vec::new();
        for (vaddr, n) in [(0x40_0000u64, 1u64), (0x7f00_0000_0000, 2)] {
            let data: Vec<u8> = (0..n * 4096)
                .map(|i| (i as u8) ^ (vaddr >> 12) as u8)
                .collect();
            runs.push(pages.append_run(vaddr, &data).expect("append"));
        }
        w.finish_pages(pages).expect("finish pages");
        w.write(ImageType::Pagemap, Some(pid), &runs)
            .expect("pagemap");
    }
    w.commit(Inventory {
        tool_version: "seed".into(),
        root_pid: 40,
        pids: pids.to_vec(),
        ..Default::default()
    })
    .expect("commit");
}

/// Encodes a checkpoint directory as a `checkpoint_dir` input: `[flags]` then per file
/// `[name_len: u8][name][data_len: u32 LE][data]`.
fn container(dir: &Path, flags: u8) -> Vec<u8> {
    let mut out = vec![flags];
    for name in dir_names(dir) {
        let data = fs::read(dir.join(&name)).expect("read image");
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&data);
    }
    out
}

/// Writes the seeds of every fuzz target made from the checkpoint in `dir` into
/// `out/<target>/<tag>-...`.
fn write_seeds(out: &Path, tag: &str, dir: &Path) {
    let reader = ImageReader::open(dir).expect("seed checkpoint opens");
    for t in ["image_file", "checkpoint_dir", "verify_pages"] {
        fs::create_dir_all(out.join(t)).expect("mkdir corpus");
    }
    for name in dir_names(dir) {
        let Some((ty, pid)) = ImageType::parse_file_name(&name) else {
            continue;
        };
        let data = fs::read(dir.join(&name)).expect("read image");
        let mut seed = vec![(ty.code() - 1) as u8, FIX_RECORD_CRCS];
        // A page store's readers look at its header block only.
        let keep = if ty == ImageType::Pages {
            data.len().min(8192)
        } else {
            data.len()
        };
        seed.extend_from_slice(&data[..keep]);
        fs::write(out.join("image_file").join(format!("{tag}-{name}")), seed).expect("seed");

        if let (ImageType::Pagemap, Some(pid)) = (ty, pid) {
            let runs: Vec<PageRun> = reader.read(ty, Some(pid)).expect("pagemap");
            let runs = &runs[..runs.len().min(VP_MAX_RUNS)];
            let store = fs::read(reader.pages_path(pid)).expect("page store");
            let mut seed = vec![0u8, runs.len() as u8];
            for r in runs {
                seed.extend_from_slice(&r.vaddr.to_le_bytes());
                seed.extend_from_slice(&r.nr_pages.to_le_bytes());
                seed.extend_from_slice(&r.offset.to_le_bytes());
                seed.extend_from_slice(&r.crc32c.to_le_bytes());
                seed.extend_from_slice(&[0; 4]);
            }
            seed.extend_from_slice(&store[4096..]);
            fs::write(out.join("verify_pages").join(format!("{tag}-{pid}")), seed).expect("seed");
        }
    }
    let ckpt = out.join("checkpoint_dir");
    fs::write(
        ckpt.join(format!("{tag}-signed")),
        container(dir, OPEN_SIGNED),
    )
    .expect("seed");
    fs::write(
        ckpt.join(format!("{tag}-fixups")),
        container(dir, FIX_RECORD_CRCS | FIX_MANIFEST | OPEN_SIGNED),
    )
    .expect("seed");
}

/// Writes the fuzz targets' seed corpus into `$CRYO_FUZZ_CORPUS` (run by scripts/fuzz.sh):
/// from a synthetic checkpoint of every file type, and, where this machine can dump, from a
/// real signed checkpoint of the `counter` workload.
#[test]
#[ignore = "run by scripts/fuzz.sh with CRYO_FUZZ_CORPUS=DIR"]
fn fuzz_seed_corpus() {
    let out = PathBuf::from(
        std::env::var_os("CRYO_FUZZ_CORPUS").expect("CRYO_FUZZ_CORPUS names the output dir"),
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let synthetic = tmp.path().join("synthetic");
    write_synthetic_checkpoint(&synthetic);
    write_seeds(&out, "synthetic", &synthetic);

    let _serial = serial();
    let Some(bin) = prepare("fuzz_seed_corpus (real checkpoint)", "counter") else {
        return;
    };
    let key = tmp.path().join("key");
    fs::write(&key, FUZZ_KEY).expect("key");
    let mut w = Workload::start(&bin, &[]);
    let real = tmp.path().join("real");
    dump_ok(&w, &real, &["--sign-key", key.to_str().expect("utf-8")]);
    w.wait_killed_by_dump();
    write_seeds(&out, "counter", &real);
}
