//! The OpenAPI document against its golden copy (`golden/openapi.json`), so that any change to
//! what a route documents (its statuses come from its handler's error type) shows up in review.
//! After a deliberate change: `ROLLCALL_BLESS=1 cargo test -p rollcall-registry --test openapi`.

use rollcall_registry::api::openapi_document;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/openapi.json");

#[test]
fn the_openapi_document_matches_its_golden_copy() {
    let document = openapi_document();
    if std::env::var_os("ROLLCALL_BLESS").is_some() {
        std::fs::write(GOLDEN, document).expect("write the golden copy");
    }
    let golden = std::fs::read_to_string(GOLDEN).expect("read the golden copy");
    if golden != document {
        let first_difference = golden
            .lines()
            .zip(document.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| golden.lines().count().min(document.lines().count()));
        panic!(
            "/openapi.json differs from {GOLDEN} from line {}:\n  golden: {:?}\n  now:    {:?}\n\
             bless a deliberate change with ROLLCALL_BLESS=1",
            first_difference + 1,
            golden.lines().nth(first_difference),
            document.lines().nth(first_difference),
        );
    }
}

/// Each route documents only what it can answer: no body, no 413 or 415; no storage, no 500.
#[test]
fn reads_document_no_body_or_storage_errors() {
    let doc: serde_json::Value = serde_json::from_str(openapi_document()).expect("JSON");
    let paths = doc["paths"].as_object().expect("paths");
    for (path, item) in paths {
        let Some(get) = item.get("get") else { continue };
        let statuses: Vec<&String> = get["responses"]
            .as_object()
            .expect("responses")
            .keys()
            .collect();
        for never in ["413", "415", "500", "507"] {
            assert!(
                !statuses.iter().any(|s| *s == never),
                "GET {path} documents {never}: {statuses:?}"
            );
        }
    }
}
