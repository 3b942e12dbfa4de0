//! image (in progress).
