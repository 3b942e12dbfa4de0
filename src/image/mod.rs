//! The checkpoint image directory: writing, reading and validating image files, and the
//! `cryo show` rendering of a checkpoint.
//!
//! This module owns the on-disk format and nothing else. It takes plain prost messages
//! (`crate::proto`) in and gives them back out; it never calls ptrace, never reads `/proc`,
//! and does not interpret the process state beyond printing it (`show`).
//!
//! # Directory layout
//!
//! The checkpoint is made of these (logical) files:
//!
//! ```text
//! DIR/                       0700
//!   inventory.img            one Inventory record; written LAST (temp name, fsync, rename, fsync DIR)
//!   pstree.img               PstreeEntry records, one per process
//!   core-PID.img             one ProcessCore record
//!   tasks-PID.img            TaskCore records, thread group leader first
//!   mm-PID.img               one MmState record
//!   pagemap-PID.img          PageRun records, in address order
//!   fds-PID.img              FdEntry records
//!   pages-PID.img            page store: raw 4 KiB pages, located by pagemap-PID.img
//!   signature.img            one Signature record; only in a signed checkpoint, not in the
//!                            manifest; written before the inventory
//! ```
//!
//! The writer packs every metadata file, and every page store of at most
//! [`PACK_PAGES_MAX`] bytes (up to [`PACK_PAGES_BUDGET`] of them in all), into
//! one real file, `pack.img`, so a tree of small processes is two files on disk (inventory and
//! pack) instead of six per process: creating and fsyncing dozens of small files was most of
//! the time of dumping such a tree (see "Packed files" below). Bigger page stores stay files of
//! their own, written by several dumper threads at once. The names above stay the files' names
//! in the manifest, in signatures and in messages (`DIR/pack.img:core-PID.img` for a packed
//! one).
//!
//! Every real file is created 0600 with `O_EXCL | O_NOFOLLOW`. Files not named like this are
//! ignored by the reader (and never touched by the writer).
//!
//! # File header (every file, 16 bytes)
//!
//! ```text
//!  0        4            8          10         12           16
//!  +--------+------------+----------+----------+------------+
//!  | "CRYO" | image type | major    | minor    | reserved   |
//!  | magic  | u32 LE     | u16 LE   | u16 LE   | u32 LE = 0 |
//!  +--------+------------+----------+----------+------------+
//! ```
//!
//! Image types: inventory 1, pstree 2, core 3, tasks 4, mm 5, pagemap 6, pages 7, fds 8,
//! signature 9, pack 10.
//! The format is [`FORMAT_MAJOR`].[`FORMAT_MINOR`]. A reader refuses a wrong magic ("not a cryo
//! image"), a type other than the one it expects, and any other major version. A newer minor
//! (additions an older reader may ignore) is accepted with a warning; the reserved field must
//! be 0 unless the minor is newer than ours.
//!
//! # Metadata files (everything but the page store)
//!
//! ```text
//!  header (16) | record | record | ... | end record
//!
//!  record:      +-------------+-------------------+----------------------+
//!               | len: u32 LE | crc32c(payload):  | payload: len bytes   |
//!               | <= 16 MiB   | u32 LE            | (one prost message)  |
//!               +-------------+-------------------+----------------------+
//!  end record:  +-------------+-------------------+
//!               | 0xFFFF_FFFF | record count: u32 |
//!               +-------------+-------------------+  then end of file
//! ```
//!
//! A length over [`MAX_RECORD_LEN`] or past the end of the file is refused before anything is
//! allocated; a missing end record, a short record, a wrong count or bytes after the end
//! record are refused. Every error names the file and the byte offset of the bad part.
//!
//! # Page store (`pages-PID.img`)
//!
//! ```text
//!  0                16                     4096         4096 + n * 4096
//!  +----------------+----------------------+------------+------------+---
//!  | header (type 7)| zeros                | page       | page       | ...
//!  +----------------+----------------------+------------+------------+---
//!                                          ^ PageRun.offset (4 KiB aligned)
//! ```
//!
//! The dumper appends raw page data itself (write or splice, see [`PagesFile`]); each
//! `PageRun { vaddr, nr_pages, offset, crc32c }` in `pagemap-PID.img` says where a run of pages
//! lies and carries the crc32c of its `nr_pages * 4096` bytes. [`ImageReader::verify_pages`]
//! checks runs against the store in large sequential reads.
//!
//! # Packed files (`pack.img`)
//!
//! ```text
//!  0                  4096                                 next 4 KiB boundary
//!  +------------------+--------+--------+---+------+-------+-------------+---------------+--
//!  | header (type 10) | meta   | meta   |...| meta | zeros | page store  | page store    |
//!  | + zeros          | file   | file   |   | file |       | (whole,     | (4 KiB        |
//!  |                  |        |        |   |      |       | header blk) | multiple)     |
//!  +------------------+--------+--------+---+------+-------+-------------+---------------+--
//! ```
//!
//! Each packed file's bytes are exactly those it would have as a file of its own (header
//! included); its manifest entry says `packed`, and its `offset` in `pack.img`. The inventory
//! gives the pack's exact size (`pack_size`). The reader requires the layout above and nothing
//! else: metadata files back to back from offset 4096, then page stores each from the next
//! 4 KiB boundary (the bytes skipped are zero), the last ending at the end of the file, and
//! the pack's header giving the inventory's version. So every byte of the pack is fixed or
//! inside a file the manifest checks (and a signature covers). Page stores keep their page
//! alignment, so restore maps them from the pack like from their own file. A page store's
//! header (no checksum covers it) must give the inventory's format minor.
//!
//! # Manifest and checksums
//!
//! All checksums are crc32c. `Inventory.manifest` lists every other file of the checkpoint
//! with its exact size and the crc32c of the whole file (header included). Page stores are
//! listed with their size, crc32c 0 and `pages = true`: their data is covered run by run by
//! the page map. [`ImageReader::open`] checks the inventory and every manifest entry (metadata
//! files fully: checksum and record framing; page stores: size and header only, never their
//! data), and [`ImageReader::read`] checks the bytes it decodes against the manifest again.
//! The inventory's own header is covered by a cross-check: its version must equal the
//! `format_major`/`format_minor` inside its (checksummed) record.
//!
//! # Signed checkpoints
//!
//! With a key ([`ImageWriter::set_sign_key`], `cryo dump --sign-key FILE`), the commit hashes
//! every file back from disk (SHA-256 of the whole file, page stores included), signs the
//! digests with HMAC-SHA256 (a packed file's digest is that of its bytes in the pack) and
//! writes `signature.img` before the inventory, so a checkpoint
//! with an inventory always has its signature. [`ImageReader::open_signed`] hashes every file
//! as it checks it and refuses the checkpoint unless the HMAC verifies over those digests;
//! the digests in the record must equal them and the record must be in canonical form, so no
//! byte of any file, the signature included, can change. crc32c alone would not do: it is
//! linear, and a deliberate change can keep it. The byte string the HMAC covers is drawn in
//! `sign.rs`. [`ImageReader::open`] ignores a signature.
//!
//! # Writing
//!
//! [`ImageWriter::create`] refuses a directory holding any cryo image file (a checkpoint, or
//! the leftovers of an interrupted dump) unless asked to overwrite; then it removes those
//! files, the inventory first. Files are written with [`ImageWriter::write`] and
//! [`ImageWriter::create_pages`] (or [`ImageWriter::create_pages_for`], which packs small
//! ones) / [`ImageWriter::finish_pages`]; [`ImageWriter::commit`] writes `pack.img`, fsyncs
//! every file and then writes the inventory atomically. A writer dropped before its
//! commit succeeded removes exactly the files (and empty directories) it created.

mod format;
mod reader;
pub mod show;
mod sign;
mod writer;

#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;

pub use format::{decode_records, encode_records, HEADER_LEN, MAGIC, MAX_RECORD_LEN, PAGE_SIZE};
pub use reader::{check_page_store, ImageReader, PageStore, PagesLoc};
pub use sign::{is_signed, SignKey, MAX_KEY_LEN, MIN_KEY_LEN, SIGNATURE_ALGORITHM, SIGNATURE_FILE};
pub use writer::{ImageWriter, PagesFile, Reserved, PACK_PAGES_BUDGET, PACK_PAGES_MAX};

/// Major version of the image format written by this cryo; the only one it reads.
pub const FORMAT_MAJOR: u32 = 2;
/// Minor version of the image format written by this cryo.
pub const FORMAT_MINOR: u32 = 0;

/// The name of the inventory file.
pub const INVENTORY_FILE: &str = "inventory.img";

/// The kind of an image file; its number is stored in the file header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ImageType {
    /// `inventory.img`: one `Inventory`.
    Inventory,
    /// `pstree.img`: `PstreeEntry` records.
    Pstree,
    /// `core-PID.img`: one `ProcessCore`.
    Core,
    /// `tasks-PID.img`: `TaskCore` records, leader first.
    Tasks,
    /// `mm-PID.img`: one `MmState`.
    Mm,
    /// `pagemap-PID.img`: `PageRun` records.
    Pagemap,
    /// `pages-PID.img`: the raw page store.
    Pages,
    /// `fds-PID.img`: `FdEntry` records.
    Fds,
    /// `signature.img`: one `Signature` (only in a signed checkpoint; not in the manifest).
    Signature,
    /// `pack.img`: metadata files and small page stores stored back to back (not in the
    /// manifest itself; its entries are, with their offsets).
    Pack,
}

impl ImageType {
    /// Every image type, in header-number order.
    pub const ALL: [ImageType; 10] = [
        ImageType::Inventory,
        ImageType::Pstree,
        ImageType::Core,
        ImageType::Tasks,
        ImageType::Mm,
        ImageType::Pagemap,
        ImageType::Pages,
        ImageType::Fds,
        ImageType::Signature,
        ImageType::Pack,
    ];

    /// The number stored in the file header.
    pub fn code(self) -> u32 {
        match self {
            ImageType::Inventory => 1,
            ImageType::Pstree => 2,
            ImageType::Core => 3,
            ImageType::Tasks => 4,
            ImageType::Mm => 5,
            ImageType::Pagemap => 6,
            ImageType::Pages => 7,
            ImageType::Fds => 8,
            ImageType::Signature => 9,
            ImageType::Pack => 10,
        }
    }

    /// The type with header number `code`, if any.
    pub fn from_code(code: u32) -> Option<ImageType> {
        ImageType::ALL.into_iter().find(|t| t.code() == code)
    }

    /// The stem of the file name: `inventory`, `pstree`, `core`, `tasks`, `mm`, `pagemap`,
    /// `pages`, `fds`, `signature`.
    pub fn stem(self) -> &'static str {
        match self {
            ImageType::Inventory => "inventory",
            ImageType::Pstree => "pstree",
            ImageType::Core => "core",
            ImageType::Tasks => "tasks",
            ImageType::Mm => "mm",
            ImageType::Pagemap => "pagemap",
            ImageType::Pages => "pages",
            ImageType::Fds => "fds",
            ImageType::Signature => "signature",
            ImageType::Pack => "pack",
        }
    }

    /// Whether there is one file of this type per process (`NAME-PID.img`).
    pub fn per_process(self) -> bool {
        !matches!(
            self,
            ImageType::Inventory | ImageType::Pstree | ImageType::Signature | ImageType::Pack
        )
    }

    /// Whether the file holds length-prefixed records (everything but the page store).
    pub fn has_records(self) -> bool {
        !matches!(self, ImageType::Pages | ImageType::Pack)
    }

    /// The file name inside the checkpoint directory, e.g. `mm-123.img`, `pstree.img`.
    ///
    /// The pid is ignored for the whole-checkpoint types (inventory, pstree). A per-process
    /// type without a pid gives `NAME.img`, which the writer and reader refuse to use.
    pub fn file_name(self, pid: Option<i32>) -> String {
        match (self.per_process(), pid) {
            (true, Some(pid)) => format!("{}-{pid}.img", self.stem()),
            _ => format!("{}.img", self.stem()),
        }
    }

    /// Parses a file name made by [`ImageType::file_name`] (with a positive pid for
    /// per-process types). Anything else, including `mm-007.img`, gives `None`.
    pub fn parse_file_name(name: &str) -> Option<(ImageType, Option<i32>)> {
        let base = name.strip_suffix(".img")?;
        match base.split_once('-') {
            None => ImageType::ALL
                .into_iter()
                .find(|t| !t.per_process() && t.stem() == base)
                .map(|t| (t, None)),
            Some((stem, pid)) => {
                let ty = ImageType::ALL
                    .into_iter()
                    .find(|t| t.per_process() && t.stem() == stem)?;
                if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let pid: i32 = pid.parse().ok()?;
                (pid > 0 && ty.file_name(Some(pid)) == name).then_some((ty, Some(pid)))
            }
        }
    }
}

/// Everything that can go wrong reading or writing a checkpoint directory. Every variant
/// names the file (or directory) and, where it is about a place in a file, the byte offset.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// An I/O operation on an image file or the checkpoint directory failed.
    #[error("{}: {op}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file does not start with the cryo magic.
    #[error("{}: not a cryo image (magic {found:02x?})", path.display())]
    NotCryoImage {
        /// The file.
        path: PathBuf,
        /// The first four bytes found.
        found: [u8; 4],
    },
    /// The header names another image type than the one expected.
    #[error("{}: image type {found} ({}), expected {} ({expected:?})", path.display(),
        ImageType::from_code(*found).map_or("unknown", ImageType::stem), expected.code())]
    WrongType {
        /// The file.
        path: PathBuf,
        /// The type the caller expected.
        expected: ImageType,
        /// The type number found in the header.
        found: u32,
    },
    /// The file's format version is not one this cryo reads.
    #[error("{}: image format {major}.{minor} is not supported (this cryo reads {FORMAT_MAJOR}.x)",
        path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The major version found.
        major: u32,
        /// The minor version found.
        minor: u32,
    },
    /// A header field that must be zero is not.
    #[error("{}: at offset {offset}: reserved header field is {value:#x}, expected 0", path.display())]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// Where the field is.
        offset: u64,
        /// Its value.
        value: u64,
    },
    /// A record claims more bytes than any record may have; refused before allocating.
    #[error("{}: at offset {offset}: record of {len} bytes exceeds the {MAX_RECORD_LEN}-byte limit",
        path.display())]
    RecordTooLarge {
        /// The file.
        path: PathBuf,
        /// Offset of the record's length field.
        offset: u64,
        /// The claimed (or, when writing, the actual) length.
        len: u64,
    },
    /// A record's payload does not match its crc32c.
    #[error("{}: at offset {offset}: record checksum mismatch (stored {stored:#010x}, computed {computed:#010x})",
        path.display())]
    RecordChecksum {
        /// The file.
        path: PathBuf,
        /// Offset of the record.
        offset: u64,
        /// The checksum in the file.
        stored: u32,
        /// The checksum of the payload.
        computed: u32,
    },
    /// The file ends before the structure it holds does.
    #[error("{}: at offset {offset}: truncated: {what}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Where the missing part starts (the file's length).
        offset: u64,
        /// What is missing.
        what: &'static str,
    },
    /// The end record's count differs from the number of records before it.
    #[error("{}: at offset {offset}: end record counts {stored} records, found {found}", path.display())]
    RecordCount {
        /// The file.
        path: PathBuf,
        /// Offset of the end record.
        offset: u64,
        /// The count in the end record.
        stored: u32,
        /// The number of records read.
        found: u32,
    },
    /// There are bytes after the end record.
    #[error("{}: at offset {offset}: {len} bytes after the end record", path.display())]
    TrailingData {
        /// The file.
        path: PathBuf,
        /// Where the extra bytes start.
        offset: u64,
        /// How many there are.
        len: u64,
    },
    /// A record's payload is not a valid message of the expected kind.
    #[error("{}: at offset {offset}: cannot decode {message}: {source}", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// Offset of the record.
        offset: u64,
        /// The message type expected.
        message: &'static str,
        /// The decoder's complaint.
        #[source]
        source: prost::DecodeError,
    },
    /// A file that must hold exactly one record holds another number of them.
    #[error("{}: expected exactly one record, found {found}", path.display())]
    RecordNumber {
        /// The file.
        path: PathBuf,
        /// The number of records found.
        found: usize,
    },
    /// The directory already holds a checkpoint (or cryo image files) and overwriting was not
    /// asked for.
    #[error("{}: already holds a checkpoint ({name}); refusing to overwrite it without --overwrite", dir.display())]
    Exists {
        /// The directory.
        dir: PathBuf,
        /// The cryo file found in it.
        name: String,
    },
    /// The path exists but is not a directory.
    #[error("{}: not a directory", path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// An image file is a symbolic link or not a regular file.
    #[error("{}: not a regular file ({what}); refusing to use it", path.display())]
    NotRegularFile {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        what: &'static str,
    },
    /// A signing key file cannot be used.
    #[error("{}: unusable signing key: {reason}", path.display())]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A key was given but the checkpoint carries no signature.
    #[error("{}: missing: the checkpoint is not signed, and a signing key was given", path.display())]
    Unsigned {
        /// Where the signature should be (`DIR/signature.img`).
        path: PathBuf,
    },
    /// A file of a signed checkpoint is not the one that was signed.
    #[error("{}: {reason}: refusing an altered checkpoint", path.display())]
    SignatureMismatch {
        /// The file.
        path: PathBuf,
        /// How it differs.
        reason: &'static str,
    },
    /// The signature does not verify under the key given (or is malformed).
    #[error("{}: bad signature: {reason}", path.display())]
    BadSignature {
        /// The signature file.
        path: PathBuf,
        /// Why it does not verify.
        reason: String,
    },
    /// The type and pid given do not make a valid image file, or the call does not apply to
    /// this type (e.g. `write` for the inventory, `read` for a page store).
    #[error("{}: {reason}", path.display())]
    BadRequest {
        /// The file that was asked for.
        path: PathBuf,
        /// Why it cannot be done.
        reason: &'static str,
    },
    /// The file was already written by this writer.
    #[error("{}: already written in this checkpoint", path.display())]
    AlreadyWritten {
        /// The file.
        path: PathBuf,
    },
    /// A page store was created but not handed back with `finish_pages` before `commit`, or a
    /// `PagesFile` not created by this writer was handed back.
    #[error("{}: {reason}", path.display())]
    PagesState {
        /// The page store.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// A page store's size is not the header block plus whole pages.
    #[error("{}: size {size} is not 4096 + a multiple of 4096", path.display())]
    PagesSize {
        /// The page store.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// Data given to `PagesFile::append` is not whole pages.
    #[error("{}: at offset {offset}: {len} bytes is not a whole number of pages", path.display())]
    PartialPage {
        /// The page store.
        path: PathBuf,
        /// Where it would have gone.
        offset: u64,
        /// The length given.
        len: u64,
    },
    /// The inventory's manifest is malformed.
    #[error("{}: bad manifest entry {name:?}: {reason}", path.display())]
    BadManifest {
        /// The inventory file.
        path: PathBuf,
        /// The entry's name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A page store's header gives another format minor than the inventory (all files of a
    /// checkpoint are written by one cryo).
    #[error("{}: format minor {found} differs from the inventory's ({expected})", path.display())]
    MinorMismatch {
        /// The page store.
        path: PathBuf,
        /// The minor in its header.
        found: u32,
        /// The inventory's.
        expected: u32,
    },
    /// `pack.img` does not have the layout its manifest entries give it.
    #[error("{}: at offset {offset}: {reason}", path.display())]
    BadPack {
        /// The pack.
        path: PathBuf,
        /// Where it goes wrong.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// A file is not listed in the manifest.
    #[error("{}: not listed in the inventory manifest", path.display())]
    NotInManifest {
        /// The file.
        path: PathBuf,
    },
    /// A file listed in the manifest is missing.
    #[error("{}: listed in the manifest but missing", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// A file's size differs from the manifest.
    #[error("{}: size {found} differs from the manifest ({expected})", path.display())]
    SizeMismatch {
        /// The file.
        path: PathBuf,
        /// The size in the manifest.
        expected: u64,
        /// The size on disk.
        found: u64,
    },
    /// A file's crc32c differs from the manifest.
    #[error("{}: crc32c {found:#010x} differs from the manifest ({expected:#010x})", path.display())]
    ChecksumMismatch {
        /// The file.
        path: PathBuf,
        /// The checksum in the manifest.
        expected: u32,
        /// The checksum of the file.
        found: u32,
    },
    /// A page run's offset or address is not page aligned, or it is empty.
    #[error("{}: at offset {offset:#x}: page run for vaddr {vaddr:#x} ({nr_pages} pages): {reason}",
        path.display())]
    BadPageRun {
        /// The page store.
        path: PathBuf,
        /// The run's offset in the page store.
        offset: u64,
        /// The run's address.
        vaddr: u64,
        /// The run's length in pages.
        nr_pages: u64,
        /// What is wrong.
        reason: String,
    },
    /// Two page runs overlap in the page store or in the address space.
    #[error("{}: at offset {offset:#x}: page run for vaddr {vaddr:#x} overlaps the run for vaddr {other_vaddr:#x} ({space})",
        path.display())]
    PageRunOverlap {
        /// The page store.
        path: PathBuf,
        /// The run's offset in the page store.
        offset: u64,
        /// The run's address.
        vaddr: u64,
        /// The address of the run it overlaps (or follows out of order).
        other_vaddr: u64,
        /// "in the page store" or "in the address space".
        space: &'static str,
    },
    /// A page run's data does not match its crc32c.
    #[error("{}: at offset {offset:#x}: page run for vaddr {vaddr:#x} ({nr_pages} pages): crc32c {computed:#010x}, page map says {stored:#010x}",
        path.display())]
    PageRunChecksum {
        /// The page store.
        path: PathBuf,
        /// The run's offset in the page store.
        offset: u64,
        /// The run's address.
        vaddr: u64,
        /// The run's length in pages.
        nr_pages: u64,
        /// The checksum in the page map.
        stored: u32,
        /// The checksum of the data.
        computed: u32,
    },
}

impl ImageError {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: io::Error) -> Self {
        ImageError::Io {
            path: path.into(),
            op,
            source,
        }
    }
}
