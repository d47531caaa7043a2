#!/usr/bin/env bash
# Static checks of deploy/, with the tools this machine can install (no Docker
# engine or cluster needed); run by .ci/run after the build:
#   deploy/check.sh PATH/TO/winback
# - the image's engine config, laid out as the image lays it out, by `winback validate`;
# - the Dockerfile by BuildKit's parser and linter, the compose file by
#   compose-go against the Compose Specification (deploy/check/, Go);
# - the Kubernetes manifests rendered by kustomize and validated against the
#   Kubernetes API schemas (kubernetes-validate, from PyPI);
# - the Grafana dashboard queries only metrics winback exports.
set -euo pipefail
cd "$(dirname "$0")/.."
winback="${1:?usage: deploy/check.sh PATH/TO/winback}"
tools="${XDG_CACHE_HOME:-$HOME/.cache}/winback-tools"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== deploy: the image's engine config"
cp config/winback-90d.toml config/winback-filter-coupon.toml deploy/winback.toml "$tmp/"
cp -r config/coupons "$tmp/coupons"
"$winback" validate --config "$tmp/winback.toml"

echo "== deploy: Dockerfile and compose file"
(cd deploy/check && go run . ../Dockerfile ../compose.yaml)

echo "== deploy: Kubernetes manifests"
if command -v kubectl >/dev/null 2>&1; then
  kustomize=(kubectl kustomize)
else
  GOBIN="$tools/bin" go install sigs.k8s.io/kustomize/kustomize/v5@v5.5.0
  kustomize=("$tools/bin/kustomize" build)
fi
"${kustomize[@]}" --load-restrictor LoadRestrictionsNone deploy/k8s > "$tmp/k8s.yaml"
if [ ! -x "$tools/venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet kubernetes-validate==1.31.0
fi
"$tools/venv/bin/kubernetes-validate" --strict --kubernetes-version 1.31.0 "$tmp/k8s.yaml"
# The pods' /etc/winback as the ConfigMap volume lays it out, validated.
"$tools/venv/bin/python" - "$tmp/k8s.yaml" "$tmp/pod" <<'PY'
import os, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
data = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
sts = next(d for d in docs if d["kind"] == "StatefulSet")
vol = next(v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
for item in vol["configMap"]["items"]:
    path = os.path.join(sys.argv[2], item["path"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").write(data[item["key"]])
PY
"$winback" validate --config "$tmp/pod/winback.toml"

echo "== deploy: Grafana dashboard"
python3 deploy/check/metric_names.py
