//! Nodes found through DNS: the A records of a name (or its AAAA records when it has no A
//! records), every address a node at the configured port; and the records of an SRV name
//! (RFC 2782), every target (its addresses resolved in turn) a node at the record's port. A
//! Kubernetes headless Service publishes both for its ready pods. The gateway re-resolves every
//! `dns.interval_secs` and hands the set to [`crate::fleet::Fleet::sync_dns`], which adds and
//! drops nodes; a node that appears is offered only after it passed a health check like any
//! other.
//!
//! The resolver is hickory's, with no cache (the gateway's own interval is the only reuse), so a
//! record that changed is seen at the next resolution whatever its TTL says.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::rr::RData;

use crate::ConfigError;
use crate::config::DnsConfig;

/// One node the DNS names: where to connect and the name its TLS certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    /// Address and port.
    pub addr: SocketAddr,
    /// The DNS name the address came from (`dns.name`, or the SRV target), without the final
    /// dot: what an `https` node's certificate is checked against.
    pub tls_name: String,
}

/// What one resolution found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// The nodes, sorted, one per address, at most `dns.max_nodes`.
    pub found: Vec<Found>,
    /// Records past `dns.max_nodes`, ignored.
    pub ignored: usize,
    /// The names that had no records, and the answer's code (`NXDomain`: no such name;
    /// `NoError`: the name exists without records of that type), e.g.
    /// `"nodes.example: no A/AAAA records (NXDomain)"`.
    pub empty: Vec<String>,
}

/// Why a resolution failed (the last set is kept).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("resolving {name}: {reason}")]
pub struct ResolveError {
    /// The name asked for.
    pub name: String,
    /// The resolver's reason (timeout, server failure, connection refused, …).
    pub reason: String,
}

/// The DNS source of nodes.
#[derive(Debug)]
pub struct DnsSource {
    config: DnsConfig,
    resolver: TokioResolver,
}

/// Without a final dot: the form certificates and URLs use.
fn relative(name: &str) -> String {
    name.trim_end_matches('.').to_owned()
}

impl DnsSource {
    /// A resolver for `config`: its `nameserver` (UDP, then TCP) or the system's resolver
    /// config (`/etc/resolv.conf`: name servers, search domains, `ndots`).
    pub fn new(config: &DnsConfig) -> Result<Self, ConfigError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match config.nameserver {
            Some(ns) => {
                let mut server = NameServerConfig::udp_and_tcp(ns.ip());
                for c in &mut server.connections {
                    c.port = ns.port();
                }
                let mut b = TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![server]),
                    provider,
                );
                // Only the given server answers: not /etc/hosts either.
                *b.options_mut() = ResolverOpts::default();
                b.options_mut().use_hosts_file = ResolveHosts::Never;
                b
            }
            None => TokioResolver::builder(provider).map_err(|e| ConfigError::Invalid {
                field: "dns.nameserver",
                reason: format!(
                    "no name server given and the system's resolver config is unusable ({e}); \
                     set dns.nameserver"
                ),
            })?,
        };
        let opts = builder.options_mut();
        opts.timeout = config.timeout;
        opts.attempts = 1;
        // One family: A records, or AAAA when the name has none. A dual-stack Service lists
        // each pod under both, and one pod must be one node (not two chances to be chosen).
        opts.ip_strategy = LookupIpStrategy::Ipv4thenIpv6;
        // No cache: each resolution asks the server, so the interval alone decides how fast a
        // change is seen.
        opts.cache_size = 0;
        let resolver = builder.build().map_err(|e| ConfigError::Invalid {
            field: "dns",
            reason: format!("cannot build the DNS resolver: {e}"),
        })?;
        Ok(Self {
            config: config.clone(),
            resolver,
        })
    }

    /// The most one resolution may take: four query timeouts or one interval, whichever is
    /// longer.
    pub fn round_bound(&self) -> std::time::Duration {
        (self.config.timeout * 4).max(self.config.interval)
    }

    /// The names this source asks for (for log lines and errors).
    pub fn describe(&self) -> String {
        let mut v = Vec::new();
        if let Some((n, p)) = &self.config.name {
            v.push(format!("{n} (A/AAAA, port {p})"));
        }
        if let Some(s) = &self.config.srv {
            v.push(format!("{s} (SRV)"));
        }
        v.join(" and ")
    }

    /// Resolves every configured name once: the nodes, sorted, without duplicates (the first
    /// name giving an address wins its TLS name), at most `max_nodes` of them. An answer without
    /// records is an empty set (noted in [`Resolved::empty`]), not an error.
    pub async fn resolve(&self) -> Result<Resolved, ResolveError> {
        let mut found: BTreeSet<Found> = BTreeSet::new();
        let mut empty = Vec::new();
        if let Some((name, port)) = &self.config.name {
            for ip in self.addresses(name, &mut empty).await? {
                found.insert(Found {
                    addr: SocketAddr::new(ip, *port),
                    tls_name: relative(name),
                });
            }
        }
        if let Some(srv) = &self.config.srv {
            let records = match self.resolver.srv_lookup(srv.as_str()).await {
                Ok(l) => l
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::SRV(s) => Some((s.target.to_utf8(), s.port)),
                        _ => None,
                    })
                    .collect::<BTreeSet<_>>(),
                Err(e) => match no_records(&e) {
                    Some(code) => {
                        empty.push(format!("{srv}: no SRV records ({code})"));
                        BTreeSet::new()
                    }
                    None => return Err(failure(srv, &e)),
                },
            };
            // RFC 2782: a target of "." means the service is decidedly not available here.
            // Targets are bounded so one answer cannot make the gateway send unbounded queries.
            for (target, port) in records
                .into_iter()
                .filter(|(t, p)| *p != 0 && t != ".")
                .take(self.config.max_nodes)
            {
                for ip in self.addresses(&target, &mut empty).await? {
                    found.insert(Found {
                        addr: SocketAddr::new(ip, port),
                        tls_name: relative(&target),
                    });
                }
            }
        }
        // One address, one node: keep the first TLS name an address came with.
        let mut seen = BTreeSet::new();
        let unique: Vec<Found> = found.into_iter().filter(|f| seen.insert(f.addr)).collect();
        let ignored = unique.len().saturating_sub(self.config.max_nodes);
        Ok(Resolved {
            found: unique.into_iter().take(self.config.max_nodes).collect(),
            ignored,
            empty,
        })
    }

    async fn addresses(
        &self,
        name: &str,
        empty: &mut Vec<String>,
    ) -> Result<Vec<std::net::IpAddr>, ResolveError> {
        match self.resolver.lookup_ip(name).await {
            Ok(l) => Ok(l.iter().collect()),
            Err(e) => match no_records(&e) {
                Some(code) => {
                    empty.push(format!("{name}: no A/AAAA records ({code})"));
                    Ok(Vec::new())
                }
                None => Err(failure(name, &e)),
            },
        }
    }
}

/// The response code of an answer without records (NXDOMAIN, or NOERROR without data).
fn no_records(e: &NetError) -> Option<String> {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(NoRecords { response_code, .. })) => {
            Some(format!("{response_code:?}"))
        }
        _ => None,
    }
}

fn failure(name: &str, e: &NetError) -> ResolveError {
    ResolveError {
        name: name.to_owned(),
        reason: e.to_string(),
    }
}
