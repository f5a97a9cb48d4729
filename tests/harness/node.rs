//! One node's world: a transparency log on loopback (the library's own log server), a real
//! signed release of the node binary, a fleet CA and node identity, and a sealing client that
//! speaks to the node directly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message as _;
use tandem_attest::evidence::{CertRole, FleetCa};
use tandem_attest::log::NoteSigner;
use tandem_attest::release::{ReleaseBundle, ReleaseSigningKey};
use tandem_node::config::{NodeConfig, Overrides, ResolvedConfig};
use tandem_node::node::identity::write_software_identity;
use tandem_node::node::measure;
use tandem_proto::v1::node_client::NodeClient;
use tandem_proto::v1::{self, submit_reply};
use tandem_proto::{KeyConfig, Limits, RoutingMetadata, SealOptions, SizeBucket, seal_request};

/// The repository's embedded device model.
pub fn device_model() -> PathBuf {
    embedded_model("device")
}

/// One of the repository's embedded models (`models/NAME`).
pub fn embedded_model(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(name)
        .canonicalize()
        .unwrap()
}

// ---- the log ------------------------------------------------------------------------------

/// A transparency log on a loopback port: the library's own log (`tandem_log::store` +
/// `tandem_log::server`, what `attest log serve` and `tandem-fleet dev` run) in a temporary
/// directory, written to over HTTP like any log.
#[derive(Clone)]
pub struct TestLog {
    vkey: String,
    client: tandem_log::LogClient,
    pub url: String,
    _dir: Arc<tempfile::TempDir>,
}

impl TestLog {
    /// Starts a log holding `filler` unrelated entries on a loopback port.
    pub async fn start(filler: usize) -> TestLog {
        let (signer, _) =
            NoteSigner::generate_with_rng(&mut rand::rngs::OsRng, "log.tandem.test").unwrap();
        let vkey = signer.vkey().to_owned();
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = tandem_log::store::LogStore::open(dir.path(), signer).unwrap();
        let fillers: Vec<String> = (0..filler).map(|i| format!("filler entry {i}")).collect();
        if !fillers.is_empty() {
            store.append_batch(&fillers).unwrap();
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = tandem_log::server::app(store);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestLog {
            vkey,
            client: tandem_log::LogClient::new(&url, std::time::Duration::from_secs(30)).unwrap(),
            url,
            _dir: Arc::new(dir),
        }
    }

    /// The log's verifier key.
    pub fn vkey(&self) -> String {
        self.vkey.clone()
    }

    /// Appends an entry (`POST /add`); returns its index once the log published a checkpoint
    /// covering it.
    pub async fn append(&self, entry: &[u8]) -> u64 {
        self.client.append(entry).await.unwrap().index
    }
}

// ---- a node's files -------------------------------------------------------------------------

/// Everything one node needs on disk, in a temporary directory.
pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub config_bytes: Vec<u8>,
    pub identity: PathBuf,
    pub release: ReleaseBundle,
    pub release_path: PathBuf,
    pub ca: FleetCa,
    pub log: TestLog,
    /// The release signer's public key (PEM).
    pub release_signer_pem: String,
}

/// Writes the config, identity and a signed release measuring `binary`; appends the release
/// to the log if `logged`.
pub async fn fleet(binary: &Path, extra_config: &str, logged: bool) -> Fleet {
    fleet_with_root(
        binary,
        extra_config,
        logged,
        "kind = \"software\"",
        |_, _| {},
    )
    .await
}

/// [`fleet`] with `root` as the body of the config's `[root_of_trust]` table; `identity` may
/// add files to the identity directory (it gets the directory and the fleet CA).
pub async fn fleet_with_root(
    binary: &Path,
    extra_config: &str,
    logged: bool,
    root: &str,
    identity: impl FnOnce(&Path, &FleetCa),
) -> Fleet {
    fleet_serving(
        binary,
        extra_config,
        logged,
        root,
        identity,
        &device_model(),
    )
    .await
}

/// [`fleet_with_root`] for a node serving the model in `model_dir` (instead of the device model).
pub async fn fleet_serving(
    binary: &Path,
    extra_config: &str,
    logged: bool,
    root: &str,
    identity: impl FnOnce(&Path, &FleetCa),
    model_dir: &Path,
) -> Fleet {
    let add_identity = identity;
    let log = TestLog::start(5).await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("node.toml");
    let text = format!(
        "log_url = \"{}\"\nlog_key = \"{}\"\nrelease_bundle = \"release.json\"\n\
         key_lifetime_secs = 3600\n{extra_config}\n\
         [[models]]\ndir = \"{}\"\n\
         [root_of_trust]\n{root}\n",
        log.url,
        log.vkey(),
        model_dir.display(),
    );
    std::fs::write(&config_path, &text).unwrap();
    let cfg = NodeConfig::from_toml(text.as_bytes(), &config_path).unwrap();
    let mut rng = rand::rngs::OsRng;
    let ca = FleetCa::generate_with_rng(&mut rng);
    let key = p256::ecdsa::SigningKey::random(&mut rng);
    let now = now();
    let cert = ca
        .certify(
            CertRole::NodeIdentity,
            "node-test",
            key.verifying_key(),
            now - 60,
            now + 86400,
        )
        .unwrap();
    let identity = dir.path().join("identity");
    write_software_identity(&identity, &key, &cert).unwrap();
    add_identity(&identity, &ca);
    // A self-signed TLS certificate for `localhost` (used when the config says `tls = true`).
    let tls = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(identity.join("tls.cert.pem"), tls.cert.pem()).unwrap();
    std::fs::write(
        identity.join("tls.key.pem"),
        tls.signing_key.serialize_pem(),
    )
    .unwrap();
    // The release: measured the way the node measures itself.
    let release_path = dir.path().join("release.json");
    std::fs::write(&release_path, b"{}").unwrap();
    let resolved = cfg
        .resolve(
            &config_path,
            &Overrides {
                listen: Some("127.0.0.1:0".into()),
                identity: Some(identity.clone()),
                ..Overrides::default()
            },
        )
        .unwrap();
    let arts = measure::expected_artifacts(binary, "node.toml", text.as_bytes(), &resolved.models)
        .unwrap();
    let manifest = measure::manifest("tandem-node test", arts).unwrap();
    let release_key = ReleaseSigningKey::generate();
    let release = release_key.sign(manifest);
    if logged {
        log.append(&release.log_entry_body()).await;
        log.append(b"a later entry").await;
    }
    std::fs::write(&release_path, release.to_json()).unwrap();
    Fleet {
        dir,
        config_path,
        config_bytes: text.into_bytes(),
        identity,
        release,
        release_path,
        ca,
        log,
        release_signer_pem: release_key.public_key().to_pem(),
    }
}

impl Fleet {
    /// A device trust policy for this fleet (no witnesses).
    pub fn policy(&self) -> tandem_attest::verify::Policy {
        let v = serde_json::json!({
            "fleetCaKeys": [self.ca.public_key().to_pem()],
            "releaseSigners": [self.release_signer_pem],
            "logKeys": [self.log.vkey()],
            "requiredWitnesses": 0,
            "clockSkewSecs": 60,
        });
        tandem_attest::verify::Policy::from_json(&serde_json::to_vec(&v).unwrap()).unwrap()
    }
}

impl Fleet {
    /// Starts the node in this process (measuring `binary`, reading `clock`) on a loopback
    /// port and serves it until the test's runtime ends; returns its address.
    pub async fn serve_in_process(
        &self,
        binary: &Path,
        clock: Arc<dyn tandem_node::node::Clock>,
    ) -> SocketAddr {
        let node =
            tandem_node::node::Node::start(self.resolved(), &self.config_bytes, binary, clock)
                .await
                .unwrap();
        let listener = node.bind().await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(node.serve(listener, std::future::pending()));
        addr
    }

    /// The resolved config (listen on an ephemeral loopback port).
    pub fn resolved(&self) -> ResolvedConfig {
        let cfg = NodeConfig::from_toml(&self.config_bytes, &self.config_path).unwrap();
        cfg.resolve(
            &self.config_path,
            &Overrides {
                listen: Some("127.0.0.1:0".into()),
                identity: Some(self.identity.clone()),
                ..Overrides::default()
            },
        )
        .unwrap()
    }
}

pub use crate::now;

// ---- the client -----------------------------------------------------------------------------

/// The device model's digests.
pub struct Digests {
    pub model: [u8; 32],
    pub adapter: [u8; 32],
}

pub fn digests() -> Digests {
    let m = tandem_model::model_digest(&device_model()).unwrap();
    let a = tandem_model::adapter_digest(&device_model().join("adapters/proofread")).unwrap();
    Digests {
        model: m.0.0,
        adapter: a.0.0,
    }
}

fn hexd(d: &[u8]) -> String {
    format!("sha256:{}", hex::encode(d))
}

/// A sealed request and the context that opens its response.
pub fn seal(
    configs: &[KeyConfig],
    model: [u8; 32],
    adapter: Option<[u8; 32]>,
    prompt: &str,
    max_new_tokens: u32,
    created_at: u64,
) -> (Vec<u8>, tandem_proto::ResponseContext) {
    let body = v1::InferenceRequest {
        model_digest: model.to_vec(),
        adapter_digest: adapter.map(|a| a.to_vec()).unwrap_or_default(),
        prompt: prompt.into(),
        max_new_tokens,
        temperature: 0.0,
        top_p: 0.0,
        seed: 0,
    }
    .encode_to_vec();
    let routing = RoutingMetadata {
        model_id: hexd(&model),
        adapter_id: adapter.map(|a| hexd(&a)).unwrap_or_default(),
        size_bucket: SizeBucket::for_len(body.len()),
    };
    seal_request(
        configs,
        &routing,
        created_at,
        &body,
        &SealOptions::default(),
    )
    .unwrap()
}

/// The key configs of a node's attestation.
/// The node's attestation bundle bytes (`GetAttestation`).
pub async fn attestation_document(client: &mut NodeClient<tonic::transport::Channel>) -> Vec<u8> {
    client
        .get_attestation(v1::GetAttestationRequest {})
        .await
        .unwrap()
        .into_inner()
        .document
}

pub async fn key_configs(client: &mut NodeClient<tonic::transport::Channel>) -> Vec<KeyConfig> {
    let doc = attestation_document(client).await;
    let b = tandem_attest::attestation::AttestationBundle::from_json(&doc).unwrap();
    b.key_configs().entries().to_vec()
}

/// What came back.
#[derive(Debug, Default)]
pub struct Answer {
    pub tokens: Vec<u32>,
    pub text: String,
    pub receipt: Option<v1::Receipt>,
    pub error: Option<v1::NodeError>,
}

/// Submits and opens the whole stream; `Err` is the status before the head.
pub async fn submit(
    client: &mut NodeClient<tonic::transport::Channel>,
    sealed: Vec<u8>,
    ctx: tandem_proto::ResponseContext,
) -> Result<Answer, tonic::Status> {
    let mut stream = client
        .submit(v1::SubmitRequest {
            sealed_request: sealed,
            node_handles: vec![],
        })
        .await?
        .into_inner();
    let first = stream.message().await?.expect("a head");
    let Some(submit_reply::Part::Head(head)) = first.part else {
        panic!("first message is not the head")
    };
    let mut opener = ctx.open_head(&head, Limits::default()).unwrap();
    let mut ans = Answer::default();
    while let Some(m) = stream.message().await? {
        let Some(submit_reply::Part::Chunk(c)) = m.part else {
            panic!("a second head")
        };
        let opened = opener.open(&c).unwrap();
        let ev = v1::ResponseEvent::decode(&opened.data[..]).unwrap();
        match ev.event {
            Some(v1::response_event::Event::Delta(d)) => {
                ans.tokens.extend(d.token_ids);
                ans.text.push_str(&d.text);
            }
            Some(v1::response_event::Event::Receipt(r)) => ans.receipt = Some(r),
            Some(v1::response_event::Event::Error(e)) => ans.error = Some(e),
            None => panic!("empty event"),
        }
        if opened.is_final {
            break;
        }
    }
    opener.finish().unwrap();
    Ok(ans)
}

/// A client over TLS that trusts the node's self-signed certificate.
pub async fn connect_tls(addr: SocketAddr, ca_pem: &[u8]) -> NodeClient<tonic::transport::Channel> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    let ch = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    NodeClient::new(ch)
}

pub async fn connect(addr: SocketAddr) -> NodeClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    NodeClient::new(ch)
}

/// Greedy generation on the embedded device model (with the named adapter) through the shared
/// model stack, as the device's local path runs it: the tokens a node must reproduce.
pub fn local_tokens(prompt: &str, adapter: Option<&str>, max: usize) -> Vec<u32> {
    let dir = device_model();
    let dev = tandem_model::Device::Cpu;
    let m = tandem_model::load_model(&dir, tandem_model::DType::F32, &dev).unwrap();
    let a = adapter.map(|name| {
        tandem_model::load_adapter(
            &dir.join("adapters").join(name),
            m.model.config(),
            tandem_model::DType::F32,
            &dev,
        )
        .unwrap()
    });
    let ids = m.tokenizer.encode(prompt).unwrap();
    let params = tandem_model::GenerateParams {
        max_tokens: max,
        ..Default::default()
    };
    m.model
        .generate(
            &m.tokenizer,
            &ids,
            a.as_ref().map(|a| &a.adapter),
            &params,
            |_| std::ops::ControlFlow::Continue(()),
        )
        .unwrap()
        .tokens
}
