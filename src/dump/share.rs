//! Kernel objects shared between the processes of a tree, told apart with kcmp: which
//! processes share one fd table (CLONE_FILES) or one fs info (cwd, root, umask: CLONE_FS),
//! and the memory check (CLONE_VM between processes is refused). kcmp orders objects (the
//! kernel compares their obfuscated addresses), so equal objects are found by sorting with it
//! as comparator ([`classes_by`]: O(n log n) kcmp calls) rather than comparing every pair.
//!
//! A shared fd table or fs info is restored by creating each sharing process with the clone
//! flag from its parent, so a group of sharers must be a subtree: exactly one member (the
//! owner, which restores the table or fs info) has its parent outside the group, every other
//! member's parent is in it. Anything else is refused, naming the processes.

use super::seize::SeizedProc;
use super::DumpError;
use crate::sys::proc_ctl::{kcmp_order, KCMP_FILES, KCMP_FS, KCMP_VM};
use std::collections::BTreeMap;

/// What one live process shares with others of the tree: the owner of its group, 0 if it has
/// its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcSharing {
    /// The process that owns the fd table this one shares (CLONE_FILES).
    pub files_owner: i32,
    /// The process that owns the cwd/root/umask this one shares (CLONE_FS).
    pub fs_owner: i32,
}

/// Finds the fd tables and fs infos shared between live processes of `procs`, and refuses
/// processes sharing their memory (not threads: a vfork child, or clone(CLONE_VM)) and
/// sharing groups that are not a subtree. Processes not in the map share nothing.
pub fn process_sharing(procs: &[SeizedProc]) -> Result<BTreeMap<i32, ProcSharing>, DumpError> {
    let live: Vec<&SeizedProc> = procs.iter().filter(|p| p.zombie.is_none()).collect();
    let mut out: BTreeMap<i32, ProcSharing> = BTreeMap::new();
    for (kind, what) in [
        (KCMP_VM, "memory"),
        (KCMP_FILES, "fd table"),
        (KCMP_FS, "cwd, root and umask"),
    ] {
        let classes = classes_by(&live, |a, b| {
            kcmp_order(a.pid, b.pid, kind, 0, 0).map_err(|source| DumpError::Ptrace {
                pid: a.pid,
                what: "kcmp with another process of the tree",
                source,
            })
        })?;
        let mut groups: BTreeMap<usize, Vec<&SeizedProc>> = BTreeMap::new();
        for (p, c) in live.iter().zip(&classes) {
            groups.entry(*c).or_default().push(p);
        }
        for members in groups.values().filter(|m| m.len() > 1) {
            let pids: Vec<i32> = members.iter().map(|p| p.pid).collect();
            if kind == KCMP_VM {
                return Err(DumpError::Unsupported {
                    pid: pids[1],
                    what: format!(
                        "processes {pids:?} share one memory (a vfork child, or clone with \
                         CLONE_VM but not CLONE_THREAD); not supported"
                    ),
                });
            }
            let tops: Vec<i32> = members
                .iter()
                .filter(|p| !pids.contains(&p.ppid))
                .map(|p| p.pid)
                .collect();
            let [owner] = tops[..] else {
                return Err(DumpError::Unsupported {
                    pid: pids[0],
                    what: format!(
                        "processes {pids:?} share one {what}, but not each with its parent \
                         ({tops:?} have their parent outside the group): restore can only \
                         share it from parent to child"
                    ),
                });
            };
            for &pid in pids.iter().filter(|&&p| p != owner) {
                let s = out.entry(pid).or_default();
                if kind == KCMP_FILES {
                    s.files_owner = owner;
                } else {
                    s.fs_owner = owner;
                }
            }
        }
    }
    Ok(out)
}

/// Sorts `items` with a fallible comparator (a stable merge sort: O(n log n) comparisons, and
/// the first error ends it), then numbers the classes of equal items. Returns, for each item
/// in its original position, the index of its class; classes are numbered in the order of
/// their first item.
pub fn classes_by<T, E>(
    items: &[T],
    mut cmp: impl FnMut(&T, &T) -> Result<std::cmp::Ordering, E>,
) -> Result<Vec<usize>, E> {
    use std::cmp::Ordering;
    let n = items.len();
    let mut order: Vec<usize> = (0..n).collect();
    let mut buf: Vec<usize> = Vec::with_capacity(n);
    let mut width = 1;
    while width < n {
        let mut start = 0;
        while start < n {
            let mid = (start + width).min(n);
            let end = (start + 2 * width).min(n);
            buf.clear();
            let (mut i, mut j) = (start, mid);
            while i < mid && j < end {
                if cmp(&items[order[j]], &items[order[i]])? == Ordering::Less {
                    buf.push(order[j]);
                    j += 1;
                } else {
                    buf.push(order[i]);
                    i += 1;
                }
            }
            buf.extend_from_slice(&order[i..mid]);
            buf.extend_from_slice(&order[j..end]);
            order[start..end].copy_from_slice(&buf);
            start = end;
        }
        width *= 2;
    }
    // Runs of equal items, then classes renumbered by first appearance.
    let mut run_of = vec![0usize; n];
    let mut run = 0;
    for k in 0..n {
        if k > 0 && cmp(&items[order[k - 1]], &items[order[k]])? != Ordering::Equal {
            run += 1;
        }
        run_of[order[k]] = run;
    }
    let mut renum: Vec<Option<usize>> = vec![None; run + 1];
    let mut next = 0;
    let mut out = Vec::with_capacity(n);
    for &r in &run_of {
        let c = *renum[r].get_or_insert_with(|| {
            next += 1;
            next - 1
        });
        out.push(c);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::classes_by;

    #[test]
    fn classes_of_equal_items() {
        let v = [5, 3, 5, 9, 3, 3, 1, 5];
        let c = classes_by(&v, |a, b| Ok::<_, ()>(a.cmp(b))).unwrap();
        assert_eq!(c, vec![0, 1, 0, 2, 1, 1, 3, 0]);
        let empty: [i32; 0] = [];
        assert!(classes_by(&empty, |a, b| Ok::<_, ()>(a.cmp(b)))
            .unwrap()
            .is_empty());
        // Counts comparisons: n log n, not n^2.
        let many: Vec<u32> = (0..1000).map(|i| (i * 7919) % 97).collect();
        let mut calls = 0u32;
        let c = classes_by(&many, |a, b| {
            calls += 1;
            Ok::<_, ()>(a.cmp(b))
        })
        .unwrap();
        assert!(calls < 1000 * 12, "{calls} comparisons");
        for i in 0..many.len() {
            for j in 0..many.len() {
                assert_eq!(c[i] == c[j], many[i] == many[j]);
            }
        }
        assert_eq!(
            classes_by(&v, |_, _| Err::<std::cmp::Ordering, _>("boom")),
            Err("boom")
        );
    }
}
