//! Hand-built pieces of the OpenAPI schemas that derives cannot express.

use utoipa::openapi::schema::{AdditionalProperties, Object, ObjectBuilder, SchemaType, Type};
use utoipa::openapi::RefOr;

use crate::validate::{
    ADDRESS_PATTERN, MAX_ADDRESS_LEN, MAX_METADATA_ENTRIES, MAX_METADATA_KEY_LEN,
    MAX_METADATA_VALUE_LEN, MAX_NAME_LEN, MAX_STATUS_STRING_LEN, NAME_PATTERN, NO_CONTROL_PATTERN,
};

/// A member's metadata: at most 16 entries, keys of 1 to 63 characters without control
/// characters, values of at most 256 characters.
pub fn metadata_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .max_properties(Some(MAX_METADATA_ENTRIES))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(MAX_METADATA_KEY_LEN))
                .pattern(Some(NO_CONTROL_PATTERN)),
        ))
        .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(MAX_METADATA_VALUE_LEN))
                .pattern(Some(NO_CONTROL_PATTERN))
                .into(),
        ))))
        .description(Some("Free-form labels: at most 16 entries (each key once), keys of 1 to 63 characters and values of at most 256, neither with control characters."))
        .build()
}

fn string(pattern: &str, min: Option<usize>, max: usize, description: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .min_length(min)
        .max_length(Some(max))
        .description(Some(description))
        .build()
}

/// A cluster or node name.
pub fn name_schema() -> Object {
    string(NAME_PATTERN, Some(1), MAX_NAME_LEN, "1 to 63 ASCII letters, digits, '.', '_' or '-', starting and ending with a letter or a digit")
}

/// A `host:port` address.
pub fn address_schema() -> Object {
    string(
        ADDRESS_PATTERN,
        None,
        MAX_ADDRESS_LEN,
        "host:port, where host is an IPv4 address, a DNS name or a bracketed IPv6 address",
    )
}

/// The leader an agent reports; `null` is the same as leaving it out.
pub fn leader_schema() -> Object {
    let mut schema = string(
        NO_CONTROL_PATTERN,
        None,
        MAX_STATUS_STRING_LEN,
        "the leader the agent sees, as the agent names it",
    );
    schema.schema_type = SchemaType::from_iter([Type::String, Type::Null]);
    schema
}

/// A list of node names, at most `max` of them.
pub fn name_list_schema() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(name_schema())
        .max_items(Some(crate::validate::MAX_FORCED_NODES))
        .description(Some("node names"))
        .build()
}

/// `expect`: 1 to [`MAX_EXPECT`](crate::validate::MAX_EXPECT) servers, the validator's own bound.
pub fn expect_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(utoipa::openapi::schema::SchemaFormat::KnownFormat(
            utoipa::openapi::schema::KnownFormat::Int32,
        )))
        .minimum(Some(1))
        .maximum(Some(crate::validate::MAX_EXPECT))
        .description(Some(
            "How many servers the raft wants (Consul's `-bootstrap-expect`).",
        ))
        .build()
}

/// A reset's reason: text without control characters; `null` is the same as leaving it out.
pub fn reason_schema() -> Object {
    let mut schema = string(
        NO_CONTROL_PATTERN,
        None,
        MAX_STATUS_STRING_LEN,
        "why, for the log and the dashboard",
    );
    schema.schema_type = SchemaType::from_iter([Type::String, Type::Null]);
    schema
}
