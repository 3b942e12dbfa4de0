//! Parasite injection and remote execution. `remote` makes a stopped task run single
//! syscalls; `blob` loads and relocates the parasite blob (built from `parasite/`);
//! `parasite` injects it, runs its commands inside the task and cures the task.
//! Everything done to a task here is undone by a guard's `Drop` (cure) on every path.

pub mod blob;
pub mod parasite;
pub mod remote;

pub use parasite::{InfectError, PageRunReq, Parasite};
