//! Arbitrary bytes as a stored sled value: `store::decode` never panics for any record type,
//! refuses other versions, and a record it accepts encodes and decodes back to itself (the
//! registry rewrites records it loaded, so a lossy round trip would change stored state).

#![no_main]

use libfuzzer_sys::fuzz_target;
use rollcall_registry::store::{decode, ClaimRecord, GrantRecord, MemberRecord, Versioned};
use serde::{de::DeserializeOwned, Serialize};

fn round_trip<T>(data: &[u8])
where
    T: DeserializeOwned + Serialize + Versioned + PartialEq + std::fmt::Debug,
{
    let Ok(record) = decode::<T>(data) else {
        return;
    };
    assert_eq!(record.version(), 1, "{record:?}");
    let encoded = serde_json::to_vec(&record).expect("a decoded record encodes");
    let again = decode::<T>(&encoded).expect("an encoded record decodes");
    assert_eq!(again, record);
}

fuzz_target!(|data: &[u8]| {
    round_trip::<MemberRecord>(data);
    round_trip::<ClaimRecord>(data);
    round_trip::<GrantRecord>(data);
});
