//! Reading and validating a checkpoint directory: the inventory and its manifest, metadata
//! files, and page runs against page stores. Never writes, and never reads page data except
//! in [`ImageReader::verify_pages`].

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::proto::{Inventory, ManifestEntry, PageRun};

use super::format::{
    check_header, decode_payload, scan_records, ScanSummary, HEADER_LEN, PAGE_SIZE,
};
use super::writer::checked_name;
use super::{ImageError, ImageType, FORMAT_MAJOR, FORMAT_MINOR, INVENTORY_FILE};

/// Chunk size for reading page stores in `verify_pages`.
const VERIFY_CHUNK: usize = 1 << 20;
/// Buffer size for reading metadata files.
const META_BUF: usize = 64 << 10;

/// A validated checkpoint directory. [`ImageReader::open`] checks the inventory and every
/// file of the manifest (except page data); the other methods read single files and check the
/// bytes they decode against the manifest again.
#[derive(Debug)]
pub struct ImageReader {
    dir: PathBuf,
    inventory: Inventory,
    manifest: BTreeMap<String, ManifestEntry>,
}

/// Opens an image file for reading without following symlinks (or blocking on a FIFO), and
/// returns it with its size. `ENOENT` is reported as `missing` if given.
fn open_image(path: &Path, missing_is_error: bool) -> Result<(File, u64), ImageError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => ImageError::NotRegularFile {
                path: path.to_owned(),
                what: "a symbolic link",
            },
            Some(libc::ENOENT) if missing_is_error => ImageError::Missing {
                path: path.to_owned(),
            },
            _ => ImageError::io(path, "open", e),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| ImageError::io(path, "stat", e))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let what = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else {
            "not a regular file"
        };
        return Err(ImageError::NotRegularFile {
            path: path.to_owned(),
            what,
        });
    }
    Ok((file, meta.len()))
}

/// Checks the header block of an open page store of `len` bytes.
fn check_pages_header(file: &File, path: &Path, len: u64) -> Result<(), ImageError> {
    if len < PAGE_SIZE || len % PAGE_SIZE != 0 {
        return Err(ImageError::PagesSize {
            path: path.to_owned(),
            size: len,
        });
    }
    let mut block = vec![0u8; PAGE_SIZE as usize];
    file.read_exact_at(&mut block, 0)
        .map_err(|e| ImageError::io(path, "read header", e))?;
    check_header(path, &block[..HEADER_LEN], ImageType::Pages)?;
    if let Some(i) = block[HEADER_LEN..].iter().position(|&b| b != 0) {
        let offset = (HEADER_LEN + i) as u64;
        return Err(ImageError::BadHeader {
            path: path.to_owned(),
            offset,
            value: u64::from(block[HEADER_LEN + i]),
        });
    }
    Ok(())
}

/// Scans a whole metadata file (header, framing, checksums), calling `on_record` per record.
fn scan_file(
    file: File,
    len: u64,
    path: &Path,
    ty: ImageType,
    on_record: impl FnMut(u64, &[u8]) -> Result<(), ImageError>,
) -> Result<ScanSummary, ImageError> {
    let reader = BufReader::with_capacity(META_BUF, file.take(len));
    scan_records(reader, len, path, ty, on_record)
}

/// Checks a file's size against its manifest entry.
fn check_size(path: &Path, entry: &ManifestEntry, found: u64) -> Result<(), ImageError> {
    if found != entry.size {
        return Err(ImageError::SizeMismatch {
            path: path.to_owned(),
            expected: entry.size,
            found,
        });
    }
    Ok(())
}

fn check_crc(path: &Path, entry: &ManifestEntry, summary: &ScanSummary) -> Result<(), ImageError> {
    if summary.file_crc != entry.crc32c {
        return Err(ImageError::ChecksumMismatch {
            path: path.to_owned(),
            expected: entry.crc32c,
            found: summary.file_crc,
        });
    }
    Ok(())
}

impl ImageReader {
    /// Reads and checks `DIR/inventory.img`, then checks every manifest entry: the file exists
    /// (opened without following symlinks) and is a regular file, its size matches, and
    /// - for a metadata file: its header (type from the file name), record framing, record
    ///   checksums and the whole-file crc32c;
    /// - for a page store: its header block only (its data is checked by `verify_pages`).
    ///
    /// Files not in the manifest are ignored.
    pub fn open(dir: &Path) -> Result<Self, ImageError> {
        let inv_path = dir.join(INVENTORY_FILE);
        let (file, len) = open_image(&inv_path, false)?;
        let mut inventories = Vec::new();
        let summary = scan_file(
            file,
            len,
            &inv_path,
            ImageType::Inventory,
            |offset, payload| {
                inventories.push(decode_payload::<Inventory>(&inv_path, offset, payload)?);
                Ok(())
            },
        )?;
        if inventories.len() != 1 {
            return Err(ImageError::RecordNumber {
                path: inv_path,
                found: inventories.len(),
            });
        }
        let inventory = inventories.remove(0);
        // The header's version and the record's must agree: nothing else covers the header
        // of the inventory (a flipped minor would otherwise pass as "newer").
        if inventory.format_major != FORMAT_MAJOR || inventory.format_minor != summary.minor {
            return Err(ImageError::UnsupportedVersion {
                path: inv_path,
                major: inventory.format_major,
                minor: inventory.format_minor,
            });
        }
        if inventory.format_minor > FORMAT_MINOR {
            tracing::warn!(
                path = %inv_path.display(),
                minor = inventory.format_minor,
                "checkpoint written by a newer cryo"
            );
        }

        let mut manifest = BTreeMap::new();
        for entry in &inventory.manifest {
            let bad = |reason| ImageError::BadManifest {
                path: inv_path.clone(),
                name: entry.name.clone(),
                reason,
            };
            let (ty, _) = ImageType::parse_file_name(&entry.name)
                .filter(|(ty, _)| *ty != ImageType::Inventory)
                .ok_or_else(|| bad("not the name of a cryo image file"))?;
            if entry.pages != (ty == ImageType::Pages) {
                return Err(bad("page store flag does not match the file name"));
            }
            if entry.pages && entry.crc32c != 0 {
                return Err(bad("page store entries carry crc32c 0"));
            }
            if manifest.insert(entry.name.clone(), entry.clone()).is_some() {
                return Err(bad("listed twice"));
            }
        }

        let reader = ImageReader {
            dir: dir.to_owned(),
            inventory,
            manifest,
        };
        for (name, entry) in &reader.manifest {
            reader.check_entry(name, entry)?;
        }
        tracing::debug!(
            dir = %dir.display(),
            files = reader.manifest.len(),
            root_pid = reader.inventory.root_pid,
            "checkpoint validated"
        );
        Ok(reader)
    }

    fn check_entry(&self, name: &str, entry: &ManifestEntry) -> Result<(), ImageError> {
        let path = self.dir.join(name);
        let (file, len) = open_image(&path, true)?;
        check_size(&path, entry, len)?;
        let Some((ty, _)) = ImageType::parse_file_name(name) else {
            return Err(ImageError::BadManifest {
                path: self.dir.join(INVENTORY_FILE),
                name: name.to_owned(),
                reason: "not the name of a cryo image file",
            });
        };
        if ty == ImageType::Pages {
            return check_pages_header(&file, &path, len);
        }
        let summary = scan_file(file, len, &path, ty, |_, _| Ok(()))?;
        check_crc(&path, entry, &summary)
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The inventory (with the manifest as written).
    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// Whether the checkpoint has a file of this type (for this pid).
    pub fn has(&self, ty: ImageType, pid: Option<i32>) -> bool {
        self.manifest.contains_key(&ty.file_name(pid))
    }

    /// Reads every record of a metadata file, checking header, framing, record checksums, and
    /// the file's size and crc32c against the manifest. The file must be in the manifest.
    pub fn read<M: prost::Message + Default>(
        &self,
        ty: ImageType,
        pid: Option<i32>,
    ) -> Result<Vec<M>, ImageError> {
        let name = checked_name(&self.dir, ty, pid)?;
        let path = self.dir.join(&name);
        let reason = match ty {
            ImageType::Inventory => Some("the inventory is read by open; use inventory()"),
            ImageType::Pages => {
                Some("a page store holds no records; use pages_path and verify_pages")
            }
            _ => None,
        };
        if let Some(reason) = reason {
            return Err(ImageError::BadRequest { path, reason });
        }
        let entry = self
            .manifest
            .get(&name)
            .ok_or_else(|| ImageError::NotInManifest { path: path.clone() })?;
        let (file, len) = open_image(&path, true)?;
        check_size(&path, entry, len)?;
        let mut out = Vec::new();
        let summary = scan_file(file, len, &path, ty, |offset, payload| {
            out.push(decode_payload::<M>(&path, offset, payload)?);
            Ok(())
        })?;
        check_crc(&path, entry, &summary)?;
        Ok(out)
    }

    /// Reads a metadata file that must hold exactly one record.
    pub fn read_one<M: prost::Message + Default>(
        &self,
        ty: ImageType,
        pid: Option<i32>,
    ) -> Result<M, ImageError> {
        let mut records = self.read::<M>(ty, pid)?;
        if records.len() != 1 {
            return Err(ImageError::RecordNumber {
                path: self.dir.join(ty.file_name(pid)),
                found: records.len(),
            });
        }
        Ok(records.remove(0))
    }

    /// The path of `pages-PID.img`.
    pub fn pages_path(&self, pid: i32) -> PathBuf {
        self.dir.join(ImageType::Pages.file_name(Some(pid)))
    }

    /// Checks page map runs against the page store of `pid`: every run is non-empty, its
    /// offset and address are page aligned, it lies inside the file after the header block,
    /// no two runs overlap in the file, addresses ascend without overlap, and each run's data
    /// matches its crc32c. The store is read sequentially in large chunks, never page by page.
    /// With no runs and no page store in the manifest, there is nothing to check.
    pub fn verify_pages(&self, pid: i32, runs: &[PageRun]) -> Result<(), ImageError> {
        self.verify_pages_chunked(pid, runs, VERIFY_CHUNK)
    }

    pub(crate) fn verify_pages_chunked(
        &self,
        pid: i32,
        runs: &[PageRun],
        chunk: usize,
    ) -> Result<(), ImageError> {
        let name = checked_name(&self.dir, ImageType::Pages, Some(pid))?;
        let path = self.dir.join(&name);
        let Some(entry) = self.manifest.get(&name) else {
            if runs.is_empty() {
                return Ok(());
            }
            return Err(ImageError::NotInManifest { path });
        };
        let (file, len) = open_image(&path, true)?;
        check_size(&path, entry, len)?;
        check_pages_header(&file, &path, len)?;
        let start = std::time::Instant::now();
        let checked = verify_runs(&file, &path, len, runs, chunk)?;
        tracing::debug!(
            pid,
            runs = runs.len(),
            bytes = checked,
            elapsed_ms = start.elapsed().as_millis() as u64,
            "page store verified"
        );
        Ok(())
    }

    /// Everything [`ImageReader::verify_pages`] checks except the page data: the page store's
    /// size against the manifest, its header block, and the shape of every run (non-empty,
    /// aligned, inside the file after the header block, no overlaps). No page data is read, so
    /// this is cheap; whoever reads the data later checks each run's crc32c as it goes
    /// ([`PageStore::check_run`]).
    pub fn check_page_runs(&self, pid: i32, runs: &[PageRun]) -> Result<(), ImageError> {
        let name = checked_name(&self.dir, ImageType::Pages, Some(pid))?;
        let path = self.dir.join(&name);
        let Some(entry) = self.manifest.get(&name) else {
            if runs.is_empty() {
                return Ok(());
            }
            return Err(ImageError::NotInManifest { path });
        };
        let (file, len) = open_image(&path, true)?;
        check_size(&path, entry, len)?;
        check_pages_header(&file, &path, len)?;
        check_run_shapes(&path, len, runs).map(drop)
    }

    /// Reads every `pagemap-PID.img` in the manifest and verifies its runs against the page
    /// store (`cryo check`).
    pub fn verify_all_pages(&self) -> Result<(), ImageError> {
        let pids: Vec<i32> = self
            .manifest
            .keys()
            .filter_map(|n| match ImageType::parse_file_name(n) {
                Some((ImageType::Pagemap, Some(pid))) => Some(pid),
                _ => None,
            })
            .collect();
        for pid in pids {
            let runs: Vec<PageRun> = self.read(ImageType::Pagemap, Some(pid))?;
            self.verify_pages(pid, &runs)?;
        }
        Ok(())
    }
}

/// A page store opened for reading its data run by run (restore reads each run into place
/// and checks it on the way, instead of reading the whole store twice). Opening checks the
/// file type and the header block; [`ImageReader::check_page_runs`] checks the size and the
/// runs' shapes beforehand.
#[derive(Debug)]
pub struct PageStore {
    file: File,
    path: PathBuf,
    len: u64,
}

impl PageStore {
    /// Opens `pages-PID.img` at `path` (never through a symlink) and checks its header block.
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        let (file, len) = open_image(path, true)?;
        check_pages_header(&file, path, len)?;
        Ok(Self {
            file,
            path: path.to_owned(),
            len,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the store holds no page data (only its header block).
    pub fn is_empty(&self) -> bool {
        self.len <= PAGE_SIZE
    }

    /// The open file, e.g. to map parts of it.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.file)
    }

    /// Fills `buf` from `offset`; a store that ends first is reported as truncated.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| read_pages_error(&self.path, offset, e))
    }

    /// Checks the crc32c computed over all of `run`'s data against its page map record.
    pub fn check_run(&self, run: &PageRun, computed: u32) -> Result<(), ImageError> {
        check_run_crc(&self.path, run, computed)
    }
}

/// The checks of `verify_pages` on an open page store of `len` bytes; returns the number of
/// data bytes checksummed.
fn verify_runs(
    file: &File,
    path: &Path,
    len: u64,
    runs: &[PageRun],
    chunk: usize,
) -> Result<u64, ImageError> {
    let order = check_run_shapes(path, len, runs)?;

    // Checksums: one sequential pass. The window [win_start, win_start + win_len) of the file
    // is held in `buf`; it is refilled, as far as the buffer or the file allows, only when a
    // run needs bytes outside it, so runs packed together cost one read per chunk.
    let mut buf = vec![
        0u8;
        chunk
            .max(PAGE_SIZE as usize)
            .min((len - PAGE_SIZE) as usize)
    ];
    let (mut win_start, mut win_len) = (0u64, 0usize);
    let mut total = 0u64;
    for run in order {
        let end = run.offset + run.nr_pages * PAGE_SIZE;
        let mut pos = run.offset;
        let mut crc = 0u32;
        while pos < end {
            if pos < win_start || pos >= win_start + win_len as u64 {
                win_start = pos;
                win_len = ((len - pos) as usize).min(buf.len());
                file.read_exact_at(&mut buf[..win_len], pos)
                    .map_err(|e| read_pages_error(path, pos, e))?;
            }
            let from = (pos - win_start) as usize;
            let to = ((end - win_start) as usize).min(win_len);
            crc = crc32c::crc32c_append(crc, &buf[from..to]);
            pos = win_start + to as u64;
        }
        check_run_crc(path, run, crc)?;
        total += run.nr_pages * PAGE_SIZE;
    }
    Ok(total)
}

/// The error for a failed read of page data at `pos`.
fn read_pages_error(path: &Path, pos: u64, e: io::Error) -> ImageError {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => ImageError::Truncated {
            path: path.to_owned(),
            offset: pos,
            what: "page store shorter than its size",
        },
        _ => ImageError::io(path, "read pages", e),
    }
}

/// Compares the crc32c computed over a run's data with the one its page map record carries.
fn check_run_crc(path: &Path, run: &PageRun, computed: u32) -> Result<(), ImageError> {
    if computed != run.crc32c {
        return Err(ImageError::PageRunChecksum {
            path: path.to_owned(),
            offset: run.offset,
            vaddr: run.vaddr,
            nr_pages: run.nr_pages,
            stored: run.crc32c,
            computed,
        });
    }
    Ok(())
}

/// The shape checks of `verify_pages` for a page store of `len` bytes (no data is read):
/// returns the runs sorted by their offset in the store.
fn check_run_shapes<'a>(
    path: &Path,
    len: u64,
    runs: &'a [PageRun],
) -> Result<Vec<&'a PageRun>, ImageError> {
    let bad = |run: &PageRun, reason: String| ImageError::BadPageRun {
        path: path.to_owned(),
        offset: run.offset,
        vaddr: run.vaddr,
        nr_pages: run.nr_pages,
        reason,
    };
    // Shape of each run, and the address order.
    let mut prev_vend: Option<(u64, u64)> = None;
    for run in runs {
        if run.nr_pages == 0 {
            return Err(bad(run, "empty run".into()));
        }
        if run.vaddr % PAGE_SIZE != 0 {
            return Err(bad(run, "address not page aligned".into()));
        }
        if run.offset % PAGE_SIZE != 0 {
            return Err(bad(run, "offset not page aligned".into()));
        }
        if run.offset < PAGE_SIZE {
            return Err(bad(run, "offset inside the header block".into()));
        }
        let bytes = run.nr_pages.checked_mul(PAGE_SIZE);
        let vend = bytes.and_then(|b| run.vaddr.checked_add(b));
        let fend = bytes.and_then(|b| run.offset.checked_add(b));
        let (Some(vend), Some(fend)) = (vend, fend) else {
            return Err(bad(run, "length overflows".into()));
        };
        if fend > len {
            return Err(bad(
                run,
                format!("ends at {fend:#x}, past the end of the page store ({len:#x})"),
            ));
        }
        if let Some((prev_vaddr, prev_end)) = prev_vend {
            if run.vaddr < prev_end {
                return Err(ImageError::PageRunOverlap {
                    path: path.to_owned(),
                    offset: run.offset,
                    vaddr: run.vaddr,
                    other_vaddr: prev_vaddr,
                    space: "addresses overlap or are out of order",
                });
            }
        }
        prev_vend = Some((run.vaddr, vend));
    }

    // File ranges: sorted by offset, no overlap. The sort also gives the read order.
    let mut order: Vec<&PageRun> = runs.iter().collect();
    order.sort_by_key(|r| r.offset);
    for pair in order.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if a.offset + a.nr_pages * PAGE_SIZE > b.offset {
            return Err(ImageError::PageRunOverlap {
                path: path.to_owned(),
                offset: b.offset,
                vaddr: b.vaddr,
                other_vaddr: a.vaddr,
                space: "page store ranges overlap",
            });
        }
    }

    Ok(order)
}
