#![no_main]
//! `s3drop::fuzz::templates` on the fuzzer's bytes.
libfuzzer_sys::fuzz_target!(|data: &[u8]| s3drop::fuzz::templates(data));
