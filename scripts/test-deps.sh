#!/usr/bin/env bash
# The Debian packages the tests need: libtss2 (the node's TPM root of trust links it), the
# swtpm TPM simulator (the TPM tests start one), kubectl (the manifest tests render with
# it), dnsmasq (the gateway's DNS discovery test starts one as its DNS server) and iproute2
# (`ip`: the multi-host fleet test makes network namespaces, veth pairs and a bridge). Run as root, this installs whichever are missing; otherwise it stops at once (exit 2)
# and prints the command that installs them.
# Called by scripts/test.sh (the README's test command) and by .ci/run before the lints.
set -euo pipefail

# Keep this list in step with ARCHITECTURE.md, "Test dependencies".
APT_PACKAGES=(pkg-config swtpm swtpm-tools tpm2-tools libtss2-dev dnsmasq-base iproute2)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# `kubectl kustomize` renders the Kubernetes manifests (tests/kubernetes.rs). Any kubectl on
# PATH will do (e.g. the Kubernetes project's own packages); Debian's is kubernetes-client.
command -v kubectl >/dev/null || missing+=(kubernetes-client)
((${#missing[@]})) || exit 0

if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "scripts/test-deps.sh: installing the test dependencies: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "scripts/test-deps.sh: the tests need these Debian packages, which are not installed: ${missing[*]}" >&2
  echo "install them with:" >&2
  echo "  sudo apt-get install --no-install-recommends ${missing[*]}" >&2
  exit 2
fi
