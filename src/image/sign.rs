//! Authenticated checkpoints: the signing key, the SHA-256 digests of image files, and the
//! HMAC-SHA256 in `signature.img` that binds them together.
//!
//! Owns the cryptography of the image layer and nothing else: it reads key files and image
//! files (never following a symlink for an image file) and computes and checks MACs. It does
//! not decide when a checkpoint is signed or verified; the writer and reader do.
//!
//! # Why not just a MAC over the manifest
//!
//! The manifest in `inventory.img` covers every file by size and crc32c, and the page map covers
//! page data by crc32c. That is enough against accidents but not against someone who alters a
//! file on purpose: crc32c is linear, and a change can be made to keep it. So the signature
//! covers a SHA-256 of every file (the page stores included), and the HMAC covers those digests.
//!
//! # What is signed
//!
//! `signature.img` holds one [`Signature`] record: the algorithm (`"hmac-sha256"`), one
//! [`FileDigest`] (name, size, SHA-256 of the whole file) for `inventory.img` and then for every
//! file of the manifest in name order, and the HMAC. The HMAC is computed under the key over
//! this byte string (all integers little-endian), never over protobuf bytes:
//!
//! ```text
//!  "cryo-signature-v1\0"
//!  u32 len, algorithm
//!  u32 count
//!  count x ( u32 len, name | u64 size | u32 len, sha256 )
//! ```
//!
//! Verification recomputes the digests from the files themselves, rebuilds this string from the
//! recomputed digests and checks the HMAC in constant time. The digests stored in the record
//! must then equal the recomputed ones, and the record must be exactly the bytes cryo would
//! encode for it (its file header the inventory's version), so that no byte of
//! `signature.img` is free either. When the HMAC does not verify, the stored digests name the
//! file that differs.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::proto::{FileDigest, Signature};

use super::ImageError;

/// The file name of the signature.
pub const SIGNATURE_FILE: &str = "signature.img";
/// The only algorithm cryo writes and reads.
pub const SIGNATURE_ALGORITHM: &str = "hmac-sha256";
/// The shortest key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 16;
/// The longest key file accepted, in bytes (checked before reading it).
pub const MAX_KEY_LEN: u64 = 4096;
/// The domain-separation prefix of the signed byte string.
const SIGNED_PREFIX: &[u8] = b"cryo-signature-v1\0";
/// Chunk size for hashing files.
const HASH_CHUNK: usize = 1 << 20;

type HmacSha256 = Hmac<Sha256>;

/// A signing key: the raw bytes of a key file (at least [`MIN_KEY_LEN`] of them). Its `Debug`
/// output shows only the length, and its bytes are overwritten when it is dropped.
#[derive(Clone)]
pub struct SignKey {
    bytes: Vec<u8>,
    origin: PathBuf,
}

impl std::fmt::Debug for SignKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SignKey({} bytes)", self.bytes.len())
    }
}

impl Drop for SignKey {
    fn drop(&mut self) {
        self.bytes.fill(0);
        std::hint::black_box(&self.bytes);
    }
}

impl SignKey {
    /// A key made of `bytes`; `origin` names where they came from, for errors.
    pub fn from_bytes(origin: &Path, bytes: &[u8]) -> Result<Self, ImageError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(ImageError::BadKey {
                path: origin.to_owned(),
                reason: format!(
                    "{} bytes; a key needs at least {MIN_KEY_LEN} (e.g. head -c 32 /dev/urandom)",
                    bytes.len()
                ),
            });
        }
        Ok(SignKey {
            bytes: bytes.to_vec(),
            origin: origin.to_owned(),
        })
    }

    /// Reads a key file: all of its bytes, as they are, are the key. Refuses a file that is
    /// not a regular file, longer than [`MAX_KEY_LEN`] or shorter than [`MIN_KEY_LEN`]; warns
    /// if group or others may read it.
    pub fn from_file(path: &Path) -> Result<Self, ImageError> {
        let bad = |reason: String| ImageError::BadKey {
            path: path.to_owned(),
            reason,
        };
        let file = File::open(path).map_err(|e| bad(format!("cannot open: {e}")))?;
        let meta = file
            .metadata()
            .map_err(|e| bad(format!("cannot stat: {e}")))?;
        if !meta.is_file() {
            return Err(bad("not a regular file".into()));
        }
        if meta.len() > MAX_KEY_LEN {
            return Err(bad(format!(
                "{} bytes; a key file holds at most {MAX_KEY_LEN}",
                meta.len()
            )));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "signing key file is readable by group or others");
        }
        let mut bytes = Vec::new();
        file.take(MAX_KEY_LEN + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| bad(format!("cannot read: {e}")))?;
        let key = Self::from_bytes(path, &bytes);
        bytes.fill(0);
        key
    }

    /// A MAC keyed with this key. (HMAC takes keys of every length: longer ones are hashed,
    /// shorter ones padded; the error cannot happen, but is reported rather than assumed.)
    fn mac(&self) -> Result<HmacSha256, ImageError> {
        <HmacSha256 as Mac>::new_from_slice(&self.bytes).map_err(|e| ImageError::BadKey {
            path: self.origin.clone(),
            reason: e.to_string(),
        })
    }
}

/// A reader that feeds everything it reads into a SHA-256 (when there is one).
pub(crate) struct HashingReader<'a, R> {
    pub(crate) inner: R,
    pub(crate) hasher: Option<&'a mut Sha256>,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = self.hasher.as_deref_mut() {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// The SHA-256 of the first `len` bytes of an open file, read in large chunks.
pub(crate) fn sha256_file(file: &File, path: &Path, len: u64) -> Result<[u8; 32], ImageError> {
    sha256_range(file, path, 0, len)
}

/// The SHA-256 of the `len` bytes at `start` of an open file (a file packed in `pack.img`).
/// Errors give offsets relative to `start`.
pub(crate) fn sha256_range(
    file: &File,
    path: &Path,
    start: u64,
    len: u64,
) -> Result<[u8; 32], ImageError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_CHUNK.min(len as usize)];
    let mut pos = 0u64;
    while pos < len {
        let n = ((len - pos) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], start + pos)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => ImageError::Truncated {
                    path: path.to_owned(),
                    offset: pos,
                    what: "file shorter than its size while hashing",
                },
                _ => ImageError::io(path, "read for hashing", e),
            })?;
        hasher.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(hasher.finalize().into())
}

/// The SHA-256 of a byte string.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The byte string the HMAC covers (see the module docs).
fn signed_bytes(algorithm: &str, files: &[FileDigest]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIGNED_PREFIX.len() + 8 + files.len() * 96);
    let put_bytes = |out: &mut Vec<u8>, b: &[u8]| {
        // Names and digests are short; a length that does not fit cannot come from a file
        // cryo would sign, and saturating keeps the encoding injective for what can.
        out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(b);
    };
    out.extend_from_slice(SIGNED_PREFIX);
    put_bytes(&mut out, algorithm.as_bytes());
    out.extend_from_slice(&u32::try_from(files.len()).unwrap_or(u32::MAX).to_le_bytes());
    for f in files {
        put_bytes(&mut out, f.name.as_bytes());
        out.extend_from_slice(&f.size.to_le_bytes());
        put_bytes(&mut out, &f.sha256);
    }
    out
}

/// Signs the digests of a checkpoint's files (inventory first, then the manifest in name
/// order).
pub(crate) fn sign(key: &SignKey, files: Vec<FileDigest>) -> Result<Signature, ImageError> {
    let mut mac = key.mac()?;
    mac.update(&signed_bytes(SIGNATURE_ALGORITHM, &files));
    Ok(Signature {
        algorithm: SIGNATURE_ALGORITHM.to_owned(),
        files,
        hmac: mac.finalize().into_bytes().to_vec(),
    })
}

/// Checks `signature` (read from `sig_path`) against the digests just computed from the files
/// of the checkpoint in `dir` (`actual`: inventory first, then the manifest in name order).
/// On failure names the first file that differs from what was signed, or the signature itself.
pub(crate) fn verify(
    key: &SignKey,
    dir: &Path,
    sig_path: &Path,
    signature: &Signature,
    actual: &[FileDigest],
) -> Result<(), ImageError> {
    if signature.algorithm != SIGNATURE_ALGORITHM {
        return Err(ImageError::BadSignature {
            path: sig_path.to_owned(),
            reason: format!(
                "unknown algorithm {:?} (this cryo knows {SIGNATURE_ALGORITHM})",
                signature.algorithm
            ),
        });
    }
    let mut mac = key.mac()?;
    mac.update(&signed_bytes(SIGNATURE_ALGORITHM, actual));
    if mac.verify_slice(&signature.hmac).is_ok() {
        // The digests in the record are not what the MAC covers; they must still be exactly
        // the files', so that no byte of the record is free to change.
        if signature.files != actual {
            return Err(ImageError::BadSignature {
                path: sig_path.to_owned(),
                reason: "its list of file digests differs from the files".into(),
            });
        }
        return Ok(());
    }
    // Not authentic. Name the culprit if the record's own digests show it.
    for a in actual {
        let reason = match signature.files.iter().find(|s| s.name == a.name) {
            None => "not part of the signed checkpoint",
            Some(s) if s.size != a.size => "size differs from the signed checkpoint",
            Some(s) if s.sha256 != a.sha256 => "contents differ from the signed checkpoint",
            Some(_) => continue,
        };
        return Err(ImageError::SignatureMismatch {
            path: dir.join(&a.name),
            reason,
        });
    }
    if let Some(s) = signature
        .files
        .iter()
        .find(|s| !actual.iter().any(|a| a.name == s.name))
    {
        return Err(ImageError::SignatureMismatch {
            path: dir.join(&s.name),
            reason: "signed, but no longer part of the checkpoint",
        });
    }
    Err(ImageError::BadSignature {
        path: sig_path.to_owned(),
        reason: "the HMAC does not verify: wrong key, or the signature was altered".into(),
    })
}

/// Whether a checkpoint directory holds a signature file (not whether it is valid).
pub fn is_signed(dir: &Path) -> bool {
    fs::symlink_metadata(dir.join(SIGNATURE_FILE)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SignKey {
        SignKey::from_bytes(Path::new("k"), &[b; 32]).unwrap()
    }

    fn files() -> Vec<FileDigest> {
        ["inventory.img", "core-1.img", "pages-1.img"]
            .iter()
            .enumerate()
            .map(|(i, n)| FileDigest {
                name: (*n).into(),
                size: 100 + i as u64,
                sha256: sha256(n.as_bytes()).to_vec(),
            })
            .collect()
    }

    #[test]
    fn hmac_sha256_known_answer() {
        // RFC 4231, test case 2 (key "Jefe" is short, so build the MAC directly).
        let mut mac = <HmacSha256 as Mac>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let out = mac.finalize().into_bytes();
        let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn sign_then_verify() {
        let dir = Path::new("/ckpt");
        let sig_path = dir.join(SIGNATURE_FILE);
        let sig = sign(&key(1), files()).unwrap();
        assert_eq!(sig.hmac.len(), 32);
        verify(&key(1), dir, &sig_path, &sig, &files()).unwrap();

        // Wrong key.
        let err = verify(&key(2), dir, &sig_path, &sig, &files()).unwrap_err();
        assert!(matches!(err, ImageError::BadSignature { .. }), "{err}");

        // A file's digest, size, or name changed; a file added or dropped.
        let mut changed = files();
        changed[1].sha256[0] ^= 1;
        let err = verify(&key(1), dir, &sig_path, &sig, &changed).unwrap_err();
        assert!(
            matches!(&err, ImageError::SignatureMismatch { path, .. } if path.ends_with("core-1.img")),
            "{err}"
        );
        let mut changed = files();
        changed[2].size += 1;
        let err = verify(&key(1), dir, &sig_path, &sig, &changed).unwrap_err();
        assert!(err.to_string().contains("pages-1.img"), "{err}");
        let mut changed = files();
        changed.push(FileDigest {
            name: "fds-1.img".into(),
            ..Default::default()
        });
        let err = verify(&key(1), dir, &sig_path, &sig, &changed).unwrap_err();
        assert!(err.to_string().contains("fds-1.img"), "{err}");
        let mut changed = files();
        changed.pop();
        let err = verify(&key(1), dir, &sig_path, &sig, &changed).unwrap_err();
        assert!(err.to_string().contains("pages-1.img"), "{err}");

        // The record's own digests rewritten to match an altered file: still refused.
        let mut forged = sig.clone();
        forged.files[1].sha256[0] ^= 1;
        let mut changed = files();
        changed[1].sha256[0] ^= 1;
        let err = verify(&key(1), dir, &sig_path, &forged, &changed).unwrap_err();
        assert!(matches!(err, ImageError::BadSignature { .. }), "{err}");

        // Another algorithm, a truncated or missing MAC.
        let mut other = sig.clone();
        other.algorithm = "hmac-sha1".into();
        assert!(verify(&key(1), dir, &sig_path, &other, &files()).is_err());
        let mut short = sig.clone();
        short.hmac.truncate(16);
        assert!(verify(&key(1), dir, &sig_path, &short, &files()).is_err());
        short.hmac.clear();
        assert!(verify(&key(1), dir, &sig_path, &short, &files()).is_err());
    }

    #[test]
    fn signed_bytes_are_unambiguous() {
        // Moving a byte from a name into the next field changes the signed string.
        let a = vec![FileDigest {
            name: "ab".into(),
            size: 1,
            sha256: vec![1],
        }];
        let b = vec![FileDigest {
            name: "a".into(),
            size: 1,
            sha256: vec![b'b', 1],
        }];
        assert_ne!(signed_bytes("x", &a), signed_bytes("x", &b));
        assert_ne!(signed_bytes("x", &a), signed_bytes("y", &a));
    }

    #[test]
    fn keys() {
        assert!(SignKey::from_bytes(Path::new("k"), &[7; 15]).is_err());
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("key");
        fs::write(&p, [9u8; 32]).unwrap();
        let k = SignKey::from_file(&p).unwrap();
        assert_eq!(format!("{k:?}"), "SignKey(32 bytes)");
        fs::write(&p, [9u8; 8]).unwrap();
        let err = SignKey::from_file(&p).unwrap_err();
        assert!(err.to_string().contains("at least 16"), "{err}");
        fs::write(&p, vec![9u8; MAX_KEY_LEN as usize + 1]).unwrap();
        assert!(SignKey::from_file(&p).is_err());
        assert!(SignKey::from_file(tmp.path()).is_err());
        let err = SignKey::from_file(&tmp.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn file_hash_matches_memory_hash() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        let data: Vec<u8> = (0..(HASH_CHUNK * 2 + 77)).map(|i| i as u8).collect();
        fs::write(&p, &data).unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(
            sha256_file(&f, &p, data.len() as u64).unwrap(),
            sha256(&data)
        );
        let err = sha256_file(&f, &p, data.len() as u64 + 1).unwrap_err();
        assert!(matches!(err, ImageError::Truncated { .. }), "{err}");
    }
}
