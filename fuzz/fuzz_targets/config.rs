//! The config parser never panics, and every refusal says why.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| balut::fuzzing::config_text(data));
