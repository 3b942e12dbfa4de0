//! cryo: checkpoint/restore of Linux processes.
//!
//! Three layers joined by plain data: `dump` collects live state into `*State` types (the
//! prost messages generated from `images/*.proto`), `image` serializes them to a checkpoint
//! directory and validates it, `restore` rebuilds processes from them. All FFI lives in
//! `sys` and `infect`.

pub mod check;
pub mod dump;
pub mod fault;
pub mod image;
pub mod infect;
pub mod restore;
pub mod stats;
pub mod sys;

/// The prost messages generated from `images/*.proto`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/cryo.rs"));
}
