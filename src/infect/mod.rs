//! Parasite injection and remote execution. `remote` makes a stopped task run single
//! syscalls; the parasite blob (built from `parasite/`) runs larger jobs inside the task.
//! Everything done to a task here is undone by a guard's `Drop` (cure) on every path.

pub mod remote;
