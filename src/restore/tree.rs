//! The shape of the tree to restore: who forks whom, in which order, and which session and
//! process group each process must end up in. Pure logic, validated before any fork.

use super::RestoreError;
use crate::proto::PstreeEntry;
use std::collections::BTreeMap;

/// The validated process tree.
pub struct Plan {
    entries: BTreeMap<i32, PstreeEntry>,
    children: BTreeMap<i32, Vec<i32>>,
    root: i32,
}

/// What a process does about its session and group right after it is forked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// Keep what it inherited from its parent.
    Inherit,
    /// setsid(): it leads a new session (and its group).
    NewSession,
    /// setpgid(0, 0): it leads a new group.
    NewGroup,
    /// setpgid(0, pgid): it joins an existing group.
    Group(i32),
}

impl Plan {
    /// Checks the tree: one root with the inventory's PID, every parent present and alive,
    /// every session and group either inherited from outside (through the root) or led by a
    /// process of the tree.
    pub fn new(entries: Vec<PstreeEntry>, root: i32) -> Result<Self, RestoreError> {
        let bad = |pid: i32, what: String| RestoreError::Invalid {
            pid,
            what: format!("pstree.img: {what}"),
        };
        let mut map = BTreeMap::new();
        for e in entries {
            if e.pid <= 0 {
                return Err(bad(e.pid, "invalid pid".into()));
            }
            if !e.zombie && e.threads.first() != Some(&e.pid) {
                return Err(bad(
                    e.pid,
                    "the first thread is not the process itself".into(),
                ));
            }
            if e.zombie && !e.threads.is_empty() {
                return Err(bad(e.pid, "a zombie with threads".into()));
            }
            if map.insert(e.pid, e.clone()).is_some() {
                return Err(bad(e.pid, "listed twice".into()));
            }
        }
        let r = map
            .get(&root)
            .ok_or_else(|| bad(root, "the root process is missing".into()))?;
        if r.zombie {
            return Err(bad(root, "the root is a zombie".into()));
        }
        let (root_pgid, root_sid) = (r.pgid, r.sid);
        let mut children: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for e in map.values() {
            if e.pid == root {
                continue;
            }
            match map.get(&e.ppid) {
                Some(p) if !p.zombie => children.entry(e.ppid).or_default().push(e.pid),
                _ => {
                    return Err(bad(
                        e.pid,
                        format!(
                            "its parent {} is not a live process of the checkpoint",
                            e.ppid
                        ),
                    ))
                }
            }
            if e.zombie {
                continue;
            }
            let led = |id: i32| map.get(&id).is_some_and(|l| !l.zombie);
            if e.sid != e.pid && e.sid != root_sid && !led(e.sid) {
                return Err(bad(
                    e.pid,
                    format!("its session {} has no leader in the checkpoint", e.sid),
                ));
            }
            if e.pgid != e.pid && e.pgid != root_pgid && !led(e.pgid) {
                return Err(bad(
                    e.pid,
                    format!(
                        "its process group {} has no leader in the checkpoint",
                        e.pgid
                    ),
                ));
            }
        }
        for e in map.values().filter(|e| e.files_shared || e.fs_shared) {
            let parent_live = map.get(&e.ppid).is_some_and(|p| !p.zombie);
            if e.zombie || e.pid == root || !parent_live {
                return Err(bad(
                    e.pid,
                    "it shares its parent's fd table or cwd, but has no live parent in the \
                     checkpoint"
                        .into(),
                ));
            }
        }
        // Fork group leaders before the processes that join their groups.
        for kids in children.values_mut() {
            kids.sort_by_key(|k| (map[k].pgid != *k, *k));
        }
        // Every process must be reachable from the root (no cycles).
        let mut seen = 0usize;
        let mut stack = vec![root];
        while let Some(p) = stack.pop() {
            seen += 1;
            if seen > map.len() {
                return Err(bad(root, "the parent links form a cycle".into()));
            }
            stack.extend(children.get(&p).into_iter().flatten());
        }
        if seen != map.len() {
            return Err(bad(
                root,
                "some processes are not descendants of the root".into(),
            ));
        }
        Ok(Self {
            entries: map,
            children,
            root,
        })
    }

    /// The root PID.
    pub fn root(&self) -> i32 {
        self.root
    }

    /// One process's entry.
    pub fn entry(&self, pid: i32) -> Option<&PstreeEntry> {
        self.entries.get(&pid)
    }

    /// Every entry, by PID.
    pub fn entries(&self) -> impl Iterator<Item = &PstreeEntry> {
        self.entries.values()
    }

    /// The children `pid` forks, in fork order.
    pub fn children(&self, pid: i32) -> &[i32] {
        self.children.get(&pid).map_or(&[], |v| v.as_slice())
    }

    /// The clone flags `pid` is created with by its parent: CLONE_FILES when it shares its
    /// parent's fd table, CLONE_FS when it shares its cwd, root and umask.
    pub fn clone_flags(&self, pid: i32) -> u64 {
        let Some(e) = self.entries.get(&pid) else {
            return 0;
        };
        let mut flags = 0;
        if e.files_shared {
            flags |= libc::CLONE_FILES as u64;
        }
        if e.fs_shared {
            flags |= libc::CLONE_FS as u64;
        }
        flags
    }

    /// The process that owns the fd table (`files`) or the cwd/root/umask (otherwise) of
    /// `pid`: the nearest ancestor-or-self that does not share its parent's. It restores the
    /// shared thing once, for every process sharing it.
    pub fn owner(&self, pid: i32, files: bool) -> i32 {
        let mut p = pid;
        // Parent links are acyclic (checked in new), so this ends.
        while let Some(e) = self.entries.get(&p) {
            let shares = if files { e.files_shared } else { e.fs_shared };
            if !shares || p == self.root {
                break;
            }
            p = e.ppid;
        }
        p
    }

    /// How many (process, kind) pairs share an fd table or fs info owned by `pid`: the
    /// reports it waits for before it restores them.
    pub fn sharers(&self, pid: i32) -> usize {
        self.entries
            .values()
            .filter(|e| e.pid != pid)
            .map(|e| {
                usize::from(e.files_shared && self.owner(e.pid, true) == pid)
                    + usize::from(e.fs_shared && self.owner(e.pid, false) == pid)
            })
            .sum()
    }

    /// What `pid` must do about its session and group, given what it inherits from its parent.
    pub fn join(&self, pid: i32) -> Join {
        let Some(e) = self.entries.get(&pid) else {
            return Join::Inherit;
        };
        if pid == self.root {
            // The root starts in cryo's session and group: it only has to create its own
            // if it led one; otherwise it stays in cryo's (as a shell job would).
            return if e.sid == pid {
                Join::NewSession
            } else if e.pgid == pid {
                Join::NewGroup
            } else {
                Join::Inherit
            };
        }
        let (inh_pgid, inh_sid) = match self.entries.get(&e.ppid) {
            Some(p) => (p.pgid, p.sid),
            None => (e.pgid, e.sid),
        };
        if e.sid == pid && inh_sid != pid {
            Join::NewSession
        } else if e.pgid == pid && inh_pgid != pid {
            Join::NewGroup
        } else if e.pgid != inh_pgid {
            Join::Group(e.pgid)
        } else {
            Join::Inherit
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(pid: i32, ppid: i32, pgid: i32, sid: i32) -> PstreeEntry {
        PstreeEntry {
            pid,
            ppid,
            pgid,
            sid,
            threads: vec![pid],
            ..Default::default()
        }
    }

    #[test]
    fn sessions_and_groups() {
        let plan = Plan::new(
            vec![
                e(10, 0, 10, 10),
                e(11, 10, 10, 10),
                e(12, 10, 12, 10),
                e(13, 12, 12, 10),
                e(14, 10, 12, 10),
            ],
            10,
        )
        .unwrap();
        assert_eq!(plan.join(10), Join::NewSession);
        assert_eq!(plan.join(11), Join::Inherit);
        assert_eq!(plan.join(12), Join::NewGroup);
        assert_eq!(plan.join(13), Join::Inherit);
        assert_eq!(plan.join(14), Join::Group(12));
        assert_eq!(plan.children(10), &[12, 11, 14]);
    }

    #[test]
    fn root_inherits_outside_session_and_group() {
        let plan = Plan::new(vec![e(20, 0, 5, 1), e(21, 20, 5, 1)], 20).unwrap();
        assert_eq!(plan.join(20), Join::Inherit);
        assert_eq!(plan.join(21), Join::Inherit);
        let plan = Plan::new(vec![e(20, 0, 20, 20), e(21, 20, 20, 20)], 20).unwrap();
        assert_eq!(plan.join(20), Join::NewSession);
    }

    #[test]
    fn shared_tables_go_from_parent_to_child() {
        let share = |mut x: PstreeEntry, files: bool, fs: bool| {
            x.files_shared = files;
            x.fs_shared = fs;
            x
        };
        // 21 and its child 22 share 20's fd table; 23 shares 20's fs info; 24, a child of
        // 21, has its own of both.
        let plan = Plan::new(
            vec![
                e(20, 0, 20, 20),
                share(e(21, 20, 20, 20), true, false),
                share(e(22, 21, 20, 20), true, false),
                share(e(23, 20, 20, 20), false, true),
                e(24, 21, 20, 20),
            ],
            20,
        )
        .unwrap();
        assert_eq!(plan.clone_flags(21), libc::CLONE_FILES as u64);
        assert_eq!(plan.clone_flags(23), libc::CLONE_FS as u64);
        assert_eq!(plan.clone_flags(20), 0);
        assert_eq!(plan.owner(22, true), 20);
        assert_eq!(plan.owner(22, false), 22);
        assert_eq!(plan.owner(24, true), 24);
        assert_eq!(plan.sharers(20), 3);
        assert_eq!(plan.sharers(21), 0);
        // The root, or a process whose parent is a zombie, cannot share its parent's.
        assert!(Plan::new(vec![share(e(20, 0, 20, 20), true, false)], 20).is_err());
        let mut z = e(21, 20, 20, 20);
        z.zombie = true;
        z.threads.clear();
        let bad = vec![
            e(20, 0, 20, 20),
            z.clone(),
            share(e(22, 21, 20, 20), false, true),
        ];
        assert!(Plan::new(bad, 20).is_err());
        assert!(Plan::new(vec![e(20, 0, 20, 20), share(z, true, false)], 20).is_err());
    }

    #[test]
    fn refuses_broken_trees() {
        assert!(Plan::new(vec![e(20, 0, 20, 20), e(21, 99, 20, 20)], 20).is_err());
        assert!(Plan::new(vec![e(20, 0, 20, 20), e(21, 20, 77, 20)], 20).is_err());
        assert!(Plan::new(vec![e(21, 20, 20, 20)], 20).is_err());
        let mut z = e(21, 20, 20, 20);
        z.zombie = true;
        z.threads.clear();
        let mut kid = e(22, 21, 20, 20);
        kid.threads = vec![22];
        assert!(Plan::new(vec![e(20, 0, 20, 20), z, kid], 20).is_err());
    }
}
