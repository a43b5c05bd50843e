//! Any bytes as a size or a duration: no panic, and an error quotes the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = vsplice::addr::parse_size(text) {
            assert!(e.contains(text));
        }
        match vsplice::addr::parse_duration(text) {
            Ok(d) => assert!(d.as_secs() <= 1_000_000_000),
            Err(e) => assert!(e.contains(text)),
        }
    }
});
