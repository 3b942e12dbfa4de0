//! Test-only fault injection. In debug builds (the ones `cargo test` runs), setting
//! `CRYO_FAULT=<point>` makes [`point`] fail at that step of dump or restore, so tests can
//! prove that every failure leaves the target running untouched (dump) or leaves no process
//! behind (restore). Release builds never read the variable.

/// The dump steps where a fault can be injected, in order.
pub const DUMP_POINTS: &[&str] = &[
    "dump:seized",
    "dump:collected",
    "dump:infected",
    "dump:pages",
    "dump:cured",
    "dump:images",
];

/// The restore steps where a fault can be injected, in order.
pub const RESTORE_POINTS: &[&str] = &[
    "restore:validated",
    "restore:child",
    "restore:seized",
    "restore:deferred",
    "restore:memory",
    "restore:threads",
    "restore:detach",
];

/// Reached only when a failed dump writes back the pages it freed (`dump::handback`): a
/// fault there makes that write-back fail (tests/faults.rs, with the dump failing otherwise).
pub const WRITE_BACK_POINT: &str = "dump:write-back";

/// The steps around the network lock and TCP repair where a fault can be injected; reached
/// only by a checkpoint with established TCP connections (tests/net.rs).
pub const NET_POINTS: &[&str] = &[
    "dump:net-lock",
    "dump:tcp-repaired",
    "restore:net-lock",
    "restore:tcp-created",
    "restore:net-unlock",
];

/// An injected failure.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("injected fault at {0} (CRYO_FAULT)")]
pub struct InjectedFault(pub &'static str);

/// Fails when `CRYO_FAULT` names this point (debug builds only). `CRYO_FAULT=point@N` fails
/// only the N-th time the point is reached (counting from 1), e.g. at the fifth process of a
/// tree.
pub fn point(name: &'static str) -> Result<(), InjectedFault> {
    #[cfg(debug_assertions)]
    if let Ok(v) = std::env::var("CRYO_FAULT") {
        let (point, nth) = match v.split_once('@') {
            Some((p, n)) => (p, n.parse::<u64>().ok()),
            None => (v.as_str(), None),
        };
        if point == name {
            static HITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let hit = HITS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if nth.is_none_or(|n| n == hit) {
                return Err(InjectedFault(name));
            }
        }
    }
    let _ = name;
    Ok(())
}
