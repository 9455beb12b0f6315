#!/usr/bin/env bash
# One real Node for the control plane of scripts/peers/kube.sh: a kubelet (built from the same
# k8s.io/kubernetes wrapper module) on containerd + runc from Debian, so Pods really run,
# with images built locally (no registry: images are imported, Pods use
# imagePullPolicy: Never). Needs root (cgroups, mounts, network namespaces). One real node
# per machine (a fixed CNI bridge and subnet).
#
#   scripts/peers/kube-node.sh build             build the kubelet and the pause image once
#                                                (cached beside kube.sh's binaries) and apt-get
#                                                containerd, runc, CNI plugins, podman if missing
#   scripts/peers/kube-node.sh start DIR [NAME]  join node NAME (default kpool-real-node) to the
#                                                cluster in DIR (kube.sh start DIR); state and
#                                                logs in DIR/node-NAME; return when it is Ready
#   scripts/peers/kube-node.sh stop DIR [NAME]   stop it, delete the Node, clean up its
#                                                containers, mounts, cgroups, netns
#   scripts/peers/kube-node.sh import DIR IMAGE [NAME]
#                                                load IMAGE into the node's containerd: a tar
#                                                from `podman save`/`docker save`, or a name in
#                                                podman's vfs storage (e.g. localhost/kpool:test)
#   scripts/peers/kube-node.sh busybox           build the busybox image of smoke (FROM
#                                                scratch, kept in podman's storage) unless it
#                                                is there; print its name
#   scripts/peers/kube-node.sh smoke DIR [NAME]  build the busybox image, import it, run a
#                                                Pod on the node, check its log
#
# start wipes DIR/node-NAME, containerd's image store included: import images after it. Stop
# the node before kube.sh stops or restarts the cluster in the same DIR.
#
# The node registers with the taint kpool.dev/real-node=true:NoSchedule, so only Pods that
# tolerate it land there. Its kubelet serves on 127.0.0.1 with anonymous access allowed (the
# API server dials it for logs/exec without a client certificate); NAME resolves through a
# line in /etc/hosts that stop removes. Pods get addresses on a bridge (no kube-proxy, so
# Service IPs do not route); a Pod that must reach the API server (bound to 127.0.0.1) uses
# hostNetwork: true with KUBERNETES_SERVICE_HOST=127.0.0.1 and KUBERNETES_SERVICE_PORT set.
#
# What this machine needs, found by trying (cgroup v1 hybrid, no swap, oom_score_adj cannot
# go below 0 even as root): failCgroupV1: false; containerd's restrict_oom_score_adj (else
# every sandbox fails in runc with "can't get final child's PID from pipe: EOF", runc's log
# saying "failed to update /proc/self/oom_score_adj: Permission denied" for -998); the
# kubelet's own oomScoreAdj 0; a pause image built here from pause.c (the sandbox image
# cannot be pulled); a cgroupRoot created beforehand in every v1 hierarchy.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MODS="$ROOT/scripts/peers/kube"
KUBE_VERSION=v1.35.4
KUBE_MINOR=35
PAUSE_IMAGE=localhost/kpool/pause:3.10
BUSYBOX_IMAGE=localhost/kpool/busybox:local
TAINT=kpool.dev/real-node
BRIDGE=kpoolcni0
POD_SUBNET=10.244.250.0/24
export GOTOOLCHAIN=local CGO_ENABLED=0

# The kubelet imports two modules the control plane does not: their go.sum lines, pinned here
# so the shared k8s/go.sum (and kube.sh's cache key) stays as it is.
EXTRA_SUMS='github.com/armon/circbuf v0.0.0-20190214190532-5111143e8da2 h1:7Ip0wMmLHLRJdrloDxZfhMm0xrLXZS8+COSu2bXmEQs=
github.com/armon/circbuf v0.0.0-20190214190532-5111143e8da2/go.mod h1:3U/XgcO3hCbHZ8TKRvWD2dDTCfh9M9ya+I9JpbB7O8o=
go.opentelemetry.io/contrib/instrumentation/github.com/emicklei/go-restful/otelrestful v0.44.0 h1:KemlMZlVwBSEGaO91WKgp41BBFsnWqqj9sKRwmOqC40=
go.opentelemetry.io/contrib/instrumentation/github.com/emicklei/go-restful/otelrestful v0.44.0/go.mod h1:uq8DrRaen3suIWTpdR/JNHCGpurSvMv9D5Nr5CU5TXc='

log() { echo "kube-node: $*" >&2; }
die() { log "$*"; exit 1; }
BIN=$("$ROOT/scripts/peers/kube.sh" bin)
KUBECTL="$BIN/kubectl"
podman_() { podman --storage-driver vfs "$@"; }

need_root() { [ "$(id -u)" = 0 ] || die "a real node needs root (cgroups, mounts, network namespaces)"; }

packages() {
    local missing=() p
    command -v containerd >/dev/null || missing+=(containerd)
    command -v runc >/dev/null || missing+=(runc)
    [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
    command -v podman >/dev/null || missing+=(podman)
    command -v gcc >/dev/null || missing+=(gcc libc6-dev)
    [ -e /usr/lib/x86_64-linux-gnu/libc.a ] || [ -e /usr/lib/aarch64-linux-gnu/libc.a ] || missing+=(libc6-dev)
    for p in ip openssl; do command -v $p >/dev/null || die "$p is missing"; done
    [ ${#missing[@]} = 0 ] && return
    log "installing ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

build() {
    need_root
    packages
    "$ROOT/scripts/peers/kube.sh" build
    local started=$SECONDS
    if [ ! -x "$BIN/kubelet" ]; then
        command -v go >/dev/null || die "go is not installed"
        local mod ld="" p
        mod=$(mktemp -d)
        cp "$MODS/k8s/go.mod" "$MODS/k8s/go.sum" "$mod/"
        printf '%s\n' "$EXTRA_SUMS" >>"$mod/go.sum"
        for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
            ld+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$KUBE_MINOR"
            ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
        done
        log "building kubelet $KUBE_VERSION"
        (cd "$mod" && GOFLAGS=-mod=readonly go build -trimpath -ldflags "-s -w $ld" \
            -o "$BIN/kubelet.tmp" k8s.io/kubernetes/cmd/kubelet)
        mv "$BIN/kubelet.tmp" "$BIN/kubelet"
        rm -rf "$mod"
    fi
    if [ ! -f "$BIN/pause.tar" ]; then
        # Kubernetes' own pause.c, from the module cache, as a static binary on scratch.
        local src ctx
        src="$(go env GOMODCACHE)/k8s.io/kubernetes@$KUBE_VERSION/build/pause/linux/pause.c"
        ctx=$(mktemp -d)
        gcc -Os -static -DVERSION=$KUBE_VERSION-kpool -o "$ctx/pause" "$src"
        strip "$ctx/pause"
        printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$ctx/Containerfile"
        podman_ build -q --isolation chroot -t "$PAUSE_IMAGE" "$ctx" >/dev/null
        podman_ save -q -o "$BIN/pause.tar.tmp" "$PAUSE_IMAGE"
        mv "$BIN/pause.tar.tmp" "$BIN/pause.tar"
        rm -rf "$ctx"
    fi
    log "kubelet and pause image ready in $BIN ($((SECONDS - started)) s)"
}

# Sets the globals of node NAME of cluster DIR.
node_paths() {
    CLUSTER=$(cd "${1:?cluster DIR}" && pwd)
    NAME=${2:-kpool-real-node}
    D="$CLUSTER/node-$NAME"
    SOCK="$D/containerd.sock"
    CTR=(ctr --address "$SOCK" --namespace k8s.io)
    KC=(--kubeconfig "$CLUSTER/kubeconfig")
    CGROUP="kpool-node-$NAME"
}

spawn() {
    local name=$1
    shift
    nohup "$@" >"$D/logs/$name.log" 2>&1 &
    echo "$! $name" >>"$D/pids"
}

wait_for() {
    local what=$1 secs=$2 i
    shift 2
    for i in $(seq 1 $((secs * 2))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    log "$what did not become ready in $secs s; the last lines of $D/logs:"
    tail -n 20 "$D"/logs/*.log >&2 || true
    stop_node
    exit 1
}

# Succeeds when node $1 carries none of the taints the node lifecycle controller sets on
# a node that is not (yet) Ready or reachable.
untainted() {
    local keys
    keys=$("$KUBECTL" "${KC[@]}" get node "$1" -o 'jsonpath={.spec.taints[*].key}') || return 1
    case " $keys " in
    *" node.kubernetes.io/not-ready "* | *" node.kubernetes.io/unreachable "*) return 1 ;;
    esac
}

start() {
    need_root
    node_paths "$@"
    [ -f "$CLUSTER/kubeconfig" ] && [ -f "$CLUSTER/pki/ca.key" ] || die "no cluster in $CLUSTER (kube.sh start DIR)"
    [ ${#SOCK} -lt 100 ] || die "socket path too long for a unix socket: $SOCK"
    build
    [ -f "$D/pids" ] && stop_node
    rm -rf "$D" && mkdir -p "$D/logs" "$D/pki" "$D/cni/net.d" "$D/kubelet"
    local started=$SECONDS kport hport node_ip server h
    read -r kport hport <<<"$("$ROOT/scripts/peers/kube.sh" ports 2)"
    node_ip=$(ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')
    [ -n "$node_ip" ] || node_ip=$(ip -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1 | head -n1)
    [ -n "$node_ip" ] || die "no non-loopback IPv4 address for the node (the kubelet refuses loopback)"

    # Client certificate of the node (Node authorizer: system:node:NAME in system:nodes).
    openssl req -newkey rsa:2048 -nodes -subj "/O=system:nodes/CN=system:node:$NAME" \
        -keyout "$D/pki/kubelet.key" -out "$D/pki/kubelet.csr" 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' >"$D/pki/client.ext"
    openssl x509 -req -in "$D/pki/kubelet.csr" -CA "$CLUSTER/pki/ca.crt" -CAkey "$CLUSTER/pki/ca.key" \
        -CAcreateserial -CAserial "$D/pki/ca.srl" -days 365 -extfile "$D/pki/client.ext" \
        -out "$D/pki/kubelet.crt" 2>/dev/null
    server=$(sed -n 's/^ *server: *//p' "$CLUSTER/kubeconfig" | head -n1)
    cat >"$D/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "$server", certificate-authority: "$CLUSTER/pki/ca.crt"}
users:
- name: node
  user: {client-certificate: "$D/pki/kubelet.crt", client-key: "$D/pki/kubelet.key"}
contexts:
- name: c
  context: {cluster: c, user: node}
current-context: c
EOF

    cat >"$D/containerd.toml" <<EOF
version = 2
root = "$D/containerd/root"
state = "$D/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.internal.v1.opt"]
[grpc]
  address = "$SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$D/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$D/cni/net.d"
EOF
    cat >"$D/cni/net.d/10-kpool.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "kpool", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_SUBNET"}]], "dataDir": "$D/cni/ipam"}},
  {"type": "loopback"}
]}
EOF
    spawn containerd containerd --config "$D/containerd.toml"
    wait_for containerd 30 "${CTR[@]}" version
    "${CTR[@]}" images import "$BIN/pause.tar" >/dev/null

    # The kubelet's cgroupRoot must exist in every v1 hierarchy (cpuset needs cpus and mems).
    [ -e /sys/fs/cgroup/cgroup.controllers ] && mkdir -p "/sys/fs/cgroup/$CGROUP"
    for h in /sys/fs/cgroup/*/; do
        [ -e "${h}cgroup.procs" ] && [ ! -e "${h}cgroup.controllers" ] || continue
        mkdir -p "$h$CGROUP"
    done
    if [ -e /sys/fs/cgroup/cpuset/cpuset.cpus ]; then
        cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$CGROUP/cpuset.cpus"
        cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$CGROUP/cpuset.mems"
    fi
    # The API server dials the kubelet by the node's Hostname address first.
    grep -q "# kpool-node $NAME\$" /etc/hosts || echo "127.0.0.1 $NAME # kpool-node $NAME" >>/etc/hosts

    cat >"$D/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP
containerRuntimeEndpoint: unix://$SOCK
address: 127.0.0.1
port: $kport
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $hport
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
registerWithTaints:
- {key: $TAINT, value: "true", effect: NoSchedule}
podLogsDir: $D/pod-logs
oomScoreAdj: 0
failSwapOn: false
resolvConf: ""
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {}
enforceNodeAllocatable: []
localStorageCapacityIsolation: false
EOF
    spawn kubelet "$BIN/kubelet" --config "$D/kubelet.yaml" --kubeconfig "$D/kubeconfig" \
        --hostname-override "$NAME" --node-ip "$node_ip" --root-dir "$D/kubelet" \
        --cert-dir "$D/kubelet/pki" -v 1
    wait_for "node $NAME" 90 "$KUBECTL" "${KC[@]}" wait --for=condition=Ready "node/$NAME" --timeout=1s
    # Ready is not yet schedulable: the node lifecycle controller lifts the
    # node.kubernetes.io/not-ready taint a few seconds later; until then the scheduler (and
    # kpool's kubernetes backend) passes the node over.
    wait_for "node $NAME without the not-ready taint" 60 untainted "$NAME"
    log "node $NAME ready in $((SECONDS - started)) s (taint $TAINT=true:NoSchedule; logs in $D/logs)"
}

stop_node() {
    [ -d "$D" ] || return 0
    local pid name c ns
    "$KUBECTL" "${KC[@]}" delete node "$NAME" --ignore-not-found --wait=false >/dev/null 2>&1 || true
    if [ -f "$D/pids" ]; then
        # The kubelet first, then every container it left, then containerd.
        grep ' kubelet$' "$D/pids" | while read -r pid name; do kill "$pid" 2>/dev/null || true; done
        sleep 1
        if [ -S "$SOCK" ]; then
            for c in $("${CTR[@]}" tasks ls -q 2>/dev/null); do
                "${CTR[@]}" tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
            done
            sleep 1
            for c in $("${CTR[@]}" containers ls -q 2>/dev/null); do
                ns=$("${CTR[@]}" containers info "$c" 2>/dev/null \
                    | python3 -c 'import json,sys; [print(n.get("path","")) for n in json.load(sys.stdin)["Spec"]["linux"]["namespaces"] if n["type"]=="network"]' 2>/dev/null || true)
                "${CTR[@]}" tasks delete -f "$c" >/dev/null 2>&1 || true
                "${CTR[@]}" containers delete "$c" >/dev/null 2>&1 || true
                if [ -n "$ns" ] && [ -e "$ns" ]; then umount "$ns" 2>/dev/null || true; rm -f "$ns"; fi
            done
        fi
        tac "$D/pids" | while read -r pid name; do kill "$pid" 2>/dev/null || true; done
        sleep 1
        tac "$D/pids" | while read -r pid name; do kill -9 "$pid" 2>/dev/null || true; done
        rm -f "$D/pids"
    fi
    # Mounts left under the node's directory (overlay rootfs, shm, volumes), deepest first.
    awk -v d="$D/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done
    ip link del "$BRIDGE" 2>/dev/null || true
    find /var/log/containers -maxdepth 1 -lname "$D/*" -delete 2>/dev/null || true
    for h in /sys/fs/cgroup/*/"$CGROUP" "/sys/fs/cgroup/$CGROUP"; do
        [ -d "$h" ] && find "$h" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
    sed -i "/# kpool-node $NAME\$/d" /etc/hosts
    # containerd 1.6 keeps shim sockets and fifos under /run/containerd whatever its state dir.
    rmdir /run/containerd/s /run/containerd/fifo /run/containerd 2>/dev/null || true
}

stop() {
    need_root
    node_paths "$@"
    stop_node
    log "node $NAME stopped (its files stay in $D)"
}

# import DIR IMAGE [NAME]
import_image() {
    local cluster=${1:?usage: kube-node.sh import DIR IMAGE [NAME]} image=${2:?usage: kube-node.sh import DIR IMAGE [NAME]}
    node_paths "$cluster" "${3:-}"
    [ -S "$SOCK" ] || die "node $NAME is not running ($SOCK)"
    if [ -f "$image" ]; then
        "${CTR[@]}" images import --all-platforms "$image"
    else
        local tar
        tar=$(mktemp --suffix=.tar)
        rm -f "$tar"
        podman_ save -q -o "$tar" "$image"
        "${CTR[@]}" images import --all-platforms "$tar"
        rm -f "$tar"
    fi
}

busybox_image() {
    if ! podman_ image exists "$BUSYBOX_IMAGE"; then
        local ctx
        ctx=$(mktemp -d)
        # A static busybox (Debian's busybox-static) is the whole image: nothing else on scratch.
        if ! [ -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then
            apt-get update -qq >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null
        fi
        cp /bin/busybox "$ctx/busybox"
        printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox","--install","-s","/bin"]\nENTRYPOINT ["/bin/sh"]\n' >"$ctx/Containerfile"
        podman_ build -q --isolation chroot -t "$BUSYBOX_IMAGE" "$ctx" >/dev/null
        rm -rf "$ctx"
    fi
    echo "$BUSYBOX_IMAGE"
}

smoke() {
    need_root
    node_paths "$@"
    local ns=kpool-node-smoke started=$SECONDS
    busybox_image >/dev/null
    import_image "$CLUSTER" "$BUSYBOX_IMAGE" "$NAME" >/dev/null
    "$KUBECTL" "${KC[@]}" delete namespace "$ns" --ignore-not-found >/dev/null
    "$KUBECTL" "${KC[@]}" create namespace "$ns" >/dev/null
    "$KUBECTL" "${KC[@]}" -n "$ns" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: smoke}
spec:
  nodeName: $NAME
  restartPolicy: Never
  tolerations: [{key: $TAINT, operator: Exists, effect: NoSchedule}]
  containers:
  - name: smoke
    image: $BUSYBOX_IMAGE
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "echo smoke ok; cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo"]
EOF
    "$KUBECTL" "${KC[@]}" -n "$ns" wait --for=jsonpath='{.status.phase}'=Succeeded pod/smoke --timeout=120s >/dev/null \
        || { "$KUBECTL" "${KC[@]}" -n "$ns" describe pod smoke >&2; die "the smoke Pod did not succeed"; }
    local out
    out=$("$KUBECTL" "${KC[@]}" -n "$ns" logs smoke)
    [ "$out" = "smoke ok
$ns" ] || die "unexpected log from the smoke Pod: $out"
    "$KUBECTL" "${KC[@]}" delete namespace "$ns" --wait=false >/dev/null
    log "a Pod ran on $NAME with a local image and its log was read back ($((SECONDS - started)) s)"
}

# Not root: run as root through passwordless sudo where there is one (HOME and PATH kept,
# so Go, its caches and kube.sh's binaries are the caller's).
if [ "$(id -u)" != 0 ] && [ -n "${1:-}" ] && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    exec sudo -n --preserve-env=HOME,PATH,GOPATH,GOCACHE,GOMODCACHE,KPOOL_KUBE_CACHE "$0" "$@"
fi

case "${1:-}" in
    build) build ;;
    start) shift; start "${1:?usage: kube-node.sh start DIR [NAME]}" "${2:-}" ;;
    stop) shift; stop "${1:?usage: kube-node.sh stop DIR [NAME]}" "${2:-}" ;;
    import) shift; import_image "$@" ;;
    busybox) busybox_image ;;
    smoke) shift; smoke "${1:?usage: kube-node.sh smoke DIR [NAME]}" "${2:-}" ;;
    *) sed -n '2,34p' "$0" >&2; exit 2 ;;
esac
