//! dump (in progress).

pub mod proc;
