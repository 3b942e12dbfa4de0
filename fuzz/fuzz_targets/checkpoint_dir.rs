//! Fuzz target `checkpoint_dir`: see `cryo_fuzz::checkpoint_dir` for what it feeds cryo's image readers.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cryo_fuzz::checkpoint_dir(data));
