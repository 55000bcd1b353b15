//! Any bytes into the frame decoder: it must return a frame or a typed error, never
//! panic, and stay within its limits; a decoded frame must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodecell_ipc::{Frame, Limits, Value};

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_frame: 1 << 20, max_depth: 32, max_items: 1 << 16 };
    if let Ok(d) = Frame::decode(data, &limits) {
        let mut out = Vec::new();
        d.frame.encode(&mut out, &limits).expect("a decoded frame re-encodes");
        assert_eq!(out, data, "decode/encode round trip");
    }
    // The same bytes as a bare value.
    if let Ok(v) = Value::decode(data, &limits) {
        let mut out = Vec::new();
        v.encode(&mut out, &limits).expect("a decoded value re-encodes");
        assert_eq!(out, data, "value round trip");
    }
});
