//! C2SP tlog-witness with real processes on loopback: two `attest witness serve` and an
//! `attest log serve --witness ... --witness-quorum 2`. The published checkpoint carries both
//! cosignatures and passes a device policy requiring 2 of 2; a witness restarted from its state
//! directory refuses an older checkpoint; a forked log (same origin and key, another history)
//! is refused with the spec's status; a policy naming a witness that did not sign refuses the
//! checkpoint with a clear message; with a witness down the checkpoint is published under the
//! quorum, logged, and cosigned by both once the witness is back.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use tandem_attest::log::note::{CosignerKey, WitnessPolicy, open_checkpoint};
use tandem_attest::log::witness::{AddCheckpoint, SIZE_CONTENT_TYPE};
use tandem_attest::log::{InclusionBundle, NoteVerifier};
use tandem_attest::test_util::Fixture;
use tandem_attest::verify::{KnownCheckpoint, Policy};

mod common;
use common::{BIN, Proc};
const ORIGIN: &str = "witness-test.tandem/log";

fn run(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "attest {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn witness(dir: &Path, key: &Path, log_vkey: &str, listen: &str) -> Proc {
    let state = dir.join(key.file_stem().unwrap());
    Proc::start([
        "witness",
        "serve",
        "--key",
        key.to_str().unwrap(),
        "--log",
        &format!("{ORIGIN}={log_vkey}"),
        "--state",
        state.to_str().unwrap(),
        "--listen",
        listen,
    ])
}

fn log(dir: &Path, key: &Path, witnesses: &[(&str, &str)]) -> Proc {
    let mut args: Vec<String> = [
        "log",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--http-threads",
        "1",
        "--key",
        key.to_str().unwrap(),
        "--dir",
        dir.to_str().unwrap(),
        "--witness-quorum",
        &witnesses.len().to_string(),
    ]
    .map(String::from)
    .to_vec();
    for (url, vkey) in witnesses {
        args.push("--witness".into());
        args.push(format!("{url}={vkey}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::start(&args)
}

async fn append(c: &reqwest::Client, url: &str, entry: &[u8]) -> InclusionBundle {
    let r = c
        .post(format!("{url}/add"))
        .body(entry.to_vec())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "POST /add: {}", r.status());
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

async fn get_checkpoint(c: &reqwest::Client, url: &str) -> Vec<u8> {
    let r = c.get(format!("{url}/checkpoint")).send().await.unwrap();
    assert!(r.status().is_success());
    r.bytes().await.unwrap().to_vec()
}

/// Poll `GET /checkpoint` until it is of `size` and cosigned under `policy`.
async fn wait_cosigned(
    c: &reqwest::Client,
    url: &str,
    log: &NoteVerifier,
    policy: &WitnessPolicy,
    size: u64,
) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let note = get_checkpoint(c, url).await;
        let got = open_checkpoint(&note, log, Some(policy), None);
        if let Ok(v) = &got
            && v.checkpoint().size == size
        {
            return note;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint of size {size} cosigned by the quorum: {got:?}\n{}",
            String::from_utf8_lossy(&note)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// POST an add-checkpoint body to a witness: (status, content type, body).
async fn submit(c: &reqwest::Client, url: &str, req: &AddCheckpoint) -> (u16, String, String) {
    let r = c
        .post(format!("{url}/add-checkpoint"))
        .body(req.encode())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ct, r.text().await.unwrap())
}

async fn consistency(c: &reqwest::Client, url: &str, old: u64, new: u64) -> Vec<[u8; 32]> {
    let v: serde_json::Value = c
        .get(format!("{url}/proof/consistency?old={old}&new={new}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| B64.decode(h.as_str().unwrap()).unwrap().try_into().unwrap())
        .collect()
}

fn device_policy(fx: &Fixture, log_vkey: &str, witnesses: &[&str], required: usize) -> Policy {
    Policy::from_json(&fx.policy_json(serde_json::json!({
        "logKeys": [log_vkey],
        "witnessKeys": witnesses,
        "requiredWitnesses": required,
    })))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_with_two_witnesses() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let key = |n: &str| dir.join(n);
    let log_vkey = run(&[
        "log",
        "keygen",
        "--origin",
        ORIGIN,
        "--out",
        key("log.key").to_str().unwrap(),
    ]);
    let log_key = NoteVerifier::new(&log_vkey).unwrap();
    let mut wkeys = Vec::new();
    for w in ["w1", "w2", "w3"] {
        wkeys.push(run(&[
            "witness",
            "keygen",
            "--name",
            &format!("{w}.witness.test"),
            "--out",
            key(&format!("{w}.key")).to_str().unwrap(),
        ]));
    }
    let w1 = witness(dir, &key("w1.key"), &log_vkey, "127.0.0.1:0");
    let w2 = witness(dir, &key("w2.key"), &log_vkey, "127.0.0.1:0");
    let w1_url = w1.url.clone();
    let main = log(
        &dir.join("log"),
        &key("log.key"),
        &[(&w1.url, &wkeys[0]), (&w2.url, &wkeys[1])],
    );
    let c = reqwest::Client::new();
    let both = WitnessPolicy::new(
        vec![
            CosignerKey::new(&wkeys[0]).unwrap(),
            CosignerKey::new(&wkeys[1]).unwrap(),
        ],
        2,
    )
    .unwrap();

    // 1. Appends; the published checkpoint carries both cosignatures.
    let mut answers = Vec::new();
    for i in 0..5u8 {
        answers.push(append(&c, &main.url, &[b'e', i]).await);
    }
    let note = wait_cosigned(&c, &main.url, &log_key, &both, 5).await;
    let text = String::from_utf8(note.clone()).unwrap();
    assert!(text.contains("\u{2014} w1.witness.test "), "{text}");
    assert!(text.contains("\u{2014} w2.witness.test "), "{text}");

    // 2. The device's policy code: 2 of 2 accepts; a policy that needs w3, which never signed,
    //    refuses with a message saying so.
    let fx = Fixture::new();
    let policy = device_policy(&fx, &log_vkey, &[&wkeys[0], &wkeys[1]], 2);
    let known = KnownCheckpoint::open(&policy, &text, vec![]).unwrap();
    assert_eq!(known.checkpoint.size, 5);
    assert_eq!(known.checkpoint.cosigned_at.len(), 2);
    let needs_w3 = device_policy(&fx, &log_vkey, &[&wkeys[0], &wkeys[2]], 2);
    let err = KnownCheckpoint::open(&needs_w3, &text, vec![])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("1 valid witness cosignature(s) but the policy requires 2"),
        "{err}"
    );

    // 3. The offline proof (C2SP tlog-proof) of an entry carries the cosignatures too.
    let entry = dir.join("entry");
    std::fs::write(&entry, [b'e', 3]).unwrap();
    let proof = dir.join("entry.tlog-proof");
    run(&[
        "log",
        "prove",
        "--log",
        &main.url,
        "--log-key",
        &log_vkey,
        "--index",
        "3",
        "--tlog-proof",
        proof.to_str().unwrap(),
        entry.to_str().unwrap(),
    ]);
    run(&[
        "log",
        "verify-proof",
        proof.to_str().unwrap(),
        "--entry",
        entry.to_str().unwrap(),
        "--log-key",
        &log_vkey,
        "--witness",
        &wkeys[0],
        "--witness",
        &wkeys[1],
    ]);

    // 4. A witness restarted from its state directory (same port) keeps its latest size:
    //    an older checkpoint is refused, and the log's next checkpoint is cosigned again.
    let port = w1_url.rsplit(':').next().unwrap().to_owned();
    drop(w1);
    let w1 = witness(dir, &key("w1.key"), &log_vkey, &format!("127.0.0.1:{port}"));
    let older = answers[1].checkpoint.as_bytes().to_vec();
    let (status, ct, body) = submit(
        &c,
        &w1.url,
        &AddCheckpoint {
            old_size: 0,
            proof: vec![],
            checkpoint: older.clone(),
        },
    )
    .await;
    assert_eq!(
        (status, ct.as_str(), body.as_str()),
        (409, SIZE_CONTENT_TYPE, "5\n")
    );
    let (status, _, _) = submit(
        &c,
        &w1.url,
        &AddCheckpoint {
            old_size: 5,
            proof: vec![],
            checkpoint: older,
        },
    )
    .await;
    assert_eq!(status, 400, "old size above the checkpoint's size");
    append(&c, &main.url, b"after restart").await;
    let note = wait_cosigned(&c, &main.url, &log_key, &both, 6).await;
    KnownCheckpoint::open(&policy, std::str::from_utf8(&note).unwrap(), vec![]).unwrap();

    // 5. A fork: another log with the same origin and key but another history. The witnesses
    //    refuse it (422: not consistent with what they cosigned), it is served without their
    //    cosignatures, and the device's policy refuses it.
    let fork = log(
        &dir.join("fork"),
        &key("log.key"),
        &[(&w1.url, &wkeys[0]), (&w2.url, &wkeys[1])],
    );
    for i in 0..7u8 {
        append(&c, &fork.url, &[b'f', i]).await;
    }
    let fork_note = loop {
        let n = get_checkpoint(&c, &fork.url).await;
        let v = open_checkpoint(&n, &log_key, None, None).unwrap();
        if v.checkpoint().size == 7 {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let err = KnownCheckpoint::open(&policy, std::str::from_utf8(&fork_note).unwrap(), vec![])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("0 valid witness cosignature(s) but the policy requires 2"),
        "{err}"
    );
    let proof = consistency(&c, &fork.url, 6, 7).await;
    for w in [&w1.url, &w2.url] {
        let (status, _, body) = submit(
            &c,
            w,
            &AddCheckpoint {
                old_size: 6,
                proof: proof.clone(),
                checkpoint: fork_note.clone(),
            },
        )
        .await;
        assert_eq!(status, 422, "{body}");
    }
    // Same size as the witnessed checkpoint, another root: 409.
    let fork6 = {
        // A second fork, 6 entries long, submitting to w2 only.
        let fork2 = log(&dir.join("fork2"), &key("log.key"), &[(&w2.url, &wkeys[1])]);
        for i in 0..6u8 {
            append(&c, &fork2.url, &[b'g', i]).await;
        }
        let n = loop {
            let n = get_checkpoint(&c, &fork2.url).await;
            if open_checkpoint(&n, &log_key, None, None)
                .unwrap()
                .checkpoint()
                .size
                == 6
            {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let err = fork2.kill();
        assert!(err.contains("409"), "{err}");
        n
    };
    let (status, ct, body) = submit(
        &c,
        &w2.url,
        &AddCheckpoint {
            old_size: 6,
            proof: vec![],
            checkpoint: fork6,
        },
    )
    .await;
    assert_eq!(
        (status, ct.as_str(), body.as_str()),
        (409, SIZE_CONTENT_TYPE, "6\n")
    );
    let fork_err = fork.kill();
    assert!(
        fork_err.contains("refused with 422") && fork_err.contains("only 0 of the 2 required"),
        "{fork_err}"
    );

    // The witnesses kept the main log's state throughout.
    append(&c, &main.url, b"last").await;
    wait_cosigned(&c, &main.url, &log_key, &both, 7).await;

    // 6. Fewer than the quorum: with w2 down the next checkpoint is published with w1's
    //    cosignature only (the device's 2-of-2 policy refuses it, 1 of 2 accepts it), and once
    //    w2 is back the log's retry gets it cosigned by both.
    let w2_port = w2.url.rsplit(':').next().unwrap().to_owned();
    drop(w2);
    append(&c, &main.url, b"w2 is down").await;
    let one = WitnessPolicy::new(both_keys(&wkeys), 1).unwrap();
    let note = wait_cosigned(&c, &main.url, &log_key, &one, 8).await;
    assert!(open_checkpoint(&note, &log_key, Some(&both), None).is_err());
    let err = KnownCheckpoint::open(&policy, std::str::from_utf8(&note).unwrap(), vec![])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("1 valid witness cosignature(s) but the policy requires 2"),
        "{err}"
    );
    let w2 = witness(
        dir,
        &key("w2.key"),
        &log_vkey,
        &format!("127.0.0.1:{w2_port}"),
    );
    wait_cosigned(&c, &main.url, &log_key, &both, 8).await;
    let main_err = main.kill();
    assert!(
        main_err.contains("only 1 of the 2 required witnesses cosigned the checkpoint of size 8"),
        "{main_err}"
    );

    drop((w1, w2));
    let state = std::fs::read_to_string(dir.join("w1").join("witness-state")).unwrap();
    assert!(
        state.starts_with("tandem-witness-state/v1\n\nwitness-test.tandem/log\n8\n"),
        "{state}"
    );
}

fn both_keys(wkeys: &[String]) -> Vec<CosignerKey> {
    wkeys[..2]
        .iter()
        .map(|k| CosignerKey::new(k).unwrap())
        .collect()
}

/// Configuration errors are reported before any port is bound.
#[test]
fn refuses_bad_configuration() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let p = |n: &str| dir.join(n).to_str().unwrap().to_owned();
    let log_vkey = run(&["log", "keygen", "--origin", ORIGIN, "--out", &p("log.key")]);
    let w = run(&[
        "witness",
        "keygen",
        "--name",
        "w.test",
        "--out",
        &p("w.key"),
    ]);
    let fails = |args: &[&str], want: &str| {
        let out = Command::new(BIN).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(want),
            "{args:?}: {err}"
        );
    };
    // The key file is never overwritten.
    fails(
        &[
            "witness",
            "keygen",
            "--name",
            "w.test",
            "--out",
            &p("w.key"),
        ],
        "must not exist yet",
    );
    // A log key is not a witness key.
    fails(
        &[
            "witness",
            "serve",
            "--key",
            &p("log.key"),
            "--log",
            &log_vkey,
            "--state",
            &p("s"),
        ],
        "cosignature/v1",
    );
    // A damaged state file stops the witness instead of starting empty.
    std::fs::create_dir(dir.join("s")).unwrap();
    std::fs::write(
        dir.join("s").join("witness-state"),
        "tandem-witness-state/v1\n\nx\n",
    )
    .unwrap();
    fails(
        &[
            "witness",
            "serve",
            "--key",
            &p("w.key"),
            "--log",
            &log_vkey,
            "--state",
            &p("s"),
        ],
        "is damaged",
    );
    let serve = |extra: &[&str], want: &str| {
        let (d, k) = (p("log"), p("log.key"));
        let mut a = vec!["log", "serve", "--dir", &d, "--key", &k];
        a.extend_from_slice(extra);
        fails(&a, want);
    };
    let target = format!("http://127.0.0.1:1={w}");
    serve(
        &["--witness", &target, "--witness-quorum", "2"],
        "--witness-quorum 2",
    );
    serve(
        &["--witness", &target, "--witness-quorum", "0"],
        "--witness-quorum 0",
    );
    serve(&["--witness-quorum", "1"], "needs at least one --witness");
    serve(&["--witness", "127.0.0.1:1=x"], "not an http");
    serve(
        &["--witness", &format!("http://127.0.0.1:1={log_vkey}")],
        "cosignature/v1",
    );
    serve(
        &["--witness", &target, "--witness", &target],
        "listed twice",
    );
}
