//! dump (in progress).
