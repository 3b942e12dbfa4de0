//! Fuzz target `verify_pages`: see `cryo_fuzz::verify_pages` for what it feeds cryo's image readers.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cryo_fuzz::verify_pages(data));
