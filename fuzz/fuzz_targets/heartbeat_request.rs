//! Arbitrary bytes as a heartbeat body: decoding and validation never panic, an accepted
//! request survives a JSON round trip, and the name and address validators keep their
//! invariants on the same bytes read as a string (see `rollcall_fuzz::check_*`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use rollcall_protocol::HeartbeatRequest;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<HeartbeatRequest>(data) {
        if request.validate().is_ok() {
            rollcall_fuzz::check_address(&request.address);
            let encoded = serde_json::to_vec(&request).expect("an accepted request encodes");
            let decoded: HeartbeatRequest =
                serde_json::from_slice(&encoded).expect("an encoded request decodes");
            assert_eq!(decoded, request);
            assert!(decoded.validate().is_ok());
        }
    }
    let text = String::from_utf8_lossy(data);
    rollcall_fuzz::check_name(&text);
    rollcall_fuzz::check_address(&text);
});
