"""Checks rendered Kubernetes manifests (deploy/kubernetes/, rendered by `kubectl kustomize`)
offline: every object validates against the Kubernetes OpenAPI schemas shipped in the
`kubernetes-validate` package (strict: unknown fields are errors), and every pod meets the
rules deploy/README.md states for Tandem's fleet.

  k8s_checks.py RENDERED.yaml OVERLAY

Prints `ok OVERLAY: N objects` or raises.
"""

import sys

import kubernetes_validate
import yaml

K8S_VERSION = "1.32"


def pod_specs(doc):
    kind = doc["kind"]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]
    elif kind == "Pod":
        yield doc["metadata"]["name"], doc["spec"]


def check_pod(name, spec, node):
    psc = spec.get("securityContext", {})
    assert spec.get("automountServiceAccountToken") is False, f"{name}: service account token mounted"
    assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: seccomp not RuntimeDefault"
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), f"{name}: host namespaces"
    for v in spec.get("volumes", []):
        assert "hostPath" not in v, f"{name}: hostPath volume {v['name']}"
    for c in spec["containers"]:
        csc = c.get("securityContext", {})
        who = f"{name}/{c['name']}"
        assert csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{who}: may run as root"
        assert csc.get("allowPrivilegeEscalation") is False, f"{who}: privilege escalation allowed"
        assert not csc.get("privileged"), f"{who}: privileged"
        assert csc.get("readOnlyRootFilesystem") is True, f"{who}: writable root filesystem"
        assert csc.get("capabilities", {}).get("drop") == ["ALL"], f"{who}: capabilities not dropped"
        limits = c.get("resources", {}).get("limits", {})
        assert "cpu" in limits and "memory" in limits, f"{who}: no cpu/memory limits"
        assert c.get("readinessProbe"), f"{who}: no readiness probe"
        if node:
            # Nodes are stateless: no writable volume of any kind.
            by_name = {v["name"]: v for v in spec.get("volumes", [])}
            for m in c.get("volumeMounts", []):
                assert m.get("readOnly") is True, f"{who}: writable mount {m['mountPath']}"
                v = by_name[m["name"]]
                assert "configMap" in v or "secret" in v, f"{who}: volume {m['name']} is not a ConfigMap or Secret"
    if node:
        assert "volumeClaimTemplates" not in spec


def main():
    path, overlay = sys.argv[1], sys.argv[2]
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    kinds = {}
    for d in docs:
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)
        kinds.setdefault(d["kind"], []).append(d["metadata"]["name"])
    for want in ("Namespace", "StatefulSet", "Deployment", "Service", "NetworkPolicy", "ConfigMap"):
        assert want in kinds, f"{overlay}: no {want}"
    nodes = 0
    for d in docs:
        for name, spec in pod_specs(d):
            node = name == "tandem-node"
            nodes += node
            check_pod(name, spec, node)
        if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "tandem-node":
            assert "volumeClaimTemplates" not in d["spec"], "nodes must not have persistent volumes"
        if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "tandem-log":
            assert d["spec"]["replicas"] == 1, "the log has one writer"
            assert d["spec"].get("volumeClaimTemplates"), "the log keeps its state on a PVC"
    assert nodes == 1, f"{overlay}: expected one node workload, found {nodes}"
    # Nodes accept only gateways.
    pol = [d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "tandem-node"]
    assert pol, "no NetworkPolicy for nodes"
    ingress = pol[0]["spec"]["ingress"]
    sources = [f for rule in ingress for f in rule.get("from", [])]
    assert sources and all(
        f.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name") == "tandem-gateway"
        and "namespaceSelector" not in f and "ipBlock" not in f
        for f in sources
    ), f"nodes accept more than gateways: {ingress}"
    assert any(d["kind"] == "NetworkPolicy" and d["spec"]["podSelector"] == {} for d in docs), "no default deny"
    print(f"ok {overlay}: {len(docs)} objects")


if __name__ == "__main__":
    main()
