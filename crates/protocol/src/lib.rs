//! The wire format of rollcall: the one crate that knows what crosses the network.
//!
//! The registry and the sidecar both depend on this crate and on nothing of each other.
//! It holds the JSON request and response types ([`types`]), the validation of names and
//! addresses ([`validate`]), the stable error codes ([`error`]) and a typed async client
//! ([`client`]) that fails over between a registry's replicas ([`base_urls`]). Every value that enters the registry from the network passes through a
//! validating constructor here, so the registry never sees an unchecked name.

pub mod base_urls;
pub mod client;
pub mod error;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod secret_file;
pub mod types;
pub mod validate;

pub use base_urls::parse_base_urls;
pub use client::{ClientError, RegistryClient};
pub use error::{ErrorBody, ErrorCode};
pub use secret_file::read_secret_file;
pub use types::*;
pub use validate::{
    validate_address, validate_expect, validate_metadata, validate_name, NameKind, ValidationError,
};

/// The cluster used when a request names none (`GET /members` without `?cluster=`).
pub const DEFAULT_CLUSTER: &str = "default";

/// Header carrying the members list's change index (a Consul-style `X-Consul-Index`).
pub const INDEX_HEADER: &str = "x-rollcall-index";
