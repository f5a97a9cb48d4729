//! The fleet as the gateway sees it: one entry per configured node, its opaque handle, and its
//! last health-check result.
//!
//! A health check calls the node's `GetAttestation` and parses the bundle (parsing only: the
//! gateway is not trusted by anyone, so it does not verify; devices do). A node is healthy when
//! the call succeeded within the timeout, the bundle parsed, and its key has not expired. The
//! node lists beside the bundle the model and adapter directory digests it serves (a routing
//! hint, see [`Fleet::choose`]); Discover offers only nodes listing the requested ones.

use std::collections::HashMap;
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
use crate::config::GatewayConfig;
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

/// One node of the fleet.
#[derive(Debug)]
pub struct FleetNode {
    /// Position in the config's `nodes` list (what logs name).
    pub index: usize,
    /// The opaque handle devices see.
    pub handle: String,
    /// Client for the node (the channel reconnects on its own).
    pub client: NodeClient<Channel>,
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

/// The fleet.
#[derive(Debug)]
pub struct Fleet {
    nodes: Vec<FleetNode>,
    by_handle: HashMap<String, usize>,
    health_timeout: Duration,
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
    /// start is simply unhealthy until it answers).
    pub fn new(config: &GatewayConfig) -> Result<Self, ConfigError> {
        let mut nodes = Vec::with_capacity(config.nodes.len());
        let mut by_handle = HashMap::new();
        for (index, n) in config.nodes.iter().enumerate() {
            let mut ep = Endpoint::from_shared(n.url.clone())
                .map_err(|e| ConfigError::Invalid {
                    field: "nodes",
                    reason: format!("{:?}: {e}", n.url),
                })?
                .connect_timeout(config.connect_timeout)
                .tcp_nodelay(true);
            if n.tls {
                let mut tls = ClientTlsConfig::new();
                if let Some(ca) = &config.node_ca_pem {
                    tls = tls.ca_certificate(Certificate::from_pem(ca));
                }
                ep = ep.tls_config(tls).map_err(|e| ConfigError::Invalid {
                    field: "node_ca",
                    reason: format!("TLS setup for {:?}: {e}", n.url),
                })?;
            }
            let client = NodeClient::new(ep.connect_lazy());
            let handle = new_handle();
            by_handle.insert(handle.clone(), index);
            nodes.push(FleetNode {
                index,
                handle,
                client,
                state: RwLock::new(State::Unknown),
            });
        }
        Ok(Self {
            nodes,
            by_handle,
            health_timeout: config.health_timeout,
        })
    }

    /// Every node.
    pub fn nodes(&self) -> &[FleetNode] {
        &self.nodes
    }

    /// The node behind a handle.
    pub fn by_handle(&self, handle: &str) -> Option<&FleetNode> {
        self.by_handle.get(handle).map(|&i| &self.nodes[i])
    }

    /// Healthy nodes right now.
    pub fn healthy_count(&self) -> usize {
        let now = unix_now();
        self.nodes
            .iter()
            .filter(|n| matches!(&*n.read_state(), State::Healthy(h) if h.key_expiry > now))
            .count()
    }

    /// Checks every node once, concurrently; logs transitions.
    pub async fn check_all(self: &Arc<Self>, metrics: &Arc<Metrics>, events: &EventSink) {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..self.nodes.len() {
            let (fleet, metrics, events) = (self.clone(), metrics.clone(), events.clone());
            set.spawn(async move { fleet.check(&fleet.nodes[i], &metrics, &events).await });
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
        for n in &self.nodes {
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
