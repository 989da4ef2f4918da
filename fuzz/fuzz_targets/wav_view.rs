#![no_main]
// Body lives in the library so `tests/fuzz_corpus.rs` replays this target's corpus on every test run.
libfuzzer_sys::fuzz_target!(|data: &[u8]| callvault::fuzz_targets::wav_view(data));
