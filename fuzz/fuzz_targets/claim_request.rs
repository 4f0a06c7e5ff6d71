//! Arbitrary bytes as a claim body: decoding and validation never panic, an accepted claim
//! names a valid node, an address and an `expect` within bounds, and survives a JSON round
//! trip.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rollcall_protocol::validate::MAX_EXPECT;
use rollcall_protocol::ClaimRequest;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = serde_json::from_slice::<ClaimRequest>(data) else {
        return;
    };
    if request.validate().is_err() {
        return;
    }
    assert!((1..=MAX_EXPECT).contains(&request.expect), "{request:?}");
    rollcall_fuzz::check_name(&request.node);
    rollcall_fuzz::check_address(&request.address);
    let encoded = serde_json::to_vec(&request).expect("an accepted claim encodes");
    let decoded: ClaimRequest = serde_json::from_slice(&encoded).expect("an encoded claim decodes");
    assert_eq!(decoded, request);
});
