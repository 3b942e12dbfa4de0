//! Reading and validating a checkpoint directory: the inventory and its manifest, the layout
//! of `pack.img`, metadata files, page runs against page stores, and (when given a key) the
//! signature. Never writes, and never reads page data except in [`ImageReader::verify_pages`]
//! and, for a signed open, to hash it.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::proto::{FileDigest, Inventory, ManifestEntry, PageRun, Signature};

use super::format::{
    check_header, decode_payload, scan_records, FromReader, ScanSummary, HEADER_LEN, PAGE_SIZE,
};
use super::sign::{self, HashingReader, SignKey, SIGNATURE_FILE};
use super::writer::checked_name;
use super::{ImageError, ImageType, FORMAT_MAJOR, FORMAT_MINOR, INVENTORY_FILE};

/// Chunk size for reading page stores in `verify_pages`.
const VERIFY_CHUNK: usize = 1 << 20;
/// Page stores with at least this many bytes of runs are verified by several threads.
pub(crate) const PARALLEL_VERIFY_FROM: u64 = 64 << 20;
/// The most threads verifying one page store.
const MAX_VERIFY_THREADS: usize = 4;
/// Runs are verified in pieces of at most this many bytes when several threads share the work.
pub(crate) const PIECE: u64 = 16 << 20;
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
    /// `pack.img`, when some manifest entries are packed.
    pack: Option<Pack>,
    /// For a checkpoint opened with a key: the verified SHA-256 of every manifest file, which
    /// [`ImageReader::read`] checks the bytes it decodes against again.
    signed: Option<BTreeMap<String, [u8; 32]>>,
}

/// `pack.img`, open, with its packed metadata files read into memory (they come first, from
/// the end of the header block on; see [`open_pack`]).
#[derive(Debug)]
struct Pack {
    file: File,
    path: PathBuf,
    /// The bytes from [`PAGE_SIZE`] to the end of the last packed metadata file.
    meta: Meta,
}

/// The packed metadata files' bytes: read into memory, or, past [`MAP_META_FROM`] bytes
/// (megabytes of socket queues), mapped from the page cache, which spares cryo faulting in
/// and filling as much fresh memory (about 6 ms for 10 MiB here).
#[derive(Debug)]
enum Meta {
    Read(Vec<u8>),
    Mapped(crate::sys::uffd::FileWindow),
}

/// Packed metadata of at least this many bytes is mapped rather than read.
const MAP_META_FROM: u64 = 1 << 20;

impl Pack {
    /// The bytes of a packed metadata file (its layout was checked by `open_pack`).
    fn meta_bytes(&self, entry: &ManifestEntry) -> &[u8] {
        let from = (entry.offset - PAGE_SIZE) as usize;
        let all = match &self.meta {
            Meta::Read(v) => v.as_slice(),
            Meta::Mapped(w) => w.bytes(),
        };
        &all[from..from + entry.size as usize]
    }
}

/// Where a page store's bytes are: a file of its own (`base` 0) or a part of `pack.img`.
/// Cheap to clone and to send to the threads that read the pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PagesLoc {
    /// The file holding the store.
    pub file: PathBuf,
    /// Where the store starts in it.
    pub base: u64,
    /// The store's size (header block included).
    pub len: u64,
    /// What errors call it: the file, or `DIR/pack.img:pages-PID.img`.
    pub name: PathBuf,
}

/// How errors name a file of the checkpoint: its path, or for a packed one
/// `DIR/pack.img:NAME`.
fn entry_path(dir: &Path, name: &str, entry: Option<&ManifestEntry>) -> PathBuf {
    match entry {
        Some(e) if e.packed => dir.join(format!("{}:{name}", ImageType::Pack.file_name(None))),
        _ => dir.join(name),
    }
}

/// Opens an image file for reading without following symlinks (or blocking on a FIFO), and
/// returns it with its size. `ENOENT` is reported as `missing` if given.
pub(crate) fn open_image(path: &Path, missing_is_error: bool) -> Result<(File, u64), ImageError> {
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

/// Checks a page store's size: the header block plus whole pages.
fn check_pages_size(path: &Path, len: u64) -> Result<(), ImageError> {
    if len < PAGE_SIZE || len % PAGE_SIZE != 0 {
        return Err(ImageError::PagesSize {
            path: path.to_owned(),
            size: len,
        });
    }
    Ok(())
}

/// Checks the header block of a page store of `len` bytes at `base` of an open file; returns
/// the format minor its header gives.
fn check_pages_header(file: &File, path: &Path, base: u64, len: u64) -> Result<u16, ImageError> {
    check_pages_size(path, len)?;
    let mut block = vec![0u8; PAGE_SIZE as usize];
    file.read_exact_at(&mut block, base)
        .map_err(|e| ImageError::io(path, "read header", e))?;
    check_block(path, &block, ImageType::Pages)?;
    Ok(super::format::header_version(&block[..HEADER_LEN]).1)
}

/// A page store's header (which no checksum covers) must give the inventory's format minor:
/// every file of a checkpoint is written by one cryo.
fn check_pages_minor(path: &Path, found: u16, inventory: &Inventory) -> Result<(), ImageError> {
    if u32::from(found) != inventory.format_minor {
        return Err(ImageError::MinorMismatch {
            path: path.to_owned(),
            found: u32::from(found),
            expected: inventory.format_minor,
        });
    }
    Ok(())
}

/// Checks a page store held in memory the way [`ImageReader::open`] checks one on disk: its
/// size (the header block plus whole pages) and its header block (header, then zeros). The
/// page data is not looked at; `verify_pages` checks it against a page map. `path` only names
/// the file in errors.
pub fn check_page_store(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    check_pages_size(path, bytes.len() as u64)?;
    check_block(path, &bytes[..PAGE_SIZE as usize], ImageType::Pages)
}

/// Checks the 4096-byte header block of a page store or of `pack.img`: the header, then zeros.
fn check_block(path: &Path, block: &[u8], ty: ImageType) -> Result<(), ImageError> {
    check_header(path, &block[..HEADER_LEN], ty)?;
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
/// With a `hasher`, every byte of the file (exactly `len` of them when the scan succeeds)
/// goes into it as it is read.
fn scan_file(
    file: File,
    len: u64,
    path: &Path,
    ty: ImageType,
    hasher: Option<&mut Sha256>,
    on_record: impl FnMut(u64, &[u8]) -> Result<(), ImageError>,
) -> Result<ScanSummary, ImageError> {
    let hashing = HashingReader {
        inner: file.take(len),
        hasher,
    };
    let reader = BufReader::with_capacity(META_BUF, hashing);
    scan_records(FromReader(reader), len, path, ty, on_record)
}

/// Scans a metadata file held in memory, like [`scan_file`].
fn scan_bytes(
    bytes: &[u8],
    path: &Path,
    ty: ImageType,
    hasher: Option<&mut Sha256>,
    on_record: impl FnMut(u64, &[u8]) -> Result<(), ImageError>,
) -> Result<ScanSummary, ImageError> {
    if let Some(h) = hasher {
        h.update(bytes);
    }
    scan_records(bytes, bytes.len() as u64, path, ty, on_record)
}

/// Opens `pack.img` when the manifest packs anything and checks its layout: its size is the
/// inventory's `pack_size`, its header block is a pack's, and the packed files tile it from
/// the end of the header block on without gap or overlap: metadata files back to back first,
/// then page stores, each from the next page boundary (the bytes skipped must be zero), the
/// last ending at the end of the file. So every byte of the pack is either fixed or in a file
/// the manifest checks (and a signature covers). Reads the metadata files into memory.
fn open_pack(
    dir: &Path,
    inv_path: &Path,
    inventory: &Inventory,
    manifest: &BTreeMap<String, ManifestEntry>,
) -> Result<Option<Pack>, ImageError> {
    let path = dir.join(ImageType::Pack.file_name(None));
    let mut packed: Vec<&ManifestEntry> = manifest.values().filter(|e| e.packed).collect();
    if packed.is_empty() {
        if inventory.pack_size != 0 {
            return Err(ImageError::BadManifest {
                path: inv_path.to_owned(),
                name: ImageType::Pack.file_name(None),
                reason: "a pack size is given but no file is packed",
            });
        }
        return Ok(None);
    }
    let (file, len) = open_image(&path, true)?;
    if len != inventory.pack_size {
        return Err(ImageError::SizeMismatch {
            path,
            expected: inventory.pack_size,
            found: len,
        });
    }
    if len < PAGE_SIZE {
        return Err(ImageError::BadPack {
            path,
            offset: len,
            reason: "shorter than its header block",
        });
    }
    let mut block = vec![0u8; PAGE_SIZE as usize];
    file.read_exact_at(&mut block, 0)
        .map_err(|e| ImageError::io(&path, "read header", e))?;
    check_block(&path, &block, ImageType::Pack)?;
    // The pack's header pins its version like the signature's does (the manifest covers only
    // the packed files).
    let (_, minor) = super::format::header_version(&block[..HEADER_LEN]);
    if u32::from(minor) != inventory.format_minor {
        return Err(ImageError::BadPack {
            path,
            offset: 8,
            reason: "its format version differs from the inventory's",
        });
    }
    packed.sort_by_key(|e| e.offset);
    let (mut pos, mut meta_end, mut in_pages) = (PAGE_SIZE, PAGE_SIZE, false);
    for e in &packed {
        let bad = |reason| ImageError::BadManifest {
            path: inv_path.to_owned(),
            name: e.name.clone(),
            reason,
        };
        let at = if e.pages {
            pos.next_multiple_of(PAGE_SIZE)
        } else if in_pages {
            return Err(bad("a packed metadata file after a packed page store"));
        } else {
            pos
        };
        if e.offset != at {
            return Err(bad("not where the layout of pack.img puts it"));
        }
        let end = at
            .checked_add(e.size)
            .filter(|&end| end <= len)
            .ok_or_else(|| bad("extends past the end of pack.img"))?;
        if e.pages {
            if at > pos {
                let mut gap = vec![0u8; (at - pos) as usize];
                file.read_exact_at(&mut gap, pos)
                    .map_err(|err| ImageError::io(&path, "read", err))?;
                if let Some(i) = gap.iter().position(|&b| b != 0) {
                    return Err(ImageError::BadPack {
                        path,
                        offset: pos + i as u64,
                        reason: "non-zero byte between packed files",
                    });
                }
            }
            in_pages = true;
        } else {
            meta_end = end;
        }
        pos = end;
    }
    if pos != len {
        return Err(ImageError::BadPack {
            path,
            offset: pos,
            reason: "bytes after the last packed file",
        });
    }
    let meta_len = meta_end - PAGE_SIZE;
    let mapped = if meta_len >= MAP_META_FROM {
        use std::os::fd::AsFd;
        crate::sys::uffd::FileWindow::map(file.as_fd(), PAGE_SIZE, meta_len as usize)
            .map_err(|e| tracing::debug!(error = %e, "cannot map pack.img; reading it"))
            .ok()
    } else {
        None
    };
    let meta = match mapped {
        Some(w) => Meta::Mapped(w),
        None => {
            let mut meta = vec![0u8; meta_len as usize];
            file.read_exact_at(&mut meta, PAGE_SIZE)
                .map_err(|e| ImageError::io(&path, "read", e))?;
            Meta::Read(meta)
        }
    };
    Ok(Some(Pack { file, path, meta }))
}

/// Checks a file's size against its manifest entry.
pub(crate) fn check_size(path: &Path, entry: &ManifestEntry, found: u64) -> Result<(), ImageError> {
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
    /// Files not in the manifest are ignored, and so is a signature (`signature.img`): this
    /// does not authenticate anything; see [`ImageReader::open_signed`].
    pub fn open(dir: &Path) -> Result<Self, ImageError> {
        Self::open_inner(dir, None)
    }

    /// Like [`ImageReader::open`], and authenticates the checkpoint with `key`: while every
    /// file is checked it is also hashed (SHA-256, whole file, page stores included), and the
    /// HMAC-SHA256 in `signature.img` must verify over those digests (see `sign.rs`). Refuses
    /// an unsigned checkpoint ([`ImageError::Unsigned`]), one signed with another key or whose
    /// signature was altered ([`ImageError::BadSignature`]), and one where any byte of any file
    /// differs from what was signed (naming the file). [`ImageReader::read`] then checks each
    /// file's bytes against its verified digest again as it decodes them.
    pub fn open_signed(dir: &Path, key: &SignKey) -> Result<Self, ImageError> {
        Self::open_inner(dir, Some(key))
    }

    /// [`ImageReader::open_signed`] with the key read from `key_file` when there is one,
    /// [`ImageReader::open`] otherwise (`cryo restore [--sign-key FILE]`).
    pub fn open_with_key_file(dir: &Path, key_file: Option<&Path>) -> Result<Self, ImageError> {
        match key_file {
            Some(path) => Self::open_signed(dir, &SignKey::from_file(path)?),
            None => Self::open(dir),
        }
    }

    fn open_inner(dir: &Path, key: Option<&SignKey>) -> Result<Self, ImageError> {
        let inv_path = dir.join(INVENTORY_FILE);
        let (file, len) = open_image(&inv_path, false)?;
        let mut inventories = Vec::new();
        let mut inv_hasher = key.map(|_| Sha256::new());
        let summary = scan_file(
            file,
            len,
            &inv_path,
            ImageType::Inventory,
            inv_hasher.as_mut(),
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
                .filter(|(ty, _)| !matches!(ty, ImageType::Inventory | ImageType::Signature))
                .ok_or_else(|| bad("not the name of a cryo image file"))?;
            if entry.pages != (ty == ImageType::Pages) {
                return Err(bad("page store flag does not match the file name"));
            }
            if entry.pages && entry.crc32c != 0 {
                return Err(bad("page store entries carry crc32c 0"));
            }
            if !entry.packed && entry.offset != 0 {
                return Err(bad("an offset for a file that is not packed"));
            }
            if manifest.insert(entry.name.clone(), entry.clone()).is_some() {
                return Err(bad("listed twice"));
            }
        }

        let pack = open_pack(dir, &inv_path, &inventory, &manifest)?;
        let mut reader = ImageReader {
            dir: dir.to_owned(),
            inventory,
            manifest,
            pack,
            signed: None,
        };
        let mut digests = Vec::new();
        if let Some(hasher) = inv_hasher {
            digests.push(FileDigest {
                name: INVENTORY_FILE.to_owned(),
                size: len,
                sha256: hasher.finalize().to_vec(),
            });
        }
        for (name, entry) in &reader.manifest {
            let digest = reader.check_entry(name, entry, key.is_some())?;
            if let Some(digest) = digest {
                digests.push(FileDigest {
                    name: name.clone(),
                    size: entry.size,
                    sha256: digest.to_vec(),
                });
            }
        }
        if let Some(key) = key {
            reader.check_signature(key, &digests)?;
            reader.signed = Some(
                digests
                    .into_iter()
                    .skip(1)
                    .filter_map(|d| Some((d.name, <[u8; 32]>::try_from(d.sha256).ok()?)))
                    .collect(),
            );
        }
        tracing::debug!(
            dir = %dir.display(),
            files = reader.manifest.len(),
            root_pid = reader.inventory.root_pid,
            signed = reader.signed.is_some(),
            "checkpoint validated"
        );
        Ok(reader)
    }

    /// Checks one manifest entry (see `open`); with `hash`, returns the file's SHA-256.
    fn check_entry(
        &self,
        name: &str,
        entry: &ManifestEntry,
        hash: bool,
    ) -> Result<Option<[u8; 32]>, ImageError> {
        let Some((ty, _)) = ImageType::parse_file_name(name) else {
            return Err(ImageError::BadManifest {
                path: self.dir.join(INVENTORY_FILE),
                name: name.to_owned(),
                reason: "not the name of a cryo image file",
            });
        };
        let path = entry_path(&self.dir, name, Some(entry));
        if let (Some(pack), true) = (&self.pack, entry.packed) {
            if ty == ImageType::Pages {
                let minor = check_pages_header(&pack.file, &path, entry.offset, entry.size)?;
                check_pages_minor(&path, minor, &self.inventory)?;
                return if hash {
                    sign::sha256_range(&pack.file, &path, entry.offset, entry.size).map(Some)
                } else {
                    Ok(None)
                };
            }
            let mut hasher = hash.then(Sha256::new);
            let summary = scan_bytes(
                pack.meta_bytes(entry),
                &path,
                ty,
                hasher.as_mut(),
                |_, _| Ok(()),
            )?;
            check_crc(&path, entry, &summary)?;
            return Ok(hasher.map(|h| h.finalize().into()));
        }
        let (file, len) = open_image(&path, true)?;
        check_size(&path, entry, len)?;
        if ty == ImageType::Pages {
            let minor = check_pages_header(&file, &path, 0, len)?;
            check_pages_minor(&path, minor, &self.inventory)?;
            return if hash {
                sign::sha256_file(&file, &path, len).map(Some)
            } else {
                Ok(None)
            };
        }
        let mut hasher = hash.then(Sha256::new);
        let summary = scan_file(file, len, &path, ty, hasher.as_mut(), |_, _| Ok(()))?;
        check_crc(&path, entry, &summary)?;
        Ok(hasher.map(|h| h.finalize().into()))
    }

    /// Reads `signature.img` (which must hold exactly one `Signature`) and verifies it
    /// against `digests` (inventory first, then the manifest in name order).
    fn check_signature(&self, key: &SignKey, digests: &[FileDigest]) -> Result<(), ImageError> {
        let path = self.dir.join(SIGNATURE_FILE);
        let (file, len) = open_image(&path, false).map_err(|e| match e {
            ImageError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                ImageError::Unsigned { path: path.clone() }
            }
            e => e,
        })?;
        let mut records = Vec::new();
        let mut canonical = true;
        let summary = scan_file(
            file,
            len,
            &path,
            ImageType::Signature,
            None,
            |offset, payload| {
                let sig = decode_payload::<Signature>(&path, offset, payload)?;
                canonical &= prost::Message::encode_to_vec(&sig) == payload;
                records.push(sig);
                Ok(())
            },
        )?;
        if records.len() != 1 {
            return Err(ImageError::RecordNumber {
                path,
                found: records.len(),
            });
        }
        sign::verify(key, &self.dir, &path, &records[0], digests).map_err(|e| match e {
            // A packed file is named as a part of pack.img.
            ImageError::SignatureMismatch { path, reason } => {
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                ImageError::SignatureMismatch {
                    path: entry_path(&self.dir, name, self.manifest.get(name)),
                    reason,
                }
            }
            e => e,
        })?;
        // The MAC does not cover the signature file itself: pin down its remaining bytes.
        if summary.minor != self.inventory.format_minor {
            return Err(ImageError::BadSignature {
                path,
                reason: format!(
                    "its format minor {} differs from the inventory's {}",
                    summary.minor, self.inventory.format_minor
                ),
            });
        }
        if !canonical {
            return Err(ImageError::BadSignature {
                path,
                reason: "its record is not in canonical form".into(),
            });
        }
        tracing::info!(dir = %self.dir.display(), files = digests.len(), "checkpoint signature verified");
        Ok(())
    }

    /// Whether this checkpoint was opened with a key and its signature verified.
    pub fn is_verified(&self) -> bool {
        self.signed.is_some()
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
            ImageType::Signature => Some("the signature is read by open_signed"),
            _ => None,
        };
        if let Some(reason) = reason {
            return Err(ImageError::BadRequest { path, reason });
        }
        let entry = self
            .manifest
            .get(&name)
            .ok_or_else(|| ImageError::NotInManifest { path: path.clone() })?;
        let path = entry_path(&self.dir, &name, Some(entry));
        let mut out = Vec::new();
        let signed = self.signed.as_ref().and_then(|m| m.get(&name));
        let mut hasher = signed.map(|_| Sha256::new());
        let on_record = |offset, payload: &[u8]| {
            out.push(decode_payload::<M>(&path, offset, payload)?);
            Ok(())
        };
        let summary = match (&self.pack, entry.packed) {
            (Some(pack), true) => scan_bytes(
                pack.meta_bytes(entry),
                &path,
                ty,
                hasher.as_mut(),
                on_record,
            )?,
            _ => {
                let (file, len) = open_image(&path, true)?;
                check_size(&path, entry, len)?;
                scan_file(file, len, &path, ty, hasher.as_mut(), on_record)?
            }
        };
        check_crc(&path, entry, &summary)?;
        if let (Some(want), Some(hasher)) = (signed, hasher) {
            if hasher.finalize()[..] != want[..] {
                return Err(ImageError::SignatureMismatch {
                    path,
                    reason: "changed since its signature was verified",
                });
            }
        }
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
            let name = ty.file_name(pid);
            return Err(ImageError::RecordNumber {
                path: entry_path(&self.dir, &name, self.manifest.get(&name)),
                found: records.len(),
            });
        }
        Ok(records.remove(0))
    }

    /// The path of `pages-PID.img` as a file of its own (a packed store is in `pack.img`
    /// instead: see [`ImageReader::pages_loc`]).
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
        let Some((file, loc)) = self.open_pages(pid, runs)? else {
            return Ok(());
        };
        let start = std::time::Instant::now();
        let checked = verify_runs(&file, &loc.name, loc.base, loc.len, runs, chunk)?;
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
        match self.open_pages(pid, runs)? {
            Some((_, loc)) => check_run_shapes(&loc.name, loc.len, runs).map(drop),
            None => Ok(()),
        }
    }

    /// Where the page store of `pid` is (`None` if the manifest lists none).
    pub fn pages_loc(&self, pid: i32) -> Result<Option<PagesLoc>, ImageError> {
        let name = checked_name(&self.dir, ImageType::Pages, Some(pid))?;
        let Some(entry) = self.manifest.get(&name) else {
            return Ok(None);
        };
        let own = self.dir.join(&name);
        Ok(Some(match &self.pack {
            Some(pack) if entry.packed => PagesLoc {
                file: pack.path.clone(),
                base: entry.offset,
                len: entry.size,
                name: entry_path(&self.dir, &name, Some(entry)),
            },
            _ => PagesLoc {
                file: own.clone(),
                base: 0,
                len: entry.size,
                name: own,
            },
        }))
    }

    /// The page store of `pid`, open, with its size and header block checked; `None` when
    /// the manifest lists none and there are no `runs` for it.
    fn open_pages(
        &self,
        pid: i32,
        runs: &[PageRun],
    ) -> Result<Option<(File, PagesLoc)>, ImageError> {
        let Some(loc) = self.pages_loc(pid)? else {
            if runs.is_empty() {
                return Ok(None);
            }
            return Err(ImageError::NotInManifest {
                path: self.pages_path(pid),
            });
        };
        let file = match &self.pack {
            Some(pack) if loc.file == pack.path => pack
                .file
                .try_clone()
                .map_err(|e| ImageError::io(&pack.path, "dup", e))?,
            _ => {
                let (file, len) = open_image(&loc.file, true)?;
                if len != loc.len {
                    return Err(ImageError::SizeMismatch {
                        path: loc.file,
                        expected: loc.len,
                        found: len,
                    });
                }
                file
            }
        };
        let minor = check_pages_header(&file, &loc.name, loc.base, loc.len)?;
        check_pages_minor(&loc.name, minor, &self.inventory)?;
        Ok(Some((file, loc)))
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
    base: u64,
    len: u64,
}

impl PageStore {
    /// Opens `pages-PID.img` at `path` (never through a symlink) and checks its header block.
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        let (file, len) = open_image(path, true)?;
        check_pages_header(&file, path, 0, len)?;
        Ok(Self {
            file,
            path: path.to_owned(),
            base: 0,
            len,
        })
    }

    /// Opens the page store at `loc` (a file of its own or a part of `pack.img`; never
    /// through a symlink) and checks its header block.
    pub fn open_at(loc: &PagesLoc) -> Result<Self, ImageError> {
        let (file, file_len) = open_image(&loc.file, true)?;
        if loc
            .base
            .checked_add(loc.len)
            .is_none_or(|end| end > file_len)
        {
            return Err(ImageError::Truncated {
                path: loc.name.clone(),
                offset: file_len.saturating_sub(loc.base),
                what: "page store shorter than its size",
            });
        }
        check_pages_header(&file, &loc.name, loc.base, loc.len)?;
        Ok(Self {
            file,
            path: loc.name.clone(),
            base: loc.base,
            len: loc.len,
        })
    }

    /// The store's name in messages: its path, or `DIR/pack.img:pages-PID.img`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The store's size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Where `offset` of the store is in the open file ([`PageStore::as_fd`]).
    pub fn file_offset(&self, offset: u64) -> u64 {
        self.base + offset
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
        if offset.saturating_add(buf.len() as u64) > self.len {
            return Err(read_pages_error(
                &self.path,
                offset,
                io::ErrorKind::UnexpectedEof.into(),
            ));
        }
        self.file
            .read_exact_at(buf, self.base + offset)
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
    base: u64,
    len: u64,
    runs: &[PageRun],
    chunk: usize,
) -> Result<u64, ImageError> {
    let order = check_run_shapes(path, len, runs)?;
    let total: u64 = order.iter().map(|r| r.nr_pages * PAGE_SIZE).sum();
    let threads = if total >= PARALLEL_VERIFY_FROM {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_VERIFY_THREADS))
    } else {
        1
    };
    // Runs cut into pieces (in file order), so that one big run is shared by the threads too;
    // each thread takes a contiguous share of the pieces, and the pieces' checksums are
    // combined per run.
    let piece_max = if threads < 2 { u64::MAX } else { PIECE };
    let mut pieces: Vec<(usize, u64, u64)> = Vec::new(); // (run in `order`, offset, length)
    for (i, r) in order.iter().enumerate() {
        let (mut off, end) = (r.offset, r.offset + r.nr_pages * PAGE_SIZE);
        while off < end {
            let l = (end - off).min(piece_max);
            pieces.push((i, off, l));
            off += l;
        }
    }
    let mut parts: Vec<&[(usize, u64, u64)]> = Vec::with_capacity(threads);
    let (mut from, mut acc) = (0usize, 0u64);
    for (i, p) in pieces.iter().enumerate() {
        acc += p.2;
        if parts.len() + 1 < threads && acc * threads as u64 >= total * (parts.len() as u64 + 1) {
            parts.push(&pieces[from..=i]);
            from = i + 1;
        }
    }
    parts.push(&pieces[from..]);
    let crcs: Vec<u32> = if parts.len() < 2 {
        piece_crcs(file, path, base, len, &pieces, chunk)?
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = parts
                .iter()
                .map(|part| s.spawn(move || piece_crcs(file, path, base, len, part, chunk)))
                .collect();
            let mut all = Vec::with_capacity(pieces.len());
            let mut first_err = None;
            for h in handles {
                match h.join() {
                    Ok(Ok(c)) => all.extend(c),
                    Ok(Err(e)) => {
                        first_err.get_or_insert(e);
                    }
                    Err(_) => {
                        first_err.get_or_insert(ImageError::io(
                            path,
                            "verify pages",
                            io::Error::other("a verifying thread panicked"),
                        ));
                    }
                }
            }
            first_err.map_or(Ok(all), Err)
        })?
    };
    // Fold the pieces of each run together, and check the runs in file order.
    let mut run_crc: Vec<Option<u32>> = vec![None; order.len()];
    for (&(i, _, l), &c) in pieces.iter().zip(&crcs) {
        run_crc[i] = Some(match run_crc[i] {
            None => c,
            Some(prev) => crc32c::crc32c_combine(prev, c, l as usize),
        });
    }
    for (run, crc) in order.iter().zip(run_crc) {
        check_run_crc(path, run, crc.unwrap_or(0))?;
    }
    Ok(total)
}

/// The crc32c of each piece `(_, offset, length)` of `pieces` (sorted by offset), with one
/// sequential pass. The window [win_start, win_start + win_len) of the file is held in a
/// buffer, refilled as far as the buffer or the file allows only when a piece needs bytes
/// outside it, so pieces packed together cost one read per chunk.
fn piece_crcs(
    file: &File,
    path: &Path,
    base: u64,
    len: u64,
    pieces: &[(usize, u64, u64)],
    chunk: usize,
) -> Result<Vec<u32>, ImageError> {
    let mut buf = vec![
        0u8;
        chunk
            .max(PAGE_SIZE as usize)
            .min((len - PAGE_SIZE) as usize)
    ];
    let (mut win_start, mut win_len) = (0u64, 0usize);
    let mut out = Vec::with_capacity(pieces.len());
    for &(_, offset, plen) in pieces {
        let end = offset + plen;
        let mut pos = offset;
        let mut crc = 0u32;
        while pos < end {
            if pos < win_start || pos >= win_start + win_len as u64 {
                win_start = pos;
                win_len = ((len - pos) as usize).min(buf.len());
                file.read_exact_at(&mut buf[..win_len], base + pos)
                    .map_err(|e| read_pages_error(path, pos, e))?;
            }
            let from = (pos - win_start) as usize;
            let to = ((end - win_start) as usize).min(win_len);
            crc = crc32c::crc32c_append(crc, &buf[from..to]);
            pos = win_start + to as u64;
        }
        out.push(crc);
    }
    Ok(out)
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
