//! `tandem serve` driven by the SDK's own thin client (`tandem_device::daemon_client`) over the
//! Unix socket and loopback TCP: every RPC, the same greedy text as the in-process SDK, the
//! token, a daemon that is not there; chat with a model that has a chat template (the real
//! SmolLM2 model: its template is applied on the device and it answers); and an error in the
//! middle of a remote stream (its node killed after the first text), which must reach the app
//! as an error on both APIs, never as a short answer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;

use tandem_device::daemon_client::{
    ChatMessage, DaemonClient, DaemonClientError, DaemonEvent, DeviceRoute, GenerateOptions,
};
use tandem_device::{Client, Config, RouteChoice};
use tandem_tests::daemon::DaemonRun;
use tandem_tests::device::{greedy, run};
use tandem_tests::fleet::{DevRun, kill9, models_dir};
use tandem_tests::real_model::smollm2_gguf;

fn rt() -> tokio::runtime::Runtime {
    tandem_service::runtime(2).unwrap()
}

fn greedy_options(max_tokens: u32, route: DeviceRoute) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        route: route as i32,
        ..GenerateOptions::default()
    }
}

fn embedded_config() -> Config {
    let mut c = Config::default();
    c.models.device = Some(models_dir().join("device"));
    c
}

#[test]
fn rust_client_every_rpc_and_the_sdk_text() {
    let d = DaemonRun::start(&[]);
    let rt = rt();
    rt.block_on(async {
        let mut unix = DaemonClient::connect_unix(&d.socket).await.unwrap();
        let mut tcp = DaemonClient::connect_tcp(&d.url()).await.unwrap();

        let h = unix.health().await.unwrap();
        assert_eq!(h.status, "serving");
        assert!(!h.remote_configured);
        let models = tcp.list_models().await.unwrap();
        let device = models.models.iter().find(|m| m.name == "device").unwrap();
        assert!(device.local && !device.remote, "{device:?}");
        assert!(device.digest.starts_with("sha256:"), "{device:?}");

        // The daemon's greedy text is the in-process SDK's, on both transports.
        let sdk = Client::new(embedded_config()).unwrap();
        let (want, _, summary, _) = run(&sdk, greedy("The king said", 24, RouteChoice::Local))
            .await
            .unwrap();
        assert_eq!(summary.model_digest.to_string(), device.digest);
        for c in [&mut unix, &mut tcp] {
            let s = c
                .generate("The king said", greedy_options(24, DeviceRoute::Local))
                .await
                .unwrap();
            let (text, summary) = s.collect().await.unwrap();
            assert_eq!(text, want);
            assert_eq!(summary.route, "local");
            assert_eq!(summary.model_digest, device.digest);
            assert!(summary.completion_tokens >= 1 && summary.completion_tokens <= 24);
        }

        // Chat on a model without a template: each message on its own line.
        let s = unix
            .chat(
                vec![ChatMessage {
                    role: "user".into(),
                    content: "The king said".into(),
                }],
                greedy_options(8, DeviceRoute::Auto),
            )
            .await
            .unwrap();
        let (_, summary) = s.collect().await.unwrap();
        assert_eq!(summary.route, "local");

        // Errors are statuses whose messages say what to do.
        // The status arrives when the call is made or as the stream's first item.
        let e = match unix
            .generate("", greedy_options(8, DeviceRoute::Local))
            .await
        {
            Err(e) => e,
            Ok(s) => s.collect().await.unwrap_err(),
        };
        assert!(
            matches!(&e, DaemonClientError::Status { code: tonic::Code::InvalidArgument, message } if message.contains("empty")),
            "{e}"
        );
        let e = tcp.list_nodes("device", "").await.unwrap_err();
        assert!(
            matches!(&e, DaemonClientError::Status { code: tonic::Code::Unavailable, .. }),
            "{e}"
        );
    });

    // No daemon there: the error names the socket and says what to check.
    let gone = d.dir.path().join("nobody.sock");
    let e = rt.block_on(DaemonClient::connect_unix(&gone)).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("nobody.sock") && msg.contains("tandem serve"),
        "{msg}"
    );
}

#[test]
fn rust_client_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "rust-token\n").unwrap();
    let d = DaemonRun::start(&["--token-file", token_file.to_str().unwrap()]);
    rt().block_on(async {
        let mut anon = DaemonClient::connect_unix(&d.socket).await.unwrap();
        let e = anon.health().await.unwrap_err();
        assert!(
            matches!(
                &e,
                DaemonClientError::Status {
                    code: tonic::Code::Unauthenticated,
                    ..
                }
            ),
            "{e}"
        );
        let mut wrong = anon.clone().with_token("not-it");
        assert!(wrong.health().await.is_err());
        let mut right = anon.with_token("rust-token");
        assert_eq!(right.health().await.unwrap().status, "serving");
    });
}

/// The real model has a chat template (ChatML): the daemon applies it on the device, and the
/// answer is the in-process SDK's greedy answer to the same rendered prompt.
#[test]
fn chat_with_a_templated_model() {
    let gguf = smollm2_gguf();
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("device.json");
    let config = serde_json::json!({ "models": { "device": gguf } });
    std::fs::write(&config_file, serde_json::to_vec(&config).unwrap()).unwrap();
    let d = DaemonRun::start(&["--config", config_file.to_str().unwrap()]);
    let question = "What is the capital of France?";
    let rt = rt();
    let (text, summary) = rt.block_on(async {
        let mut c = DaemonClient::connect_unix(&d.socket).await.unwrap();
        let models = c.list_models().await.unwrap();
        let device = models.models.iter().find(|m| m.name == "device").unwrap();
        assert!(
            device.chat_template,
            "SmolLM2 has a chat template: {device:?}"
        );
        assert_eq!(device.context_tokens, 8192);
        let s = c
            .chat(
                vec![ChatMessage {
                    role: "user".into(),
                    content: question.into(),
                }],
                greedy_options(16, DeviceRoute::Local),
            )
            .await
            .unwrap();
        s.collect().await.unwrap()
    });
    assert!(text.contains("Paris"), "{text:?}");
    assert_eq!(summary.route, "local");

    // The same turn through the SDK in-process: the template rendered from the model's own
    // files (the imported GGUF directory), then plain generation.
    let cfg = Config::from_json(&serde_json::to_vec(&config).unwrap()).unwrap();
    let sdk = Client::new(cfg).unwrap();
    let model_dir = sdk
        .pin(tandem_device::ModelChoice::Device)
        .unwrap()
        .dir
        .clone();
    let prompter = tandem_device::prompt::Prompter::for_model(&model_dir)
        .unwrap()
        .expect("the imported model keeps its chat template");
    let prompt = prompter
        .prompt(&[tandem_model::chat_template::Message::new("user", question)])
        .unwrap();
    assert!(
        prompt.contains("<|im_start|>user\nWhat is the capital"),
        "{prompt:?}"
    );
    let (want, _, s, _) = rt
        .block_on(run(&sdk, greedy(&prompt, 16, RouteChoice::Local)))
        .unwrap();
    assert_eq!(text, want);
    assert_eq!(summary.prompt_tokens, s.prompt_tokens);
}

/// A daemon in front of a dev fleet, routing `remote` (no fallback): the fleet's nodes are
/// killed as soon as the app sees the first text.
fn remote_daemon() -> (DevRun, DaemonRun, tempfile::TempDir) {
    let fleet = DevRun::start(2);
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("device.json");
    std::fs::write(&config_file, serde_json::to_vec(&fleet.config).unwrap()).unwrap();
    let d = DaemonRun::start(&["--config", config_file.to_str().unwrap()]);
    (fleet, d, dir)
}

const LONG: u32 = 240;

#[test]
fn an_error_mid_stream_reaches_the_grpc_client() {
    let (fleet, d, _dir) = remote_daemon();
    rt().block_on(async {
        let mut c = DaemonClient::connect_unix(&d.socket).await.unwrap();
        let mut options = greedy_options(LONG, DeviceRoute::Remote);
        options.model = "server".into();
        let mut s = c
            .generate("The king said to his son that the", options)
            .await
            .unwrap();
        let mut texts = 0;
        let end = loop {
            match s.next().await {
                Ok(Some(DaemonEvent::Text(_))) => {
                    if texts == 0 {
                        for (pid, _) in &fleet.nodes {
                            kill9(*pid);
                        }
                    }
                    texts += 1;
                }
                Ok(Some(DaemonEvent::Done(s))) => panic!(
                    "a stream whose node died must not end with a summary: {s:?} after {texts} texts"
                ),
                Ok(Some(other)) => panic!("unexpected {other:?}"),
                Ok(None) => panic!("stream ended after Done"),
                Err(e) => break e,
            }
        };
        assert!(texts >= 1);
        assert!(
            matches!(&end, DaemonClientError::Status { code: tonic::Code::Unavailable | tonic::Code::DataLoss | tonic::Code::DeadlineExceeded, .. }),
            "{end}"
        );
    });
}

#[test]
fn an_error_mid_stream_is_a_final_sse_error_event() {
    let (fleet, d, _dir) = remote_daemon();
    let body = serde_json::json!({
        "model": "server",
        "prompt": "The king said to his son that the",
        "max_tokens": LONG,
        "temperature": 0,
        "stream": true,
    })
    .to_string();
    let mut sock = TcpStream::connect(d.tcp).unwrap();
    write!(
        sock,
        "POST /v1/completions HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         x-tandem-route: remote\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut r = BufReader::new(sock);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    assert!(status.contains(" 200 "), "{status}");
    // Read line by line (chunked encoding framing lines are skipped: they never start with
    // `data:`); kill the nodes at the first data event.
    let mut events = Vec::new();
    let mut line = String::new();
    while r.read_line(&mut line).unwrap() > 0 {
        if let Some(ev) = line.trim_end().strip_prefix("data: ") {
            if events.is_empty() {
                for (pid, _) in &fleet.nodes {
                    kill9(*pid);
                }
            }
            events.push(ev.to_string());
        }
        line.clear();
    }
    let mut rest = String::new();
    let _ = r.read_to_string(&mut rest);
    let last = events.last().expect("at least one event");
    assert_ne!(
        last, "[DONE]",
        "a broken stream must not end like a whole one: {events:?}"
    );
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{last}"
    );
    assert!(events.len() >= 2, "{events:?}");
    assert!(
        events[..events.len() - 1]
            .iter()
            .all(|e| !e.contains("\"finish_reason\":\"stop\"")
                && !e.contains("\"finish_reason\":\"length\"")),
        "{events:?}"
    );
}
