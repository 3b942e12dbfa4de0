//! File locks at dump: the `lock:` lines of an fd's fdinfo, which list the locks held through
//! that open file description (flock and OFD locks) or by the process on it (POSIX locks).
//! Saved only with `--file-locks`; without it a held lock makes the dump fail, as criu does,
//! since a restored process that silently lost its locks could corrupt what they protect.
//! Leases and delegations are refused.

use super::files::FdRef;
use super::proc::FdInfo;
use super::DumpError;
use crate::proto::{file_lock::Kind, FileLock};

/// Parses the value of an fdinfo `lock:` line, e.g.
/// `1: POSIX  ADVISORY  WRITE 1234 fe:00:131 10 19` or `2: FLOCK  ADVISORY  READ 5 0:1:2 0 EOF`.
pub fn parse_lock(v: &str) -> Result<FileLock, String> {
    let t: Vec<&str> = v.split_whitespace().collect();
    if t.len() < 8 {
        return Err(format!("cannot parse the lock {v:?}"));
    }
    let kind = match t[1] {
        "FLOCK" => Kind::Flock,
        "POSIX" => Kind::Posix,
        "OFDLCK" => Kind::Ofd,
        other => return Err(format!("a {other} lock is not supported")),
    };
    let write = match t[3] {
        "WRITE" => true,
        "READ" => false,
        other => return Err(format!("a lock of mode {other} is not supported")),
    };
    let start: u64 = t[6]
        .parse()
        .map_err(|_| format!("bad lock start in {v:?}"))?;
    let len = match t[7] {
        "EOF" => 0,
        end => {
            let end: u64 = end.parse().map_err(|_| format!("bad lock end in {v:?}"))?;
            end.checked_sub(start)
                .and_then(|d| d.checked_add(1))
                .ok_or_else(|| format!("bad lock range in {v:?}"))?
        }
    };
    Ok(FileLock {
        kind: kind as i32,
        write,
        start,
        len,
    })
}

/// The locks held through the description of `r`. With `save` false, any lock refuses the
/// dump.
pub fn locks(r: &FdRef, info: &FdInfo, save: bool) -> Result<Vec<FileLock>, DumpError> {
    let mut out = Vec::new();
    for (_, v) in info.extra.iter().filter(|(k, _)| k == "lock") {
        if !save {
            return Err(r.refuse(format!(
                "holds a file lock ({v}); dump with --file-locks to save it"
            )));
        }
        out.push(parse_lock(v).map_err(|e| r.refuse(e))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_lines() {
        let l = parse_lock("1: FLOCK  ADVISORY  WRITE 16909 fe:00:10150242 0 EOF").unwrap();
        assert_eq!(
            (l.kind(), l.write, l.start, l.len),
            (Kind::Flock, true, 0, 0)
        );
        let l = parse_lock("2: POSIX  ADVISORY  READ 77 fe:00:131 10 19").unwrap();
        assert_eq!(
            (l.kind(), l.write, l.start, l.len),
            (Kind::Posix, false, 10, 10)
        );
        let l = parse_lock("3: OFDLCK ADVISORY  WRITE -1 fe:00:131 0 4").unwrap();
        assert_eq!((l.kind(), l.write, l.start, l.len), (Kind::Ofd, true, 0, 5));
        assert!(parse_lock("4: LEASE  ACTIVE    READ 7 fe:00:1 0 EOF").is_err());
        assert!(parse_lock("garbage").is_err());
    }
}
