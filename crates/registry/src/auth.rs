//! Bearer tokens for writes: one registry-wide token and tokens scoped to one cluster.
//!
//! With no token configured, writes are open (a demo on a private Docker network). With any
//! token configured, every write (heartbeat, leave, claim) needs `Authorization: Bearer …`
//! with the registry-wide token or the token of the cluster it writes to. Reads stay open:
//! join addresses are not secret to anyone who can reach the registry. Tokens are compared in
//! constant time and never logged: [`Secret`] redacts itself in `Debug`.

use std::collections::HashMap;

use subtle::ConstantTimeEq;

/// A token that never prints itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Who may write where.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    pub registry: Option<Secret>,
    pub clusters: HashMap<String, Secret>,
}

/// Why a write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No token, or a token the registry does not know: 401.
    Unauthorized,
    /// A valid token of another cluster: 403.
    Forbidden,
}

impl Tokens {
    pub fn is_open(&self) -> bool {
        self.registry.is_none() && self.clusters.is_empty()
    }

    /// Checks the `Authorization` header value for an operator action: only the registry-wide
    /// token (a cluster's token answers `Forbidden`).
    pub fn authorize_registry(&self, header: Option<&[u8]>) -> Result<(), Denied> {
        if self.is_open() {
            return Ok(());
        }
        let presented = bearer(header).ok_or(Denied::Unauthorized)?;
        let registry_ok = self.registry.as_ref().is_some_and(|t| t.matches(presented));
        let cluster_ok = self
            .clusters
            .values()
            .fold(false, |ok, t| ok | t.matches(presented));
        if registry_ok {
            Ok(())
        } else if cluster_ok {
            Err(Denied::Forbidden)
        } else {
            Err(Denied::Unauthorized)
        }
    }

    /// Checks the `Authorization` header value for a write to `cluster`.
    pub fn authorize(&self, cluster: &str, header: Option<&[u8]>) -> Result<(), Denied> {
        if self.is_open() {
            return Ok(());
        }
        let presented = bearer(header).ok_or(Denied::Unauthorized)?;
        // Every configured token is compared, so that the time taken does not tell which one
        // (or whether any) matched.
        let mut registry_ok = false;
        if let Some(t) = &self.registry {
            registry_ok = t.matches(presented);
        }
        let mut own_ok = false;
        let mut other_ok = false;
        for (name, t) in &self.clusters {
            let m = t.matches(presented);
            if name == cluster {
                own_ok |= m;
            } else {
                other_ok |= m;
            }
        }
        if registry_ok || own_ok {
            Ok(())
        } else if other_ok {
            Err(Denied::Forbidden)
        } else {
            Err(Denied::Unauthorized)
        }
    }
}

/// The token of a `Bearer` authorization header. The scheme is case-insensitive
/// (RFC 9110 §11.1): `Bearer`, `bearer` and `BEARER` are one scheme.
fn bearer(header: Option<&[u8]>) -> Option<&[u8]> {
    let header = header?;
    let (scheme, token) = header.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for header in [&b"Bearer t"[..], b"bearer t", b"BEARER t", b"BeArEr  t"] {
            assert_eq!(bearer(Some(header)), Some(&b"t"[..]), "{header:?}");
        }
        for header in [&b"Basic t"[..], b"Bearer", b"", b"Bearert"] {
            assert_eq!(bearer(Some(header)), None, "{header:?}");
        }
    }

    fn tokens() -> Tokens {
        let mut clusters = HashMap::new();
        clusters.insert("a".to_string(), Secret::new("token-a".into()));
        clusters.insert("b".to_string(), Secret::new("token-b".into()));
        Tokens {
            registry: Some(Secret::new("root".into())),
            clusters,
        }
    }

    #[test]
    fn cluster_tokens_write_only_their_cluster() {
        let t = tokens();
        assert_eq!(t.authorize("a", Some(b"Bearer token-a")), Ok(()));
        assert_eq!(
            t.authorize("a", Some(b"Bearer token-b")),
            Err(Denied::Forbidden)
        );
        assert_eq!(t.authorize("a", Some(b"Bearer root")), Ok(()));
        assert_eq!(t.authorize("c", Some(b"Bearer root")), Ok(()));
        assert_eq!(
            t.authorize("a", Some(b"Bearer nope")),
            Err(Denied::Unauthorized)
        );
        assert_eq!(t.authorize("a", None), Err(Denied::Unauthorized));
        assert_eq!(
            t.authorize("a", Some(b"Basic token-a")),
            Err(Denied::Unauthorized)
        );
        assert_eq!(
            t.authorize("a", Some(b"Bearer token-a-longer")),
            Err(Denied::Unauthorized)
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let t = tokens();
        let printed = format!("{t:?}");
        assert!(
            !printed.contains("token-a") && !printed.contains("root"),
            "{printed}"
        );
    }

    #[test]
    fn open_when_no_token_is_configured() {
        assert_eq!(Tokens::default().authorize("a", None), Ok(()));
    }
}
