//! Name resolution for the registry's URL, with answers kept for at most a second.
//!
//! reqwest's own hickory resolver keeps an answer for its TTL, and Docker's embedded DNS
//! answers with a TTL of 600 s. A registry that comes back at a new address (a Swarm task
//! rescheduled, a container recreated) would then stay unreachable to every sidecar for up
//! to ten minutes, and the raft's members would expire. The sidecar asks again instead:
//! a lookup a second at most, against a resolver on the same host.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// How long an answer is kept, whatever its TTL.
pub const MAX_ANSWER_AGE: Duration = Duration::from_secs(1);

/// A resolver for reqwest that never keeps an answer longer than [`MAX_ANSWER_AGE`].
#[derive(Debug, Clone)]
pub struct FreshResolver {
    resolver: Arc<TokioResolver>,
}

impl FreshResolver {
    /// From /etc/resolv.conf and /etc/hosts, as reqwest's own.
    pub fn from_system() -> Result<FreshResolver, String> {
        let mut builder = TokioResolver::builder_tokio()
            .map_err(|e| format!("cannot read the resolver configuration: {e}"))?;
        let options = builder.options_mut();
        options.positive_max_ttl = Some(MAX_ANSWER_AGE);
        options.negative_max_ttl = Some(MAX_ANSWER_AGE);
        Ok(FreshResolver {
            resolver: Arc::new(builder.build()),
        })
    }
}

impl Resolve for FreshResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let resolver = self.resolver.clone();
        Box::pin(async move {
            let lookup = resolver.lookup_ip(name.as_str()).await?;
            let addrs: Addrs = Box::new(
                lookup
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, 0))
                    .collect::<Vec<_>>()
                    .into_iter(),
            );
            Ok(addrs)
        })
    }
}
