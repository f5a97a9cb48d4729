//! The Kubernetes manifests (`deploy/kubernetes/`), checked without a cluster: `kubectl
//! kustomize` renders every overlay; every rendered object validates offline against the
//! Kubernetes schemas of the `kubernetes-validate` package (strict), and every pod meets the
//! fleet's rules (`tests/py/k8s_checks.py`: non-root, read-only root filesystem, dropped
//! capabilities, seccomp RuntimeDefault, limits, readiness; nodes with no writable volume and
//! reachable only from gateways). A manifest that breaks a rule is refused (the check can fail).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use tandem_tests::daemon::python;
use tandem_tests::real_model::repo_file;

fn render(overlay: &str) -> String {
    let dir = repo_file(&format!("deploy/kubernetes/overlays/{overlay}"));
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect(
            "kubectl is not installed: run scripts/test-deps.sh (Debian package kubernetes-client)",
        );
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn check(rendered: &str, overlay: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join(format!("{overlay}.yaml"));
    std::fs::write(&f, rendered).unwrap();
    let out = Command::new(python())
        .arg(repo_file("tests/py/k8s_checks.py"))
        .arg(&f)
        .arg(overlay)
        .output()
        .unwrap();
    tandem_tests::procs::outcome(&out)
}

#[test]
fn every_overlay_renders_validates_and_keeps_the_pod_rules() {
    for overlay in ["dev", "prod"] {
        let rendered = render(overlay);
        let (ok, out) = check(&rendered, overlay);
        assert!(
            ok && out.contains(&format!("ok {overlay}")),
            "{overlay}: {out}"
        );
    }
    // Prod nodes use their TPM; dev nodes a software root.
    assert!(render("prod").contains("kind = \"tpm\""));
    assert!(render("dev").contains("kind = \"software\""));
}

#[test]
fn a_manifest_that_breaks_a_rule_is_refused() {
    let rendered = render("dev");
    for (from, to, why) in [
        (
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesystem: false",
            "writable root filesystem",
        ),
        ("type: RuntimeDefault", "type: Unconfined", "seccomp"),
        (
            "automountServiceAccountToken: false",
            "automountServiceAccountToken: true",
            "service account",
        ),
        (
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesystm: true",
            "readOnlyRootFilesystm",
        ),
    ] {
        assert!(rendered.contains(from));
        let (ok, out) = check(&rendered.replace(from, to), "dev");
        assert!(!ok, "accepted with {to:?}: {out}");
        assert!(out.contains(why), "{why:?} not named: {out}");
    }
}
