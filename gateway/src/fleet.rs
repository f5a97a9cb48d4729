//! The fleet as the gateway sees it: one entry per node (the config's static list, and the
//! nodes its DNS source currently names), its opaque handle, and its last health-check result.
//!
//! A health check calls the node's `GetAttestation` and parses the bundle (parsing only: the
//! gateway is not trusted by anyone, so it does not verify; devices do). A node is healthy when
//! the call succeeded within the timeout, the bundle parsed, and its key has not expired. The
//! node lists beside the bundle the model and adapter directory digests it serves (a routing
//! hint, see [`Fleet::choose`]); Discover offers only nodes listing the requested ones.
//!
//! Nodes found through DNS ([`Fleet::sync_dns`]) join in the unknown state, so they are offered
//! only once a health check passed; nodes DNS no longer names leave at once (a stream already
//! relayed from one runs to its end, it holds its own reference).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tandem_service::unix_now;

use rand::RngCore as _;
use rand::seq::SliceRandom as _;
use tandem_attest::attestation::AttestationBundle;
use tandem_attest::digest::Sha256Digest;
use tandem_proto::v1;
use tandem_proto::v1::node_client::NodeClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::ConfigError;
use crate::config::{GatewayConfig, Keepalive};
use crate::dns::Found;
use crate::events::{Event, EventSink, Unhealthy};
use crate::metrics::Metrics;

/// The last good health check of a node.
#[derive(Debug, Clone)]
struct Healthy {
    /// The exact bundle bytes the node returned (relayed to devices unchanged).
    document: Arc<[u8]>,
    key_expiry: u64,
    /// The model and adapter directory digests the node says it serves.
    digests: Vec<Sha256Digest>,
}

#[derive(Debug, Clone)]
enum State {
    /// Not checked yet.
    Unknown,
    Healthy(Healthy),
    Unhealthy(Unhealthy),
}

/// Where a node came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The config's `nodes` list.
    Static,
    /// The DNS source, at this address.
    Dns(SocketAddr),
}

/// One node of the fleet.
#[derive(Debug)]
pub struct FleetNode {
    /// What logs name: the position in the config's `nodes` list, or for a node found through
    /// DNS the next number after those (never reused while the gateway runs).
    pub index: usize,
    /// The opaque handle devices see.
    pub handle: String,
    /// Client for the node (the channel reconnects on its own).
    pub client: NodeClient<Channel>,
    /// The URL the gateway dials.
    pub url: String,
    /// Where it came from.
    pub origin: Origin,
    state: RwLock<State>,
}

/// A Discover candidate.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The node's opaque handle.
    pub handle: String,
    /// Its attestation bundle bytes.
    pub document: Arc<[u8]>,
}

/// How the gateway connects to nodes.
#[derive(Debug, Clone)]
struct Dialer {
    connect_timeout: Duration,
    keepalive: Keepalive,
    node_ca_pem: Option<Vec<u8>>,
}

impl Dialer {
    /// A lazily connected client (a node that is down is simply unhealthy until it answers).
    /// `tls_name` is the name its certificate must carry when that is not the URL's host.
    fn client(
        &self,
        url: &str,
        tls: bool,
        tls_name: Option<&str>,
    ) -> Result<NodeClient<Channel>, String> {
        let mut ep = Endpoint::from_shared(url.to_owned())
            .map_err(|e| format!("{url:?}: {e}"))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            // Pings only while a stream is open: a node host that vanished mid-stream fails
            // that stream within interval + timeout instead of leaving it waiting on TCP.
            .http2_keep_alive_interval(self.keepalive.interval)
            .keep_alive_timeout(self.keepalive.timeout)
            .keep_alive_while_idle(false);
        if tls {
            let mut cfg = ClientTlsConfig::new();
            if let Some(ca) = &self.node_ca_pem {
                cfg = cfg.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some(name) = tls_name {
                cfg = cfg.domain_name(name);
            }
            ep = ep
                .tls_config(cfg)
                .map_err(|e| format!("TLS setup for {url:?}: {e}"))?;
        }
        Ok(NodeClient::new(ep.connect_lazy()))
    }
}

/// The current members.
#[derive(Debug, Default)]
struct Members {
    nodes: Vec<Arc<FleetNode>>,
    by_handle: HashMap<String, Arc<FleetNode>>,
}

/// What one [`Fleet::sync_dns`] changed.
#[derive(Debug, Default)]
pub struct DnsChange {
    /// Nodes that joined (not checked yet).
    pub added: Vec<Arc<FleetNode>>,
    /// Nodes that left.
    pub removed: Vec<Arc<FleetNode>>,
}

/// The fleet.
#[derive(Debug)]
pub struct Fleet {
    members: RwLock<Members>,
    dialer: Dialer,
    dns_tls: bool,
    next_index: AtomicUsize,
    health_timeout: Duration,
    /// The DNS source's last failure or empty answer, while it lasts (said in Discover's
    /// refusal).
    dns_problem: RwLock<Option<String>>,
}

/// A fresh handle: 16 bytes from the operating system's RNG, hex. Handles are not addresses and
/// change with every gateway start, so a device cannot name a node it was not offered.
fn new_handle() -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("n-{}", hex::encode(b))
}

impl Fleet {
    /// Builds channels for every configured node (lazily connected: a node that is down at
    /// start is simply unhealthy until it answers). DNS nodes join later, through
    /// [`Fleet::sync_dns`].
    pub fn new(config: &GatewayConfig) -> Result<Self, ConfigError> {
        let dialer = Dialer {
            connect_timeout: config.connect_timeout,
            keepalive: config.node_keepalive,
            node_ca_pem: config.node_ca_pem.clone(),
        };
        let mut members = Members::default();
        for (index, n) in config.nodes.iter().enumerate() {
            let client =
                dialer
                    .client(&n.url, n.tls, None)
                    .map_err(|reason| ConfigError::Invalid {
                        field: if n.tls { "node_ca" } else { "nodes" },
                        reason,
                    })?;
            let node = Arc::new(FleetNode {
                index,
                handle: new_handle(),
                client,
                url: n.url.clone(),
                origin: Origin::Static,
                state: RwLock::new(State::Unknown),
            });
            members.by_handle.insert(node.handle.clone(), node.clone());
            members.nodes.push(node);
        }
        Ok(Self {
            members: RwLock::new(members),
            dialer,
            dns_tls: config.dns.as_ref().is_some_and(|d| d.tls),
            next_index: AtomicUsize::new(config.nodes.len()),
            health_timeout: config.health_timeout,
            dns_problem: RwLock::new(None),
        })
    }

    fn read_members(&self) -> std::sync::RwLockReadGuard<'_, Members> {
        // A poisoned lock only means a writer panicked between plain assignments; the lists are
        // still valid.
        self.members.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Every node right now.
    pub fn nodes(&self) -> Vec<Arc<FleetNode>> {
        self.read_members().nodes.clone()
    }

    /// How many nodes the fleet has right now.
    pub fn len(&self) -> usize {
        self.read_members().nodes.len()
    }

    /// Whether the fleet has no node right now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The node behind a handle.
    pub fn by_handle(&self, handle: &str) -> Option<Arc<FleetNode>> {
        self.read_members().by_handle.get(handle).cloned()
    }

    /// Makes the DNS nodes exactly `found`: nodes at new addresses join (unchecked), nodes at
    /// addresses no longer named leave. Static nodes are not touched.
    pub fn sync_dns(&self, found: &[Found]) -> DnsChange {
        let mut change = DnsChange::default();
        let mut guard = self.members.write().unwrap_or_else(|e| e.into_inner());
        let m = &mut *guard;
        m.nodes.retain(|n| match &n.origin {
            Origin::Dns(addr) if !found.iter().any(|f| f.addr == *addr) => {
                change.removed.push(n.clone());
                false
            }
            _ => true,
        });
        for n in &change.removed {
            m.by_handle.remove(&n.handle);
        }
        for f in found {
            let scheme = if self.dns_tls { "https" } else { "http" };
            let url = format!("{scheme}://{}", f.addr);
            // Already a member (from DNS, or listed in `nodes` as this very URL).
            if m.nodes
                .iter()
                .any(|n| n.origin == Origin::Dns(f.addr) || n.url == url)
            {
                continue;
            }
            // The URL's host is an address; the certificate names the DNS name.
            let Ok(client) = self.dialer.client(&url, self.dns_tls, Some(&f.tls_name)) else {
                continue;
            };
            let node = Arc::new(FleetNode {
                index: self.next_index.fetch_add(1, Ordering::Relaxed),
                handle: new_handle(),
                client,
                url,
                origin: Origin::Dns(f.addr),
                state: RwLock::new(State::Unknown),
            });
            m.by_handle.insert(node.handle.clone(), node.clone());
            m.nodes.push(node.clone());
            change.added.push(node);
        }
        change
    }

    /// Records (or, with `None`, clears) what is wrong with the DNS source (a failed
    /// resolution, or an answer naming no node); true when it changed.
    pub fn set_dns_problem(&self, reason: Option<String>) -> bool {
        let mut g = self.dns_problem.write().unwrap_or_else(|e| e.into_inner());
        let changed = *g != reason;
        *g = reason;
        changed
    }

    /// What is wrong with the DNS source, while it lasts.
    pub fn dns_problem(&self) -> Option<String> {
        self.dns_problem
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Healthy nodes right now.
    pub fn healthy_count(&self) -> usize {
        let now = unix_now();
        self.read_members()
            .nodes
            .iter()
            .filter(|n| matches!(&*n.read_state(), State::Healthy(h) if h.key_expiry > now))
            .count()
    }

    /// Checks every node once, concurrently; logs transitions.
    pub async fn check_all(self: &Arc<Self>, metrics: &Arc<Metrics>, events: &EventSink) {
        self.check_some(self.nodes(), metrics, events).await;
    }

    /// Checks `nodes` once, concurrently; logs transitions.
    pub async fn check_some(
        self: &Arc<Self>,
        nodes: Vec<Arc<FleetNode>>,
        metrics: &Arc<Metrics>,
        events: &EventSink,
    ) {
        let mut set = tokio::task::JoinSet::new();
        for node in nodes {
            let (fleet, metrics, events) = (self.clone(), metrics.clone(), events.clone());
            set.spawn(async move { fleet.check(&node, &metrics, &events).await });
        }
        while set.join_next().await.is_some() {}
    }

    async fn check(&self, node: &FleetNode, metrics: &Metrics, events: &EventSink) {
        let start = Instant::now();
        let result = tokio::time::timeout(
            self.health_timeout,
            node.client
                .clone()
                .get_attestation(v1::GetAttestationRequest {}),
        )
        .await;
        metrics.health_check_seconds.observe(start.elapsed());
        let next = match result {
            Err(_) => State::Unhealthy(Unhealthy::Unreachable(tonic::Code::DeadlineExceeded)),
            Ok(Err(status)) => State::Unhealthy(Unhealthy::Unreachable(status.code())),
            Ok(Ok(resp)) => {
                let v1::AttestationBundle {
                    document,
                    served_digests,
                } = resp.into_inner();
                match AttestationBundle::from_json(&document) {
                    Err(_) => State::Unhealthy(Unhealthy::BadBundle),
                    Ok(b) if b.key_expiry() <= unix_now() => State::Unhealthy(Unhealthy::Expired),
                    Ok(b) => State::Healthy(Healthy {
                        key_expiry: b.key_expiry(),
                        digests: served_digests
                            .iter()
                            .filter_map(|d| <[u8; 32]>::try_from(d.as_slice()).ok())
                            .map(Sha256Digest)
                            .collect(),
                        document: document.into(),
                    }),
                }
            }
        };
        match &next {
            State::Healthy(_) => metrics.health_ok.inc(),
            _ => metrics.health_failed.inc(),
        }
        let event = {
            let Ok(mut guard) = node.state.write() else {
                return;
            };
            let event = match (&*guard, &next) {
                (State::Healthy(old), State::Healthy(new)) if old.key_expiry == new.key_expiry => {
                    None
                }
                (_, State::Healthy(h)) => Some(Event::NodeHealthy {
                    node: node.index,
                    key_expiry: h.key_expiry,
                }),
                (State::Unhealthy(old), State::Unhealthy(new)) if old == new => None,
                (_, State::Unhealthy(r)) => Some(Event::NodeUnhealthy {
                    node: node.index,
                    reason: *r,
                }),
                (_, State::Unknown) => None,
            };
            *guard = next;
            event
        };
        if let Some(e) = event {
            events(&e);
        }
    }

    /// Up to `count` distinct healthy nodes for `model` (and `adapter`, if given), chosen
    /// uniformly at random with the operating system's RNG.
    ///
    /// Which nodes serve a model: a request names the model and adapter by their directory
    /// digests (`tandem_model::model_digest` / `adapter_digest`), which a release's per-file
    /// digests cannot give, so each node lists them beside its bundle (`served_digests` of its
    /// `GetAttestation` answer) and only nodes listing both are offered. The list is a routing
    /// hint: a node that lies gains nothing, since the device checks the verified release's
    /// file digests before sealing and the node's receipt after.
    pub fn choose(
        &self,
        model: &Sha256Digest,
        adapter: Option<&Sha256Digest>,
        count: usize,
    ) -> Vec<Candidate> {
        let now = unix_now();
        let mut listed = Vec::new();
        for n in &self.read_members().nodes {
            if let State::Healthy(h) = &*n.read_state()
                && h.key_expiry > now
                && h.digests.contains(model)
                && adapter.is_none_or(|a| h.digests.contains(a))
            {
                listed.push(Candidate {
                    handle: n.handle.clone(),
                    document: h.document.clone(),
                });
            }
        }
        listed
            .choose_multiple(&mut rand::rngs::OsRng, count)
            .cloned()
            .collect()
    }
}

impl FleetNode {
    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A poisoned lock only means a writer panicked mid-assignment of a plain value; the value
        // is still a valid `State`.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the node unhealthy now (a Submit found it unreachable); the next health check
    /// decides again.
    pub fn mark_unreachable(&self, code: tonic::Code) {
        if let Ok(mut g) = self.state.write() {
            *g = State::Unhealthy(Unhealthy::Unreachable(code));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(last: u8) -> Found {
        Found {
            addr: SocketAddr::from(([127, 0, 0, last], 7100)),
            tls_name: "nodes.test".into(),
        }
    }

    /// DNS nodes follow the answer; static nodes stay; numbers are never reused; a node listed
    /// statically is not added twice.
    #[tokio::test]
    async fn sync_dns_adds_drops_and_keeps_static_nodes() {
        let config = GatewayConfig::parse(
            "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
             nodes = [\"http://127.0.0.1:7100\"]\n[dns]\nname = \"nodes.test\"\nport = 7100\n\
             nameserver = \"127.0.0.1:53\"\n",
            std::path::Path::new("."),
        )
        .expect("valid");
        let fleet = Fleet::new(&config).expect("fleet");
        assert_eq!(fleet.len(), 1);

        let c = fleet.sync_dns(&[found(1), found(2)]);
        assert_eq!(
            c.added.len(),
            1,
            "127.0.0.1:7100 is already the static node"
        );
        assert!(c.removed.is_empty());
        let two = c.added[0].clone();
        assert_eq!(
            (two.index, two.origin.clone()),
            (1, Origin::Dns(found(2).addr))
        );
        assert!(fleet.by_handle(&two.handle).is_some());
        assert_eq!(fleet.len(), 2);

        let c = fleet.sync_dns(&[found(2), found(2), found(3)]);
        assert_eq!(c.added.len(), 1);
        assert_eq!(c.added[0].index, 2);
        assert!(c.removed.is_empty(), "node 2 is still named");

        let c = fleet.sync_dns(&[found(3)]);
        assert_eq!(c.removed.len(), 1);
        assert_eq!(c.removed[0].handle, two.handle);
        assert!(
            fleet.by_handle(&two.handle).is_none(),
            "a dropped node's handle is gone"
        );

        let c = fleet.sync_dns(&[]);
        assert_eq!(c.removed.len(), 1);
        let left = fleet.nodes();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].origin, Origin::Static);
        assert_eq!(
            fleet.healthy_count(),
            0,
            "nothing is healthy before a check"
        );

        let c = fleet.sync_dns(&[found(2)]);
        assert_eq!(c.added[0].index, 3, "numbers are never reused");
    }
}
