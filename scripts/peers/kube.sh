#!/usr/bin/env bash
# A real Kubernetes control plane on loopback, built from Go modules (no Docker, no
# download sites): etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl
# and kwok (fake Nodes and Pod lifecycles), plus kstatus (GitOps status checks).
#
#   scripts/peers/kube.sh build        build the binaries once (cached, see KPOOL_KUBE_CACHE)
#   scripts/peers/kube.sh start DIR    start a cluster in DIR (DIR/kubeconfig), return when ready
#   scripts/peers/kube.sh stop DIR     stop it (DIR stays, for its logs)
#   scripts/peers/kube.sh up DIR       start, print "ready DIR/kubeconfig", stop when stdin closes
#   scripts/peers/kube.sh bin          print the directory of the built binaries
#   scripts/peers/kube.sh ports N      print N free loopback ports
#
# The API server writes an audit log of every write to DIR/logs/audit.log.
#
# Versions are pinned by the wrapper modules in scripts/peers/kube/{k8s,etcd,kwok} (go.mod
# and go.sum committed). Binaries are cached under $KPOOL_KUBE_CACHE (default
# ~/.cache/kpool/kube) in a directory keyed by those files, so a second run does not
# rebuild. Cold build: see the README's testing section.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MODS="$ROOT/scripts/peers/kube"
KUBE_VERSION=v1.35.4
KUBE_MINOR=35
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

cache_key() {
    { echo "$KUBE_VERSION"; cat "$MODS"/*/go.mod "$MODS"/*/go.sum "$MODS"/kwok/cmd/kstatus/main.go; } \
        | sha256sum | cut -c1-16
}
BIN="${KPOOL_KUBE_CACHE:-$HOME/.cache/kpool/kube}/$KUBE_VERSION-$(cache_key)"
TOOLS=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok kstatus)

log() { echo "kube: $*" >&2; }

build() {
    local missing=0 t
    for t in "${TOOLS[@]}"; do [ -x "$BIN/$t" ] || missing=1; done
    if [ "$missing" = 0 ]; then
        log "binaries cached in $BIN"
        return
    fi
    command -v go >/dev/null || { log "go is not installed (Go 1.25+ is needed to build the control plane)"; exit 1; }
    local tmp="$BIN.tmp.$$" started=$SECONDS ld="" p
    mkdir -p "$tmp"
    # Version stamping as Kubernetes' hack/lib/version.sh does it, so /version is right.
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ld+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$KUBE_MINOR"
        ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
    done
    log "building Kubernetes $KUBE_VERSION (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl)"
    (cd "$MODS/k8s" && go build -trimpath -ldflags "-s -w $ld" -o "$tmp/" \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
    log "building etcd"
    (cd "$MODS/etcd" && go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3)
    log "building kwok and kstatus"
    (cd "$MODS/kwok" && go build -trimpath -ldflags "-s -w" -o "$tmp/kwok" sigs.k8s.io/kwok/cmd/kwok \
        && go build -trimpath -ldflags "-s -w" -o "$tmp/kstatus" ./cmd/kstatus)
    rm -rf "$BIN" && mv "$tmp" "$BIN"
    log "built in $((SECONDS - started)) s: $(du -sh "$BIN" | cut -f1) of binaries in $BIN"
}

free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

certs() {
    local d=$1/pki
    mkdir -p "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=kpool-test-ca" \
        -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
    # kube-apiserver's serving certificate, for the names a client may dial on loopback.
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout "$d/apiserver.key" \
        -out "$d/apiserver.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc,IP:10.96.0.1\nextendedKeyUsage=serverAuth\n' >"$d/apiserver.ext"
    openssl x509 -req -in "$d/apiserver.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
        -days 3650 -extfile "$d/apiserver.ext" -out "$d/apiserver.crt" 2>/dev/null
    # The admin client certificate (group system:masters): tests, kubectl and the components.
    openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kpool-admin" -keyout "$d/admin.key" \
        -out "$d/admin.csr" 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' >"$d/admin.ext"
    openssl x509 -req -in "$d/admin.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
        -days 3650 -extfile "$d/admin.ext" -out "$d/admin.crt" 2>/dev/null
    # Service-account token signing keys (TokenRequest, kube-controller-manager's tokens).
    openssl genrsa -out "$d/sa.key" 2048 2>/dev/null
    openssl rsa -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
}

kubeconfig() {
    local dir=$1 port=$2
    cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kpool-test
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority-data: $(base64 -w0 "$dir/pki/ca.crt")
users:
- name: kpool-admin
  user:
    client-certificate-data: $(base64 -w0 "$dir/pki/admin.crt")
    client-key-data: $(base64 -w0 "$dir/pki/admin.key")
contexts:
- name: kpool-test
  context: {cluster: kpool-test, user: kpool-admin}
current-context: kpool-test
EOF
}

# Starts a process in the background, logging to DIR/logs/NAME.log, its pid in DIR/pids.
spawn() {
    local dir=$1 name=$2
    shift 2
    nohup "$@" >"$dir/logs/$name.log" 2>&1 &
    echo "$! $name" >>"$dir/pids"
}

wait_for() {
    local what=$1 dir=$2 log=$3 i
    shift 3
    for i in $(seq 1 120); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    log "$what did not become ready in 60 s; the last lines of $dir/logs/$log.log:"
    tail -n 30 "$dir/logs/$log.log" >&2 || true
    stop "$dir"
    exit 1
}

start() {
    local dir=$1
    build
    [ -f "$dir/pids" ] && stop "$dir"
    rm -rf "$dir" && mkdir -p "$dir/logs"
    dir=$(cd "$dir" && pwd)
    local started=$SECONDS ports etcd_c etcd_p api kcm sched kwok_p
    ports=$(free_ports 6)
    read -r etcd_c etcd_p api kcm sched kwok_p <<<"$ports"
    certs "$dir"
    kubeconfig "$dir" "$api"
    local kc="$dir/kubeconfig" pki="$dir/pki"

    spawn "$dir" etcd "$BIN/etcd" --name kpool-test --data-dir "$dir/etcd" \
        --listen-client-urls "http://127.0.0.1:$etcd_c" --advertise-client-urls "http://127.0.0.1:$etcd_c" \
        --listen-peer-urls "http://127.0.0.1:$etcd_p" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_p" \
        --initial-cluster "kpool-test=http://127.0.0.1:$etcd_p" --unsafe-no-fsync=true --log-level warn
    wait_for etcd "$dir" etcd curl -sf "http://127.0.0.1:$etcd_c/health"

    # An audit log of every write (who, with which User-Agent, when; kpool's objects with
    # the request body): tests/cluster_crash.rs reads it to tell which controller replica
    # wrote what, and it shows how a status came about when a test fails.
    cat >"$dir/audit-policy.yaml" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Request
  verbs: [create, update, patch, delete]
  resources: [{group: kpool.dev}]
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: None
EOF
    spawn "$dir" kube-apiserver "$BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_c" \
        --audit-policy-file "$dir/audit-policy.yaml" --audit-log-path "$dir/logs/audit.log" \
        --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api" \
        --cert-dir "$dir/apiserver" --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
        --client-ca-file "$pki/ca.crt" --authorization-mode Node,RBAC \
        --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=true \
        --service-account-issuer "https://127.0.0.1:$api" --service-account-key-file "$pki/sa.pub" \
        --service-account-signing-key-file "$pki/sa.key" --enable-priority-and-fairness=false
    wait_for kube-apiserver "$dir" kube-apiserver "$BIN/kubectl" --kubeconfig "$kc" get --raw /readyz

    spawn "$dir" kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig "$kc" \
        --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
        --bind-address 127.0.0.1 --secure-port "$kcm" --leader-elect=false \
        --root-ca-file "$pki/ca.crt" --service-account-private-key-file "$pki/sa.key" \
        --use-service-account-credentials --controllers '*' --cluster-signing-cert-file "$pki/ca.crt" \
        --cluster-signing-key-file "$pki/ca.key"
    spawn "$dir" kube-scheduler "$BIN/kube-scheduler" --kubeconfig "$kc" \
        --authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
        --bind-address 127.0.0.1 --secure-port "$sched" --leader-elect=false
    cat "$MODS"/stages/*.yaml >"$dir/stages.yaml"
    # Node Leases are kwok's heartbeat: without them kube-controller-manager's node
    # lifecycle controller finds the nodes silent and marks their Pods not Ready.
    spawn "$dir" kwok "$BIN/kwok" --kubeconfig "$kc" --manage-all-nodes=false \
        --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
        --server-address "127.0.0.1:$kwok_p" --config "$dir/stages.yaml" \
        --node-lease-duration-seconds 40 --cidr 10.244.0.0/16

    # The default ServiceAccount appears once kube-controller-manager runs: Pods need it.
    wait_for kube-controller-manager "$dir" kube-controller-manager \
        "$BIN/kubectl" --kubeconfig "$kc" -n default get serviceaccount default
    "$BIN/kubectl" --kubeconfig "$kc" apply -f "$MODS/nodes.yaml" >/dev/null
    wait_for "kwok nodes" "$dir" kwok "$BIN/kubectl" --kubeconfig "$kc" wait --for=condition=Ready \
        node --all --timeout=1s
    log "control plane $KUBE_VERSION ready in $((SECONDS - started)) s: KUBECONFIG=$kc"
}

stop() {
    local dir=$1 pid name
    [ -f "$dir/pids" ] || return 0
    tac "$dir/pids" | while read -r pid name; do
        kill "$pid" 2>/dev/null || true
    done
    sleep 1
    tac "$dir/pids" | while read -r pid name; do
        kill -9 "$pid" 2>/dev/null || true
    done
    rm -f "$dir/pids"
}

case "${1:-}" in
    build) build ;;
    bin) echo "$BIN" ;;
    ports) free_ports "${2:?usage: kube.sh ports N}" ;;
    start) start "${2:?usage: kube.sh start DIR}" ;;
    stop) stop "${2:?usage: kube.sh stop DIR}" ;;
    up)
        dir=${2:?usage: kube.sh up DIR}
        start "$dir"
        trap 'stop "$dir"' EXIT
        echo "ready $(cd "$dir" && pwd)/kubeconfig"
        cat >/dev/null || true
        ;;
    *) sed -n '2,16p' "$0" >&2; exit 2 ;;
esac
