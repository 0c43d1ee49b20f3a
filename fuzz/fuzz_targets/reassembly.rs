#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| helo_filter::fuzzing::reassembly(data));
