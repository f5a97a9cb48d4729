//! `tandem-node serve` as a real process: refuses to start when its release is not logged;
//! stateless (read-only empty working directory stays empty, no file it can see changes); a
//! canary prompt never appears in anything it prints; SIGTERM drains an in-flight stream and
//! exits 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use tandem_tests::node::*;

fn bin() -> PathBuf {
    tandem_tests::bins::path("tandem-node")
}

fn serve_cmd(f: &Fleet, cwd: &Path) -> Command {
    let mut c = Command::new(bin());
    tandem_node::node::environ::scrub(&mut c);
    c.arg("serve")
        .arg("--config")
        .arg(&f.config_path)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--identity")
        .arg(&f.identity)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_whose_release_is_not_logged_refuses_to_start() {
    let f = fleet(&bin(), "", false).await;
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = serve_cmd(&f, cwd.path());
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "stderr: {stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).is_empty());
    let want = format!(
        "release {} is not in the log at checkpoint 5",
        f.release.release_digest()
    );
    assert!(stderr.contains(&want), "stderr: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_with_a_tampered_config_refuses_to_start() {
    let f = fleet(&bin(), "", true).await;
    // One byte more in the measured config: the release no longer matches.
    let mut text = std::fs::read(&f.config_path).unwrap();
    text.extend_from_slice(b"\n# edited\n");
    std::fs::write(&f.config_path, text).unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let mut cmd = serve_cmd(&f, cwd.path());
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "stderr: {stderr}");
    assert!(
        stderr.contains("node-config node.toml is sha256:"),
        "stderr: {stderr}"
    );
}

/// Every file under `dirs`: size and modification time. Entries that vanish while it walks
/// (other tests' temporary files) are skipped.
fn snapshot(dirs: &[PathBuf]) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<PathBuf> = dirs.to_vec();
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let Ok(e) = e else { continue };
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            }
            out.insert(e.path(), (m.len(), m.modified().unwrap()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_no_canary_in_output_and_sigterm_drains() {
    const CANARY: &str = "CANARY-q7Zx81-never-log-me";
    let f = fleet(&bin(), "", true).await;
    // An empty working directory the node may not write to (the test may run as root, where
    // the mode does not stop writes; the snapshot below catches any write either way).
    let cwd = tempfile::tempdir().unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(cwd.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let watched = [
        cwd.path().to_owned(),
        f.dir.path().to_owned(),
        device_model(),
        std::env::temp_dir(),
    ];
    let before = snapshot(&watched[..3]);
    let tmp_before: Vec<_> = snapshot(&watched[3..4])
        .into_keys()
        .filter(|p| !p.starts_with(f.dir.path()) && !p.starts_with(cwd.path()))
        .collect();

    let mut child = serve_cmd(&f, cwd.path()).spawn().unwrap();
    let pid = child.id();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut stderr = child.stderr.take().unwrap();
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let (addr, stdout) = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        (line.clone(), stdout)
    })
    .await
    .unwrap();
    let addr = addr
        .trim()
        .strip_prefix("serving ")
        .unwrap_or_else(|| panic!("first stdout line {addr:?}"))
        .parse()
        .unwrap();
    let mut c = connect(addr).await;
    let d = digests();
    let configs = key_configs(&mut c).await;

    // A served request with the canary, with the adapter.
    let prompt = format!("{CANARY} please fix this sentance");
    let (sealed, ctx) = seal(&configs, d.model, Some(d.adapter), &prompt, 16, now());
    let ans = submit(&mut c, sealed, ctx).await.unwrap();
    assert!(ans.receipt.is_some(), "{:?}", ans.error);
    // Rejected requests carrying the canary.
    let big = CANARY.repeat(4000);
    let (sealed, ctx) = seal(&configs, d.model, None, &big, 4, now());
    let e = submit(&mut c, sealed, ctx).await.unwrap_err();
    assert!(!e.message().contains(CANARY));
    let (sealed, ctx) = seal(&configs, d.model, Some([3; 32]), CANARY, 4, now());
    let e = submit(&mut c, sealed, ctx).await.unwrap_err();
    assert!(!e.message().contains(CANARY));

    // SIGTERM while a long stream is in flight: the stream completes, the node exits 0.
    let (sealed, ctx) = seal(
        &configs,
        d.model,
        None,
        &format!("{CANARY} once"),
        200,
        now(),
    );
    let mut c2 = c.clone();
    let long = tokio::spawn(async move { submit(&mut c2, sealed, ctx).await });
    // Soon after the stream starts: the embedded model streams its 200 tokens in about 0.4 s.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let kill = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(kill.success());
    let long = long.await.unwrap().unwrap();
    let receipt = long
        .receipt
        .expect("the in-flight stream finished with a receipt");
    assert!(receipt.completion_tokens > 0);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status}");
    let mut rest = String::new();
    let mut stdout = stdout;
    stdout.read_to_string(&mut rest).unwrap();
    let err_text = err_thread.join().unwrap();

    // Nothing written: same files, sizes and times; the working directory is still empty.
    assert_eq!(snapshot(&watched[..3]), before, "a file changed");
    assert!(std::fs::read_dir(cwd.path()).unwrap().next().is_none());
    let tmp_new: Vec<_> = snapshot(&watched[3..4])
        .into_keys()
        .filter(|p| !p.starts_with(f.dir.path()) && !p.starts_with(cwd.path()))
        .filter(|p| !tmp_before.contains(p))
        .filter(|p| p.to_string_lossy().contains("tandem-node"))
        .collect();
    assert!(tmp_new.is_empty(), "new temp files {tmp_new:?}");

    // No canary (or generated text) in anything printed; stderr is only JSON events.
    let printed = format!("{rest}\n{err_text}");
    assert!(!printed.contains(CANARY), "canary leaked:\n{printed}");
    if ans.text.len() >= 12 {
        assert!(!printed.contains(&ans.text), "output leaked");
    }
    let mut events = Vec::new();
    for line in err_text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON event: {line:?}"));
        events.push(v["event"].as_str().unwrap().to_owned());
        if v["event"] == "drain_start" {
            assert!(
                v["in_flight"].as_u64().unwrap() >= 1,
                "SIGTERM came mid-stream: {line}"
            );
        }
    }
    for want in [
        "node_start",
        "serving",
        "request_done",
        "request_rejected",
        "drain_start",
        "drain_done",
    ] {
        assert!(
            events.iter().any(|e| e == want),
            "no {want} event in {events:?}"
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(cwd.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_is_checked_before_anything_starts() {
    let f = fleet(&bin(), "", true).await;
    let cwd = tempfile::tempdir().unwrap();
    // --check: resolves every file, prints JSON, binds nothing.
    let out = serve_cmd(&f, cwd.path()).arg("--check").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["models"][0]["name"], "device");
    // A bad value: the error names the field.
    let text = std::fs::read_to_string(&f.config_path).unwrap();
    std::fs::write(
        &f.config_path,
        text.replace("key_lifetime_secs = 3600", "key_lifetime_secs = 5"),
    )
    .unwrap();
    let out = serve_cmd(&f, cwd.path()).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("key_lifetime_secs"), "{stderr}");
    // No identity directory: the error says which flag to pass.
    std::fs::write(&f.config_path, &text).unwrap();
    let out = tandem_node::node::environ::scrub(&mut Command::new(bin()))
        .args(["serve", "--config"])
        .arg(&f.config_path)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--identity"), "{stderr}");
}

/// A node whose root of trust is a TPM (swtpm, a real TPM 2.0 simulator): enrolled with
/// `tandem-node tpm-ak`, its attestation key certified by the fleet CA, refused when started
/// without the measured launcher, and started by the real `tandem-launch` executable (after a
/// simulated boot-chain event), it serves evidence that a device policy requiring `tpm2` with
/// that launcher and boot chain accepts (the quote covers PCR 13 and the key configs; the
/// event log replays to it); a policy for software roots only refuses it at step 1, and a
/// policy allowing another launcher at step 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_with_a_tpm_root_serves_tpm_evidence() {
    use base64::Engine as _;
    use tandem_attest::evidence::swtpm::Swtpm;
    if !Swtpm::available() {
        eprintln!(
            "\n!!!!!!!! SKIPPING TPM NODE TEST: `swtpm` is not installed (.ci/run installs it) !!!!!!!!\n"
        );
        return;
    }
    let tpm = Swtpm::start().unwrap();
    let tcti = tpm.tcti();
    // Enrolment: the AK's public key from the CLI, certified by the fleet CA.
    let out = tandem_node::node::environ::scrub(&mut Command::new(bin()))
        .args(["tpm-ak", "--tcti", &tcti, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sec1 = base64::engine::general_purpose::STANDARD
        .decode(v["public_key_sec1_base64"].as_str().unwrap())
        .unwrap();
    let ak = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).unwrap();
    let pem = tandem_node::node::environ::scrub(&mut Command::new(bin()))
        .args(["tpm-ak", "--tcti", &tcti])
        .output()
        .unwrap()
        .stdout;
    assert_eq!(
        p256::pkcs8::DecodePublicKey::from_public_key_pem(std::str::from_utf8(&pem).unwrap()).ok(),
        Some(ak),
        "the PEM and the JSON name the same key"
    );
    let work = tempfile::tempdir().unwrap();
    let ak_path = work.path().join("ak.pem");
    std::fs::write(&ak_path, &pem).unwrap();
    // The fleet CA certifies it with `tandem-fleet ca certify-tpm`.
    let f = fleet_with_root(
        &bin(),
        "",
        true,
        "kind = \"tpm\"\ntcti = \"device:/dev/tpmrm0\"",
        |dir, ca| {
            let ca_key = work.path().join("ca.key.pem");
            std::fs::write(&ca_key, ca.to_pkcs8_pem().unwrap()).unwrap();
            let o = Command::new(tandem_tests::bins::path("tandem-fleet"))
                .args(["ca", "certify-tpm", "--subject", "node-tpm", "--ca-key"])
                .arg(&ca_key)
                .arg("--ak")
                .arg(&ak_path)
                .arg("--out")
                .arg(dir)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        },
    )
    .await;
    let cwd = tempfile::tempdir().unwrap();
    let evlog = work.path().join("run/launch.evlog");
    // Started directly, without the launcher: there is no launch event log, and it says so.
    let out = serve_cmd(&f, cwd.path())
        .arg("--tpm-tcti")
        .arg(&tcti)
        .arg("--tpm-event-log")
        .arg(&evlog)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("must be started by tandem-launch"),
        "{stderr}"
    );
    // The boot chain (simulated: one firmware event) runs before the launcher.
    let firmware = tandem_attest::digest::Sha256Digest::of(b"simulated firmware");
    {
        use tandem_attest::evidence::{EventKind, EventLog, tpm_device};
        let mut ctx = tpm_device::open(&tcti).unwrap();
        let mut log = EventLog::new();
        let e = *log.push(EventKind::BootChain, firmware).unwrap();
        tpm_device::extend_event(&mut ctx, &e).unwrap();
        std::fs::create_dir_all(evlog.parent().unwrap()).unwrap();
        std::fs::write(&evlog, log.encode()).unwrap();
    }
    let launcher = tandem_tests::bins::path("tandem-launch");
    // cargo test sets LD_LIBRARY_PATH for test processes; the launcher refuses loader variables,
    // and the node behavioural ones (RUST_BACKTRACE, …) its config does not pin.
    let mut child = tandem_node::node::environ::scrub(&mut Command::new(&launcher))
        .arg("--tcti")
        .arg(&tcti)
        .arg("--event-log")
        .arg(&evlog)
        .arg("--node")
        .arg(bin())
        .arg("--config")
        .arg(&f.config_path)
        .arg("--release")
        .arg(&f.release_path)
        .arg("--")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--identity")
        .arg(&f.identity)
        .current_dir(cwd.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut stderr = child.stderr.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let Some(addr) = line.trim().strip_prefix("serving ") else {
        let _ = child.kill();
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err);
        panic!("no `serving` line ({line:?}); stderr:\n{err}");
    };
    let mut c = connect(addr.parse().unwrap()).await;
    let doc = attestation_document(&mut c).await;
    let cx = tandem_attest::verify::VerifyContext {
        now: now(),
        ..Default::default()
    };
    let launch = |launcher: &Path| tandem_attest::evidence::LaunchPolicy {
        boot_chain: vec![firmware],
        launchers: vec![tandem_attest::digest::Sha256Digest::of(
            &std::fs::read(launcher).unwrap(),
        )],
    };
    let tpm_only = f
        .policy()
        .with_roots_of_trust(vec!["tpm2".into()])
        .unwrap()
        .with_tpm_launch(launch(&launcher))
        .unwrap();
    // Another launcher allowed (here: the node binary's digest) refuses this node at step 2.
    let other = f
        .policy()
        .with_roots_of_trust(vec!["tpm2".into()])
        .unwrap()
        .with_tpm_launch(launch(&bin()))
        .unwrap();
    let v = tandem_attest::verify::Verifier::new(other).verify_node(&doc, &cx);
    let failed = v.report.first_failure().unwrap();
    assert_eq!(failed.number, 2, "{}", v.report.human());
    assert!(
        failed.detail.contains("is not an allowed launcher"),
        "{}",
        failed.detail
    );
    let v = tandem_attest::verify::Verifier::new(tpm_only).verify_node(&doc, &cx);
    assert!(v.report.passed(), "{}", v.report.human());
    let node = v.node.unwrap();
    assert_eq!(node.root_of_trust(), "tpm2");
    assert_eq!(node.release().digest(), f.release.release_digest());
    let software_only = f
        .policy()
        .with_roots_of_trust(vec!["software".into()])
        .unwrap();
    let v = tandem_attest::verify::Verifier::new(software_only).verify_node(&doc, &cx);
    assert_eq!(v.report.first_failure().map(|s| s.number), Some(1));
    // And it serves: a sealed request to the TPM-attested keys is answered.
    let d = digests();
    let configs = key_configs(&mut c).await;
    let (sealed, ctx) = seal(&configs, d.model, None, "The king said", 4, now());
    let ans = submit(&mut c, sealed, ctx).await.unwrap();
    assert!(ans.receipt.is_some(), "{:?}", ans.error);
    let _ = child.kill();
    let _ = child.wait();
}
