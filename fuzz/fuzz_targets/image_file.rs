//! Fuzz target `image_file`: see `cryo_fuzz::image_file` for what it feeds cryo's image readers.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cryo_fuzz::image_file(data));
