//! restore (in progress).
