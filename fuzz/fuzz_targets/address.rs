//! Any bytes as an address string: parsing must not panic, and a rejection must say something.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = vsplice::addr::Address::parse(text) {
            assert!(!e.to_string().is_empty());
        }
    }
});
