//! The byte-level format: the 16-byte file header and the length-prefixed, checksummed record
//! framing of metadata files (see the diagrams in the parent module). Pure functions over
//! bytes and readers; no knowledge of directories or manifests.

use std::io::{self, Read};
use std::path::Path;

use bytes::BufMut;

use super::{ImageError, ImageType, FORMAT_MAJOR, FORMAT_MINOR};

/// The magic every image file starts with.
pub const MAGIC: [u8; 4] = *b"CRYO";
/// Length of the file header.
pub const HEADER_LEN: usize = 16;
/// The longest record payload a reader accepts (and a writer writes), in bytes.
pub const MAX_RECORD_LEN: u32 = 16 << 20;
/// The page size of the page store, and the length of its header block.
pub const PAGE_SIZE: u64 = 4096;
/// The length field of the end record.
pub(crate) const END_MARKER: u32 = 0xFFFF_FFFF;
/// Length of a record's (or the end record's) length + checksum prefix.
const RECORD_PREFIX_LEN: u64 = 8;

/// The header of a file of type `ty` in the current format version.
pub(crate) fn encode_header(ty: ImageType) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC);
    h[4..8].copy_from_slice(&ty.code().to_le_bytes());
    // The version constants are small; the header fields are u16.
    h[8..10].copy_from_slice(&(FORMAT_MAJOR as u16).to_le_bytes());
    h[10..12].copy_from_slice(&(FORMAT_MINOR as u16).to_le_bytes());
    h
}

/// Checks a file header (`bytes` holds the first up to 16 bytes of the file) against the
/// expected image type.
/// The (major, minor) version of a header that passed [`check_header`].
pub(crate) fn header_version(bytes: &[u8]) -> (u16, u16) {
    (
        u16::from_le_bytes([bytes[8], bytes[9]]),
        u16::from_le_bytes([bytes[10], bytes[11]]),
    )
}

pub(crate) fn check_header(
    path: &Path,
    bytes: &[u8],
    expected: ImageType,
) -> Result<(), ImageError> {
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        let mut found = [0u8; 4];
        found[..magic_len].copy_from_slice(&bytes[..magic_len]);
        return Err(ImageError::NotCryoImage {
            path: path.to_owned(),
            found,
        });
    }
    if bytes.len() < HEADER_LEN {
        return Err(ImageError::Truncated {
            path: path.to_owned(),
            offset: 0,
            what: "file header",
        });
    }
    let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
    let u32_at =
        |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let (major, minor) = (u32::from(u16_at(8)), u32::from(u16_at(10)));
    if major != FORMAT_MAJOR {
        return Err(ImageError::UnsupportedVersion {
            path: path.to_owned(),
            major,
            minor,
        });
    }
    let ty = u32_at(4);
    if ty != expected.code() {
        return Err(ImageError::WrongType {
            path: path.to_owned(),
            expected,
            found: ty,
        });
    }
    if minor > FORMAT_MINOR {
        tracing::warn!(
            path = %path.display(),
            major,
            minor,
            "image written by a newer cryo (format minor {minor}); reading it as {FORMAT_MAJOR}.{FORMAT_MINOR}"
        );
    } else if u32_at(12) != 0 {
        return Err(ImageError::BadHeader {
            path: path.to_owned(),
            offset: 12,
            value: u64::from(u32_at(12)),
        });
    }
    Ok(())
}

/// Encodes a metadata file in memory: header (type `ty`, this format version), one record per
/// message, end record. `path` only names the file in errors (a record over the limit, too
/// many records).
pub fn encode_records<M: prost::Message>(
    path: &Path,
    ty: ImageType,
    records: &[M],
) -> Result<Vec<u8>, ImageError> {
    let count = record_count(path, records)?;
    let mut out = Vec::with_capacity(records_len(records) as usize);
    out.extend_from_slice(&encode_header(ty));
    for record in records {
        let offset = out.len() as u64;
        let len32 = record_len(path, offset, record)?;
        out.extend_from_slice(&len32.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        let start = out.len();
        // Encoding into a Vec cannot run out of room: a Vec grows.
        record
            .encode(&mut out)
            .map_err(|_| ImageError::RecordTooLarge {
                path: path.to_owned(),
                offset,
                len: u64::from(len32),
            })?;
        let crc = crc32c::crc32c(&out[start..]);
        out[start - 4..start].copy_from_slice(&crc.to_le_bytes());
    }
    out.extend_from_slice(&END_MARKER.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    Ok(out)
}

/// The length of the metadata file [`encode_records`] makes of `records`.
pub fn records_len<M: prost::Message>(records: &[M]) -> u64 {
    let payload: usize = records.iter().map(|r| r.encoded_len()).sum();
    (HEADER_LEN + payload) as u64 + RECORD_PREFIX_LEN * (records.len() as u64 + 1)
}

/// The number of records, as the end record states it.
fn record_count<M>(path: &Path, records: &[M]) -> Result<u32, ImageError> {
    u32::try_from(records.len())
        .ok()
        .filter(|&n| n != END_MARKER)
        .ok_or_else(|| ImageError::BadRequest {
            path: path.to_owned(),
            reason: "too many records for one image file",
        })
}

/// The encoded length of `record` (at `offset` of the file), within the limit.
fn record_len<M: prost::Message>(path: &Path, offset: u64, record: &M) -> Result<u32, ImageError> {
    let len = record.encoded_len();
    u32::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_RECORD_LEN)
        .ok_or_else(|| ImageError::RecordTooLarge {
            path: path.to_owned(),
            offset,
            len: len as u64,
        })
}

/// Byte fields at least this long go from the record to the sink as they are (not copied).
const PASS_THROUGH_FROM: usize = 16 << 10;
/// The buffer that gathers the small pieces of a streamed record.
const STREAM_BUF: usize = 64 << 10;

/// Produces the bytes [`encode_records`] would, in order, handing them to `sink` instead of
/// building the file in memory: the small pieces of each record gathered in a buffer, its
/// large byte fields (socket queues, megabytes) passed through straight from the record. Each
/// record is encoded twice (once for the checksum that precedes it, once for its bytes); no
/// copy of it is made. Returns the file's length and crc32c. `path` names the file in errors.
pub fn stream_records<M: prost::Message>(
    path: &Path,
    ty: ImageType,
    records: &[M],
    sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> Result<(u64, u32), ImageError> {
    let count = record_count(path, records)?;
    let mut file_crc = 0u32;
    let mut written = 0u64;
    let mut to_sink = |d: &[u8]| -> io::Result<()> {
        file_crc = crc32c::crc32c_append(file_crc, d);
        written += d.len() as u64;
        sink(d)
    };
    let (mut buf, mut crc_buf) = (
        Vec::with_capacity(STREAM_BUF),
        Vec::with_capacity(STREAM_BUF),
    );
    let mut out = Streamer::new(&mut buf, &mut to_sink);
    out.put_slice(&encode_header(ty));
    let mut offset = HEADER_LEN as u64;
    for record in records {
        let len32 = record_len(path, offset, record)?;
        let too_large = |_| ImageError::RecordTooLarge {
            path: path.to_owned(),
            offset,
            len: u64::from(len32),
        };
        // The checksum first: it precedes the record.
        let mut crc = 0u32;
        let mut add = |d: &[u8]| -> io::Result<()> {
            crc = crc32c::crc32c_append(crc, d);
            Ok(())
        };
        let mut pass = Streamer::new(&mut crc_buf, &mut add);
        record.encode(&mut pass).map_err(too_large)?;
        pass.finish()
            .map_err(|e| ImageError::io(path, "checksum", e))?;
        out.put_slice(&len32.to_le_bytes());
        out.put_slice(&crc.to_le_bytes());
        record.encode(&mut out).map_err(too_large)?;
        offset += RECORD_PREFIX_LEN + u64::from(len32);
    }
    out.put_slice(&END_MARKER.to_le_bytes());
    out.put_slice(&count.to_le_bytes());
    out.finish().map_err(|e| ImageError::io(path, "write", e))?;
    Ok((written, file_crc))
}

/// A `BufMut` that hands what is put into it to a sink (see [`stream_records`]). Sink errors
/// cannot be returned through `BufMut`: the first is kept (later output dropped) and returned
/// by [`Streamer::finish`].
struct Streamer<'a, 'b> {
    buf: &'a mut Vec<u8>,
    sink: &'a mut (dyn FnMut(&[u8]) -> io::Result<()> + 'b),
    err: Option<io::Error>,
}

impl<'a, 'b> Streamer<'a, 'b> {
    fn new(buf: &'a mut Vec<u8>, sink: &'a mut (dyn FnMut(&[u8]) -> io::Result<()> + 'b)) -> Self {
        buf.clear();
        Self {
            buf,
            sink,
            err: None,
        }
    }

    fn emit(&mut self, data: &[u8]) {
        if self.err.is_none() && !data.is_empty() {
            if let Err(e) = (self.sink)(data) {
                self.err = Some(e);
            }
        }
    }

    fn flush(&mut self) {
        let pending = std::mem::take(self.buf);
        self.emit(&pending);
        *self.buf = pending;
        self.buf.clear();
    }

    /// Hands over what is still gathered; the first sink error, if any.
    fn finish(mut self) -> io::Result<()> {
        self.flush();
        self.err.map_or(Ok(()), Err)
    }
}

// SAFETY: `chunk_mut` hands out the buffer's spare capacity, and `advance_mut` (whose caller
// promises to have initialized that many bytes of it) only extends the buffer's length over
// them.
unsafe impl BufMut for Streamer<'_, '_> {
    fn remaining_mut(&self) -> usize {
        usize::MAX / 2
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        let len = self.buf.len() + cnt;
        assert!(
            len <= self.buf.capacity(),
            "advance past the chunk handed out"
        );
        // SAFETY: within capacity (checked), and the caller initialized these bytes.
        unsafe { self.buf.set_len(len) };
    }

    fn chunk_mut(&mut self) -> &mut bytes::buf::UninitSlice {
        if self.buf.len() == self.buf.capacity() {
            self.flush();
            if self.buf.capacity() == 0 {
                self.buf.reserve(STREAM_BUF);
            }
        }
        bytes::buf::UninitSlice::uninit(self.buf.spare_capacity_mut())
    }

    fn put_slice(&mut self, src: &[u8]) {
        if src.len() >= PASS_THROUGH_FROM {
            self.flush();
            self.emit(src);
            return;
        }
        let mut rest = src;
        while !rest.is_empty() {
            if self.buf.len() == self.buf.capacity() {
                self.chunk_mut();
            }
            let n = rest.len().min(self.buf.capacity() - self.buf.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
    }

    fn put<T: bytes::Buf>(&mut self, mut src: T)
    where
        Self: Sized,
    {
        while src.has_remaining() {
            let chunk = src.chunk();
            let n = chunk.len();
            self.put_slice(chunk);
            src.advance(n);
        }
    }
}

/// What a full scan of a metadata file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScanSummary {
    /// Number of records.
    pub records: u32,
    /// crc32c of the whole file.
    pub file_crc: u32,
    /// The format minor version in the header.
    pub minor: u32,
}

/// Records at least this long are checksummed once, their crc32c then combined into the
/// file's; shorter ones are simply checksummed twice.
const COMBINE_FROM: usize = 64 << 10;

/// Where [`scan_records`] gets a file's bytes from: a reader (each piece read into a scratch
/// buffer) or the bytes themselves, in memory (each piece lent as it is, no copy).
pub(crate) trait RecordSource {
    /// The next `n` bytes (an error of kind `UnexpectedEof` where the data ends first).
    fn take<'s>(&'s mut self, n: usize, scratch: &'s mut Vec<u8>) -> io::Result<&'s [u8]>;
}

/// A [`RecordSource`] over a reader.
pub(crate) struct FromReader<R>(pub R);

impl<R: Read> RecordSource for FromReader<R> {
    fn take<'s>(&'s mut self, n: usize, scratch: &'s mut Vec<u8>) -> io::Result<&'s [u8]> {
        scratch.resize(n, 0);
        self.0.read_exact(scratch)?;
        Ok(scratch)
    }
}

impl RecordSource for &[u8] {
    fn take<'s>(&'s mut self, n: usize, _: &'s mut Vec<u8>) -> io::Result<&'s [u8]> {
        if n > self.len() {
            *self = &self[self.len()..];
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let (piece, rest) = self.split_at(n);
        *self = rest;
        Ok(piece)
    }
}

/// Reads a metadata file of `len` bytes from `source` and checks its header (against `ty`)
/// and framing: every record's length (before allocating) and checksum, the end record and
/// its count, nothing after it. Calls `on_record(offset, payload)` for every record, in order.
/// The bytes of a big record are checksummed once: the file's crc32c combines the record's.
///
/// `source` must yield exactly the file from its first byte; `len` is its size. A source that
/// ends early is reported as truncation at the offset where the data stopped.
pub(crate) fn scan_records<S: RecordSource>(
    mut source: S,
    len: u64,
    path: &Path,
    ty: ImageType,
    mut on_record: impl FnMut(u64, &[u8]) -> Result<(), ImageError>,
) -> Result<ScanSummary, ImageError> {
    let (mut offset, mut file_crc) = (0u64, 0u32);
    let mut scratch = Vec::new();
    let short = |path: &Path, offset: u64, what: &'static str| ImageError::Truncated {
        path: path.to_owned(),
        offset,
        what,
    };
    let read_err = |path: &Path, offset: u64, what: &'static str, e: io::Error| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            short(path, offset, what)
        } else {
            ImageError::io(path, "read", e)
        }
    };

    // The header; a short file is still checked for its magic first, so that a tiny foreign
    // file is reported as foreign.
    let head_len = len.min(HEADER_LEN as u64) as usize;
    let mut head = [0u8; HEADER_LEN];
    head[..head_len].copy_from_slice(
        source
            .take(head_len, &mut scratch)
            .map_err(|e| read_err(path, 0, "file header", e))?,
    );
    file_crc = crc32c::crc32c_append(file_crc, &head[..head_len]);
    offset += head_len as u64;
    check_header(path, &head[..head_len], ty)?;

    let mut records: u64 = 0;
    loop {
        let left = len - offset;
        if left == 0 {
            return Err(short(path, offset, "end record missing"));
        }
        if left < RECORD_PREFIX_LEN {
            return Err(short(path, offset, "record header cut short"));
        }
        let mut prefix = [0u8; RECORD_PREFIX_LEN as usize];
        prefix.copy_from_slice(
            source
                .take(RECORD_PREFIX_LEN as usize, &mut scratch)
                .map_err(|e| read_err(path, offset, "record header cut short", e))?,
        );
        file_crc = crc32c::crc32c_append(file_crc, &prefix);
        let record_at = offset;
        offset += RECORD_PREFIX_LEN;
        let rec_len = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        let stored = u32::from_le_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
        if rec_len == END_MARKER {
            if u64::from(stored) != records {
                return Err(ImageError::RecordCount {
                    path: path.to_owned(),
                    offset: record_at,
                    stored,
                    found: u32::try_from(records).unwrap_or(u32::MAX),
                });
            }
            if offset < len {
                return Err(ImageError::TrailingData {
                    path: path.to_owned(),
                    offset,
                    len: len - offset,
                });
            }
            return Ok(ScanSummary {
                records: stored,
                file_crc,
                minor: u32::from(u16::from_le_bytes([head[10], head[11]])),
            });
        }
        if rec_len > MAX_RECORD_LEN {
            return Err(ImageError::RecordTooLarge {
                path: path.to_owned(),
                offset: record_at,
                len: u64::from(rec_len),
            });
        }
        if u64::from(rec_len) > len - offset {
            return Err(short(
                path,
                record_at,
                "record runs past the end of the file",
            ));
        }
        let payload = source
            .take(rec_len as usize, &mut scratch)
            .map_err(|e| read_err(path, record_at, "record runs past the end of the file", e))?;
        let computed = crc32c::crc32c(payload);
        // Combining costs microseconds whatever the length; a second pass over a small
        // payload costs less.
        file_crc = if payload.len() >= COMBINE_FROM {
            crc32c::crc32c_combine(file_crc, computed, payload.len())
        } else {
            crc32c::crc32c_append(file_crc, payload)
        };
        offset += u64::from(rec_len);
        if computed != stored {
            return Err(ImageError::RecordChecksum {
                path: path.to_owned(),
                offset: record_at,
                stored,
                computed,
            });
        }
        on_record(record_at, payload)?;
        records += 1;
    }
}

/// Checks a whole metadata file held in memory (header against `ty`, framing, record
/// checksums, end record) and decodes its records as `M`. `path` only names the file in errors.
/// This is the decoding [`super::ImageReader`] applies to files on disk, without the manifest.
pub fn decode_records<M: prost::Message + Default>(
    path: &Path,
    ty: ImageType,
    bytes: &[u8],
) -> Result<Vec<M>, ImageError> {
    let mut out = Vec::new();
    scan_records(bytes, bytes.len() as u64, path, ty, |offset, payload| {
        out.push(decode_payload::<M>(path, offset, payload)?);
        Ok(())
    })?;
    Ok(out)
}

/// Decodes one record payload as `M`.
pub(crate) fn decode_payload<M: prost::Message + Default>(
    path: &Path,
    offset: u64,
    payload: &[u8],
) -> Result<M, ImageError> {
    M::decode(payload).map_err(|source| ImageError::Decode {
        path: path.to_owned(),
        offset,
        message: std::any::type_name::<M>(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{FdEntry, FdKind, PstreeEntry};
    use std::path::PathBuf;

    fn path() -> PathBuf {
        PathBuf::from("/ckpt/fds-42.img")
    }

    fn small_file() -> Vec<u8> {
        let recs = vec![
            FdEntry {
                fd: 0,
                kind: FdKind::FdChr as i32,
                path: "/dev/null".into(),
                ..Default::default()
            },
            FdEntry {
                fd: 3,
                path: "/tmp/x".into(),
                pos: 17,
                ..Default::default()
            },
        ];
        encode_records(&path(), ImageType::Fds, &recs).unwrap()
    }

    #[test]
    fn header_layout() {
        let h = encode_header(ImageType::Mm);
        assert_eq!(&h[0..4], b"CRYO");
        assert_eq!(u32::from_le_bytes(h[4..8].try_into().unwrap()), 5);
        assert_eq!(
            u32::from(u16::from_le_bytes(h[8..10].try_into().unwrap())),
            FORMAT_MAJOR
        );
        assert_eq!(u16::from_le_bytes(h[10..12].try_into().unwrap()), 0);
        assert_eq!(&h[12..16], &[0; 4]);
    }

    #[test]
    fn record_layout() {
        let rec = PstreeEntry {
            pid: 7,
            ..Default::default()
        };
        let bytes = encode_records(&path(), ImageType::Pstree, std::slice::from_ref(&rec)).unwrap();
        let payload = prost::Message::encode_to_vec(&rec);
        assert_eq!(bytes.len(), 16 + 8 + payload.len() + 8);
        assert_eq!(
            u32::from_le_bytes(bytes[16..20].try_into().unwrap()) as usize,
            payload.len()
        );
        assert_eq!(
            u32::from_le_bytes(bytes[20..24].try_into().unwrap()),
            crc32c::crc32c(&payload)
        );
        assert_eq!(&bytes[24..24 + payload.len()], &payload[..]);
        let end = &bytes[24 + payload.len()..];
        assert_eq!(end, &[0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0]);
    }

    #[test]
    fn round_trip_empty_and_some() {
        let empty: Vec<FdEntry> = Vec::new();
        let bytes = encode_records(&path(), ImageType::Fds, &empty).unwrap();
        assert_eq!(bytes.len(), 24);
        let back: Vec<FdEntry> = decode_records(&path(), ImageType::Fds, &bytes).unwrap();
        assert!(back.is_empty());

        let bytes = small_file();
        let back: Vec<FdEntry> = decode_records(&path(), ImageType::Fds, &bytes).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].path, "/tmp/x");
        assert_eq!(back[1].pos, 17);
    }

    /// Every single-byte corruption of a small file is refused, except a newer minor version,
    /// which the header accepts by design (the manifest checksum catches that one; see the
    /// directory-level test).
    #[test]
    fn corruption_at_every_byte_is_refused() {
        let good = small_file();
        for pos in 0..good.len() {
            if (10..12).contains(&pos) {
                continue;
            }
            for pattern in [0x01u8, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[pos] ^= pattern;
                let res: Result<Vec<FdEntry>, _> = decode_records(&path(), ImageType::Fds, &bad);
                assert!(
                    res.is_err(),
                    "corruption {pattern:#x} at byte {pos} accepted"
                );
            }
        }
    }

    #[test]
    fn truncation_at_every_length_is_refused() {
        let good = small_file();
        for len in 0..good.len() {
            let res: Result<Vec<FdEntry>, _> =
                decode_records(&path(), ImageType::Fds, &good[..len]);
            match res {
                Err(ImageError::Truncated { offset, .. }) => assert!(offset <= len as u64),
                other => panic!("truncated to {len}: {other:?}"),
            }
        }
        // An extra byte is refused too.
        let mut long = good.clone();
        long.push(0);
        let res: Result<Vec<FdEntry>, _> = decode_records(&path(), ImageType::Fds, &long);
        assert!(matches!(res, Err(ImageError::TrailingData { len: 1, .. })));
    }

    #[test]
    fn foreign_files_are_not_cryo_images() {
        let mut elf = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
        elf.resize(64, 0);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let random: Vec<u8> = (0..100)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for bytes in [
            &elf[..],
            &random[..],
            &b"CR"[..0],
            &b"CRYX"[..],
            &b"\x7fEL"[..],
        ] {
            let err = decode_records::<FdEntry>(&path(), ImageType::Fds, bytes).unwrap_err();
            if bytes.is_empty() {
                assert!(matches!(err, ImageError::Truncated { .. }), "{err}");
            } else {
                assert!(err.to_string().contains("not a cryo image"), "{err}");
                assert!(err.to_string().contains("/ckpt/fds-42.img"), "{err}");
            }
        }
    }

    #[test]
    fn versions_and_types() {
        let good = small_file();
        let mut newer_major = good.clone();
        newer_major[8] = 3;
        let err = decode_records::<FdEntry>(&path(), ImageType::Fds, &newer_major).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::UnsupportedVersion {
                    major: 3,
                    minor: 0,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("3.0"), "{err}");

        let mut older_major = good.clone();
        older_major[8] = 0;
        assert!(matches!(
            decode_records::<FdEntry>(&path(), ImageType::Fds, &older_major),
            Err(ImageError::UnsupportedVersion { major: 0, .. })
        ));

        // A newer minor is accepted, even with the reserved field in use.
        let mut newer_minor = good.clone();
        newer_minor[10] = 3;
        newer_minor[12] = 1;
        assert_eq!(
            decode_records::<FdEntry>(&path(), ImageType::Fds, &newer_minor)
                .unwrap()
                .len(),
            2
        );

        // ... but not the reserved field in the current minor.
        let mut reserved = good.clone();
        reserved[15] = 1;
        assert!(matches!(
            decode_records::<FdEntry>(&path(), ImageType::Fds, &reserved),
            Err(ImageError::BadHeader { offset: 12, .. })
        ));

        let err = decode_records::<FdEntry>(&path(), ImageType::Mm, &good).unwrap_err();
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
    }

    #[test]
    fn record_length_over_the_limit_is_refused_before_allocating() {
        for claimed in [MAX_RECORD_LEN + 1, END_MARKER - 1] {
            let mut bytes = encode_header(ImageType::Fds).to_vec();
            bytes.extend_from_slice(&claimed.to_le_bytes());
            bytes.extend_from_slice(&0u32.to_le_bytes());
            bytes.extend_from_slice(&[0; 32]);
            let err = decode_records::<FdEntry>(&path(), ImageType::Fds, &bytes).unwrap_err();
            assert!(
                matches!(err, ImageError::RecordTooLarge { offset: 16, len, .. } if len == u64::from(claimed)),
                "{err}"
            );
        }
        // Within the limit but past the end of the file: truncation, still before allocating.
        let mut bytes = encode_header(ImageType::Fds).to_vec();
        bytes.extend_from_slice(&MAX_RECORD_LEN.to_le_bytes());
        bytes.extend_from_slice(&[0; 12]);
        let err = decode_records::<FdEntry>(&path(), ImageType::Fds, &bytes).unwrap_err();
        assert!(
            matches!(err, ImageError::Truncated { offset: 16, .. }),
            "{err}"
        );
    }

    #[test]
    fn writer_refuses_an_oversized_record() {
        let huge = FdEntry {
            path: "x".repeat(MAX_RECORD_LEN as usize),
            ..Default::default()
        };
        let err = encode_records(&path(), ImageType::Fds, &[huge]).unwrap_err();
        assert!(
            matches!(err, ImageError::RecordTooLarge { offset: 16, .. }),
            "{err}"
        );
    }

    #[test]
    fn bad_payload_is_a_decode_error_with_offset() {
        // A payload that passes its checksum but is not a valid message (truncated varint).
        let payload = [0x08u8, 0x80];
        let mut bytes = encode_header(ImageType::Fds).to_vec();
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        bytes.extend_from_slice(&END_MARKER.to_le_bytes());
        bytes.extend_from_slice(&1u32.to_le_bytes());
        let err = decode_records::<FdEntry>(&path(), ImageType::Fds, &bytes).unwrap_err();
        assert!(
            matches!(err, ImageError::Decode { offset: 16, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("FdEntry"), "{err}");
    }

    #[test]
    fn random_mutations_never_panic() {
        let good = small_file();
        let mut x: u64 = 0x1234_5678_9abc_def1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let mut bad = good.clone();
            for _ in 0..(next() % 4 + 1) {
                let pos = (next() as usize) % bad.len();
                bad[pos] = next() as u8;
            }
            let cut = (next() as usize) % (bad.len() + 1);
            let _ = decode_records::<FdEntry>(&path(), ImageType::Fds, &bad[..cut]);
        }
    }
}
