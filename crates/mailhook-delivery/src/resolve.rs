//! Name resolution with the SSRF guard: every IP an address's host resolves to is checked
//! against the policy at connect time, and only allowed IPs are handed to the connector, so
//! a DNS answer that changes between save and push (rebinding) cannot slip through.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;
use mailhook_core::net::AddressPolicy;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Looks a host name up. The system resolver in production; tests inject their own map.
pub trait Resolve: Send + Sync + 'static {
    fn lookup(&self, host: &str) -> BoxFuture<io::Result<Vec<IpAddr>>>;
}

/// The operating system's resolver (getaddrinfo on a blocking thread, via tokio).
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn lookup(&self, host: &str) -> BoxFuture<io::Result<Vec<IpAddr>>> {
        let host = host.to_owned();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    }
}

/// Why a connection was not made.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(
        "blocked by the SSRF guard: `{host}` is {ip}, {reason} \
         (allow with security.allow_private_addresses or security.allowed_cidrs)"
    )]
    Blocked {
        host: String,
        ip: IpAddr,
        reason: &'static str,
    },
    #[error("cannot resolve `{host}`: {source}")]
    Lookup { host: String, source: io::Error },
    #[error("`{host}` resolves to no address")]
    NoAddress { host: String },
}

/// The resolver the HTTP connector uses: looks up, then keeps only allowed IPs.
#[derive(Clone)]
pub struct GuardedResolver {
    pub inner: Arc<dyn Resolve>,
    pub policy: Arc<AddressPolicy>,
}

impl GuardedResolver {
    /// Checks an IP literal the connector will not resolve.
    pub fn check_literal(&self, host: &str, ip: IpAddr) -> Result<(), GuardError> {
        self.policy.check(ip).map_err(|reason| GuardError::Blocked {
            host: host.to_owned(),
            ip,
            reason,
        })
    }

    pub async fn resolve_allowed(&self, host: &str) -> Result<Vec<IpAddr>, GuardError> {
        let ips = self
            .inner
            .lookup(host)
            .await
            .map_err(|source| GuardError::Lookup {
                host: host.to_owned(),
                source,
            })?;
        let mut first_blocked = None;
        let allowed: Vec<IpAddr> = ips
            .into_iter()
            .filter(|&ip| match self.policy.check(ip) {
                Ok(()) => true,
                Err(reason) => {
                    first_blocked.get_or_insert((ip, reason));
                    false
                }
            })
            .collect();
        match (allowed.is_empty(), first_blocked) {
            (false, _) => Ok(allowed),
            (true, Some((ip, reason))) => Err(GuardError::Blocked {
                host: host.to_owned(),
                ip,
                reason,
            }),
            (true, None) => Err(GuardError::NoAddress {
                host: host.to_owned(),
            }),
        }
    }
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = GuardError;
    type Future = BoxFuture<Result<Self::Response, GuardError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), GuardError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let ips = this.resolve_allowed(name.as_str()).await?;
            // Port 0: the connector sets the URL's port.
            Ok(ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 0))
                .collect::<Vec<_>>()
                .into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Map(HashMap<&'static str, Vec<IpAddr>>);

    impl Resolve for Map {
        fn lookup(&self, host: &str) -> BoxFuture<io::Result<Vec<IpAddr>>> {
            let found = self
                .0
                .get(host)
                .cloned()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such host"));
            Box::pin(async move { found })
        }
    }

    fn resolver(policy: AddressPolicy) -> GuardedResolver {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let map = HashMap::from([
            ("metadata.test", vec![ip("169.254.169.254")]),
            ("intranet.test", vec![ip("10.0.0.7")]),
            ("mixed.test", vec![ip("10.0.0.7"), ip("93.184.216.34")]),
            ("public.test", vec![ip("93.184.216.34")]),
            ("mapped.test", vec![ip("::ffff:127.0.0.1")]),
        ]);
        GuardedResolver {
            inner: Arc::new(Map(map)),
            policy: Arc::new(policy),
        }
    }

    #[tokio::test]
    async fn names_that_resolve_to_internal_ips_are_refused_before_any_connection() {
        let guarded = resolver(AddressPolicy::default());
        for host in ["metadata.test", "intranet.test", "mapped.test"] {
            let err = guarded.resolve_allowed(host).await.unwrap_err();
            assert!(matches!(err, GuardError::Blocked { .. }), "{host}: {err}");
            assert!(err.to_string().contains("SSRF guard"), "{err}");
        }
        // A rebinding answer with one public and one private IP: only the public one is used.
        let ips = guarded.resolve_allowed("mixed.test").await.unwrap();
        assert_eq!(ips, vec!["93.184.216.34".parse::<IpAddr>().unwrap()]);
        assert!(guarded.resolve_allowed("public.test").await.is_ok());
        assert!(matches!(
            guarded.resolve_allowed("nowhere.test").await,
            Err(GuardError::Lookup { .. })
        ));
    }

    #[tokio::test]
    async fn the_allow_list_opens_only_its_ranges() {
        let guarded = resolver(AddressPolicy {
            allow_private: false,
            allowed: vec!["10.0.0.0/24".parse().unwrap()],
        });
        assert!(guarded.resolve_allowed("intranet.test").await.is_ok());
        assert!(guarded.resolve_allowed("metadata.test").await.is_err());
    }
}
