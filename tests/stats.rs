//! `--print-stats` on dump and restore, checked against what the workload holds: bigmem with
//! 80 MiB of data and 2 MiB of touched-but-zero memory. The figures must add up (every page
//! written is read back; the zero pages are skipped, and freed in the dumped process, as are
//! the pages written once they are in the page store), the data pages must be filled with
//! userfaultfd, by several threads where there are several CPUs (a process this big is), and
//! the restored process must pass its own check.

mod common;

use common::*;

#[test]
fn print_stats_figures_add_up() {
    let _serial = serial();
    let test = "print_stats_figures_add_up";
    let Some(bin) = prepare(test, "bigmem") else {
        return;
    };
    let mut w = Workload::start(&bin, &["80", "2"]);
    let images = images_dir();
    let dump = dump_ok(&w, images.path(), &["--print-stats"]);
    w.wait_killed_by_dump();
    // A process this big has its memory freed by the dumper beside its exit (process_mrelease),
    // when the call comes early enough; either way the restore below needs its PID free.
    let log = String::from_utf8_lossy(&dump.stderr);
    assert!(
        log.contains("memory freed beside the exit") || log.contains("memory left to the exit"),
        "{}",
        show_output("dump", &dump)
    );
    let scanned = stat_figure(&dump, "pages scanned");
    let written = stat_figure(&dump, "pages written");
    let zero = stat_figure(&dump, "pages skipped as zero");
    assert!(written >= 80 * 256, "{}", show_output("dump", &dump));
    assert!(zero >= 2 * 256, "{}", show_output("dump", &dump));
    assert_eq!(scanned, written + zero, "{}", show_output("dump", &dump));
    // The process was to be killed: its 2 MiB of touched zero pages were given back as found.
    let freed = stat_figure(&dump, "of which freed");
    assert!(
        (2 * 256..=zero).contains(&freed),
        "{}",
        show_output("dump", &dump)
    );
    // And its stored pages once they were in the page store: all but the last few megabytes
    // of each command's stream, which the drain had not reached when the blob finished.
    let handed = stat_figure(&dump, "freed once stored");
    assert!(
        (written - 8 * 256..=written).contains(&handed),
        "{}",
        show_output("dump", &dump)
    );
    assert_eq!(
        stat_figure(&dump, "page bytes written"),
        written * 4096,
        "{}",
        show_output("dump", &dump)
    );

    let (result, out) = check_restore(&w, restore_spawn(images.path(), &["--print-stats"]));
    assert_eq!(
        result,
        "PASS",
        "{}\n{}",
        show_output("restore", &out),
        w.logs()
    );
    assert!(out.status.success(), "{}", show_output("restore", &out));
    assert_eq!(
        stat_figure(&out, "pages read"),
        written,
        "{}",
        show_output("restore", &out)
    );
    assert!(
        stat_figure(&out, "with userfaultfd") >= 80 * 256,
        "{}",
        show_output("restore", &out)
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    assert_eq!(
        stat_figure(&out, "by threads at once"),
        cpus.min(4),
        "{}",
        show_output("restore", &out)
    );
}

/// The file system type (`f_type` of statfs) of `path`.
fn fs_type(path: &std::path::Path) -> i64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    // SAFETY: statfs is plain data, filled by the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string, st a valid out-pointer.
    assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut st) }, 0, "statfs");
    st.f_type
}

/// Pages of `path` in the page cache, and pages in all (mincore on a mapping of it).
fn cached_pages(path: &std::path::Path) -> (usize, usize) {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).expect("open page store");
    let len = file.metadata().expect("stat").len() as usize;
    let pages = len.div_ceil(4096);
    // SAFETY: a new read-only shared mapping of an open file, chosen by the kernel; it is
    // only passed to mincore (never read) and unmapped below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(addr, libc::MAP_FAILED, "mmap {}", path.display());
    let mut vec = vec![0u8; pages];
    // SAFETY: addr..addr+len is the mapping made above; vec has a byte per page.
    let r = unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) };
    // SAFETY: unmaps exactly the mapping made above.
    unsafe { libc::munmap(addr, len) };
    assert_eq!(r, 0, "mincore {}", path.display());
    (vec.iter().filter(|&&b| b & 1 != 0).count(), pages)
}

/// A big process's page store is dropped from the page cache as its pages are placed (the
/// restore reuses that memory), unless `--keep-page-cache`; either way the process passes its
/// check. On ext4 the page store holds no blocks past its end (the dump reserves blocks for
/// the zero pages too, and gives them back).
#[test]
fn restore_drops_the_page_store_from_the_page_cache_unless_kept() {
    let _serial = serial();
    let test = "restore_drops_the_page_store_from_the_page_cache_unless_kept";
    let Some(bin) = prepare(test, "bigmem") else {
        return;
    };
    let mut w = Workload::start(&bin, &["80", "8"]);
    let images = images_dir();
    dump_ok(&w, images.path(), &[]);
    w.wait_killed_by_dump();
    let store = std::fs::read_dir(images.path())
        .expect("images dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("pages-"))
        })
        .expect("a page store of its own");
    // On ext4 the dump reserved blocks for every page it scanned (zero ones too) and gave
    // back what it did not write: none allocated past the end.
    let st = fs_type(images.path());
    if st == 0xEF53 {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&store).expect("stat page store");
        assert!(
            meta.blocks() * 512 <= meta.len().next_multiple_of(4096),
            "{} bytes allocated for a {}-byte page store",
            meta.blocks() * 512,
            meta.len()
        );
    }
    let (cached, pages) = cached_pages(&store);
    if cached < pages * 9 / 10 {
        // Reclaimed meanwhile: nothing to tell apart.
        return skip(
            test,
            &format!("the page store was not cached after the dump ({cached} of {pages})"),
        );
    }
    let result = restore_and_check_with(&w, images.path(), &["--keep-page-cache"]);
    assert_eq!(result, "PASS", "kept\n{}", w.logs());
    let (cached, _) = cached_pages(&store);
    assert!(
        cached >= pages * 9 / 10,
        "{cached} of {pages} pages cached, kept"
    );
    w.reset_protocol();
    let result = restore_and_check(&w, images.path());
    assert_eq!(result, "PASS", "dropped\n{}", w.logs());
    let (cached, _) = cached_pages(&store);
    assert!(
        cached <= pages / 10,
        "{cached} of {pages} pages still cached"
    );
}
