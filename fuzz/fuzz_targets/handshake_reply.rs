//! Any bytes as a VMM's hybrid-vsock reply line: no panic; only `OK <port>` is accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if vsplice::dial::parse_handshake_reply(data).is_ok() {
        assert!(data.starts_with(b"OK "));
    }
});
