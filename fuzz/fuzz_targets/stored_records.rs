//! Arbitrary bytes as a stored sled value: `store::decode` never panics for any record type,
//! refuses other versions, and a record it accepts encodes and decodes back to itself (the
//! registry rewrites records it loaded, so a lossy round trip would change stored state).

#![no_main]

use libfuzzer_sys::fuzz_target;
use rollcall_registry::store::{decode, encode, ClaimRecord, GrantRecord, MemberRecord, Record};

fn round_trip<T>(data: &[u8])
where
    T: Record + PartialEq + std::fmt::Debug,
{
    let Ok(record) = decode::<T>(data) else {
        return;
    };
    let again = decode::<T>(&encode(&record)).expect("an encoded record decodes");
    assert_eq!(again, record);
}

fuzz_target!(|data: &[u8]| {
    round_trip::<MemberRecord>(data);
    round_trip::<ClaimRecord>(data);
    round_trip::<GrantRecord>(data);
});
