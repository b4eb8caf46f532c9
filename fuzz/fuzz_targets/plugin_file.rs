//! The checks made on a plugin file before it is opened never panic; a refusal names the
//! file, and an accepted file has a well-formed declaration.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| balut::fuzzing::plugin_file(data));
