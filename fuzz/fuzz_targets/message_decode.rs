//! libFuzzer entry point; the property lives in `tandem_fuzz::message_decode` so that stable
//! `cargo test` can replay a corpus through the same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tandem_fuzz::message_decode(data);
});
