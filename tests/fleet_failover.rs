//! Real node processes (`tandem-fleet dev --nodes 2`) killed under the gateway: a node killed
//! before a request is skipped (the request is answered by the other node); a node killed in the
//! middle of a stream gives the device an error status, never a short answer that looks whole.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use tandem_proto::v1;
use tandem_proto::v1::node_client::NodeClient;
use tandem_tests::fleet::{DevRun, candidates, kill9, read_answer, seal};

#[test]
fn killed_nodes_fail_over_before_the_first_message_and_error_after_it() {
    let dev = DevRun::start(2);
    let rt = tandem_service::runtime(2).unwrap();
    rt.block_on(async {
        let mut gw = dev.gateway().await;
        let server = dev.model_dir("server");
        let cands = candidates(&mut gw, &dev.verifier(), &server).await;
        assert_eq!(cands.len(), 2);
        // Which process is behind each handle: ask each node for its bundle.
        let mut pid_of = Vec::new();
        for (_, _, doc) in &cands {
            let mut found = None;
            for (pid, addr) in &dev.nodes {
                let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect()
                    .await
                    .unwrap();
                let d = NodeClient::new(ch)
                    .get_attestation(v1::GetAttestationRequest {})
                    .await
                    .unwrap()
                    .into_inner()
                    .document;
                if &d == doc {
                    found = Some(*pid);
                }
            }
            pid_of.push(found.expect("every candidate is one of the dev nodes"));
        }
        let both: Vec<_> = cands.iter().map(|(_, n, _)| n).collect();
        let handles: Vec<String> = cands.iter().map(|(h, _, _)| h.clone()).collect();

        // 1. The first node is killed before the request: the second answers.
        kill9(pid_of[0]);
        let (sealed, ctx) = seal(&server, "The king said to his son that the", 8, &both);
        let mut stream = gw
            .submit(v1::SubmitRequest {
                sealed_request: sealed,
                node_handles: handles.clone(),
            })
            .await
            .expect("the gateway skips the dead node")
            .into_inner();
        let receipt = read_answer(&mut stream, ctx, |_, _| {}).await.unwrap();
        assert!(receipt.completion_tokens >= 1);
        assert_eq!(
            receipt.release_digest,
            cands[1].1.release().digest().0.to_vec()
        );

        // 2. The second node is killed after its first delta: the device gets an error status.
        let (sealed, ctx) = seal(&server, "The king said to his son that the", 240, &both);
        let mut stream = gw
            .submit(v1::SubmitRequest {
                sealed_request: sealed,
                node_handles: vec![handles[1].clone()],
            })
            .await
            .unwrap()
            .into_inner();
        let victim = pid_of[1];
        let mut killed_after = None;
        let end = read_answer(&mut stream, ctx, |n, _| {
            if killed_after.is_none() {
                kill9(victim);
                killed_after = Some(n);
            }
        })
        .await;
        let status = end.expect_err("a node killed mid-stream must not look like a whole answer");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("incomplete"),
            "{}",
            status.message()
        );
        assert_eq!(killed_after, Some(1));
    });
}

/// Whether `pid` is a live process (a zombie waiting for its reaper counts as gone).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S ...`: the state follows the last ')'.
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

#[cfg(target_os = "linux")]
#[test]
fn a_sigkilled_dev_takes_its_nodes_with_it() {
    let mut dev = DevRun::start(1);
    let nodes: Vec<u32> = dev.nodes.iter().map(|(pid, _)| *pid).collect();
    assert_eq!(nodes.len(), 1);
    assert!(nodes.iter().all(|p| alive(*p)));
    let mut child = dev.child.take().unwrap();
    kill9(child.id());
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while nodes.iter().any(|p| alive(*p)) {
        assert!(
            std::time::Instant::now() < deadline,
            "node(s) still running 30 s after `tandem-fleet dev` was SIGKILLed: {nodes:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
