//! `tandem-gateway`: the fleet gateway, steps 1 and 4 of the request flow in
//! `../shared/DESIGN.md`. Run by the fleet operator; it links no model code.
//!
//! - [`config`]: the TOML config, checked before any port is bound.
//! - [`fleet`]: the node list, opaque handles, periodic health checks (`GetAttestation`, bundle
//!   parsed, key expiry), random choice of candidates with the operating system's RNG.
//! - [`dns`]: nodes found through DNS (A/AAAA or SRV records of a headless Service),
//!   re-resolved on an interval; the fleet adds the nodes that appear (offered once checked)
//!   and drops those that vanish.
//! - [`service`]: `Discover` (K healthy nodes serving the requested model and adapter) and
//!   `Submit` (header parsed, forwarded to the device's first known handle, the next one if a
//!   node fails before its first message, an error status if it fails after).
//! - [`metrics`]: counters and latency histograms, Prometheus text on a separate port.
//! - [`events`]: the log, an allow-list of structured events.
//!
//! The gateway holds no key: it cannot open a request or a response, and it never logs or
//! counts anything taken from one.

pub mod config;
pub mod dns;
pub mod events;
pub mod fleet;
pub mod metrics;
pub mod service;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tandem_proto::v1::gateway_server::GatewayServer;
use thiserror::Error;
use tonic::transport::{Identity, Server, ServerTlsConfig};

pub use config::GatewayConfig;
pub use events::{Event, EventSink};
pub use fleet::Fleet;
pub use metrics::Metrics;
pub use service::GatewayService;

/// A gateway config is wrong.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The TOML does not parse or has unknown fields.
    #[error("gateway config: {0}")]
    Syntax(String),
    /// A field has a bad value.
    #[error("gateway config: {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A file named by the config cannot be read.
    #[error("gateway config: {field}: cannot read {}: {reason}", path.display())]
    File {
        /// The field naming the file.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
}

/// The gateway failed to start or to serve.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The config is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}; is the port already in use?")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TLS identity is unusable.
    #[error("gateway TLS: {0}; check tls.cert and tls.key are a PEM chain and its key")]
    Tls(String),
    /// Serving failed.
    #[error("gateway stopped: {0}")]
    Serve(String),
}

/// A gateway with both listeners bound, not yet serving.
#[derive(Debug)]
pub struct BoundGateway {
    config: GatewayConfig,
    grpc: tokio::net::TcpListener,
    metrics_listener: tokio::net::TcpListener,
    fleet: Arc<Fleet>,
    dns: Option<Arc<dns::DnsSource>>,
    metrics: Arc<Metrics>,
    events: EventSinkHolder,
}

struct EventSinkHolder(EventSink);

impl std::fmt::Debug for EventSinkHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventSink")
    }
}

impl BoundGateway {
    /// Builds the fleet and binds both listeners (port 0 picks free ports; see
    /// [`Self::grpc_addr`]). Must run inside a Tokio runtime.
    pub async fn bind(config: GatewayConfig, events: EventSink) -> Result<Self, GatewayError> {
        if config.tls.is_some() || config.nodes.iter().any(|n| n.tls) {
            // rustls with an explicit crypto provider (ring, as tonic's `tls-ring`); an error
            // only means a provider is already installed for this process.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let fleet = Arc::new(Fleet::new(&config)?);
        let dns = match &config.dns {
            Some(d) => Some(Arc::new(dns::DnsSource::new(d)?)),
            None => None,
        };
        if let Some(t) = &config.tls {
            // Check the identity now, so a bad key fails before anything listens.
            Server::builder()
                .tls_config(
                    ServerTlsConfig::new().identity(Identity::from_pem(&t.cert_pem, &t.key_pem)),
                )
                .map_err(|e| GatewayError::Tls(e.to_string()))?;
        }
        let grpc = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| GatewayError::Bind {
                what: "gRPC",
                addr: config.listen,
                source,
            })?;
        let metrics_listener = tokio::net::TcpListener::bind(config.metrics_listen)
            .await
            .map_err(|source| GatewayError::Bind {
                what: "metrics",
                addr: config.metrics_listen,
                source,
            })?;
        Ok(Self {
            config,
            grpc,
            metrics_listener,
            fleet,
            dns,
            metrics: Arc::new(Metrics::default()),
            events: EventSinkHolder(events),
        })
    }

    /// The gRPC address devices connect to.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().unwrap_or(self.config.listen)
    }

    /// The metrics address.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_listener
            .local_addr()
            .unwrap_or(self.config.metrics_listen)
    }

    /// The shared metrics (for tests and in-process embedding).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Checks every node once, then serves until `shutdown` resolves, checking the fleet every
    /// `health_interval`.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), GatewayError> {
        let events = self.events.0;
        let (grpc_addr, metrics_addr) = (
            self.grpc.local_addr().unwrap_or(self.config.listen),
            self.metrics_listener
                .local_addr()
                .unwrap_or(self.config.metrics_listen),
        );
        // One resolution and one round of health checks first, so the first Discover already
        // has a fleet.
        if let Some(source) = &self.dns {
            dns_round(source, &self.fleet, &self.metrics, &events, true).await;
        }
        self.fleet.check_all(&self.metrics, &events).await;
        let resolver = self.dns.clone().map(|source| {
            let (fleet, metrics, events) =
                (self.fleet.clone(), self.metrics.clone(), events.clone());
            let interval = self
                .config
                .dns
                .as_ref()
                .map_or(std::time::Duration::from_secs(10), |d| d.interval);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    dns_round(&source, &fleet, &metrics, &events, false).await;
                }
            })
        });
        let checker = {
            let (fleet, metrics, events) =
                (self.fleet.clone(), self.metrics.clone(), events.clone());
            let interval = self.config.health_interval;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    fleet.check_all(&metrics, &events).await;
                }
            })
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let metrics_task = {
            let mut rx = stop_rx.clone();
            tokio::spawn(metrics::serve(
                self.metrics_listener,
                self.metrics.clone(),
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                },
            ))
        };
        let service = GatewayService::new(
            self.fleet.clone(),
            self.metrics.clone(),
            events.clone(),
            self.config.discover_count,
            self.config.first_message_timeout,
        );
        let mut builder = Server::builder();
        if let Some(t) = &self.config.tls {
            builder = builder
                .tls_config(
                    ServerTlsConfig::new().identity(Identity::from_pem(&t.cert_pem, &t.key_pem)),
                )
                .map_err(|e| GatewayError::Tls(e.to_string()))?;
        }
        events(&Event::Listening {
            grpc: grpc_addr,
            metrics: metrics_addr,
            tls: self.config.tls.is_some(),
        });
        let incoming =
            tonic::transport::server::TcpIncoming::from(self.grpc).with_nodelay(Some(true));
        let ev = events.clone();
        let result = builder
            .add_service(GatewayServer::new(service))
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.await;
                ev(&Event::ShuttingDown);
            })
            .await;
        let _ = stop_tx.send(true);
        checker.abort();
        if let Some(r) = resolver {
            r.abort();
        }
        let _ = metrics_task.await;
        result.map_err(|e| GatewayError::Serve(e.to_string()))
    }
}

/// One resolution of the DNS source: the fleet's DNS nodes become what it names (joining nodes
/// are health-checked at once, so they are offered without waiting for the next round), or, if
/// it failed, stay as they were. Events: a change, the first success and the first success
/// after a failure are logged; a failure is logged when it starts or its reason changes.
async fn dns_round(
    source: &dns::DnsSource,
    fleet: &Arc<Fleet>,
    metrics: &Arc<Metrics>,
    events: &EventSink,
    first: bool,
) {
    // Every query has `dns.timeout_ms`; the whole round (an SRV answer is followed by one
    // address query per target) gets at most four of them or one interval, whichever is longer.
    let bound = source.round_bound();
    let result = match tokio::time::timeout(bound, source.resolve()).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "resolving {} took longer than {} ms",
            source.describe(),
            bound.as_millis()
        )),
    };
    match result {
        Ok(r) => {
            metrics.dns_ok.inc();
            let change = fleet.sync_dns(&r.found);
            for n in &change.removed {
                if let fleet::Origin::Dns(addr) = n.origin {
                    events(&Event::NodeRemoved {
                        node: n.index,
                        addr,
                    });
                }
            }
            for n in &change.added {
                if let fleet::Origin::Dns(addr) = n.origin {
                    events(&Event::NodeAdded {
                        node: n.index,
                        addr,
                    });
                }
            }
            // No node at all is worth saying why (a misspelt name answers NXDOMAIN), once
            // while it lasts; Discover's refusal says it too.
            let problem = (r.found.is_empty()).then(|| format!("no node: {}", r.empty.join("; ")));
            let changed = fleet.set_dns_problem(problem.clone());
            if first
                || !change.added.is_empty()
                || !change.removed.is_empty()
                || (changed && problem.is_none())
            {
                events(&Event::DnsResolved {
                    names: source.describe(),
                    nodes: r.found.len(),
                    ignored: r.ignored,
                });
            }
            if let Some(reason) = problem.filter(|_| changed) {
                events(&Event::DnsEmpty {
                    names: source.describe(),
                    reason,
                });
            }
            fleet.check_some(change.added, metrics, events).await;
        }
        Err(reason) => {
            metrics.dns_failed.inc();
            if fleet.set_dns_problem(Some(reason.clone())) {
                events(&Event::DnsFailed {
                    names: source.describe(),
                    reason,
                });
            }
        }
    }
}
