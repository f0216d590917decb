#!/usr/bin/env bash
# envtest.sh — build and run a loopback-only etcd + kube-apiserver pair for
# the Rust integration tests.
#
#   envtest.sh install   build kube-apiserver + etcd from the Go modules pinned
#                        in go.mod/go.sum (cached per Kubernetes version)
#   envtest.sh up        start etcd + kube-apiserver on 127.0.0.1, free ports
#   envtest.sh down      stop exactly what `up` started, remove its data
#   envtest.sh status    say whether it is up, the ports and the kubeconfig
#   envtest.sh env       print export lines: eval "$(envtest.sh env)"
#
# Environment:
#   XDG_CACHE_HOME            binary cache root (default ~/.cache)
#   ENVTEST_STATE_DIR         state dir (default ${XDG_RUNTIME_DIR:-/tmp}/atlas-access-operator-envtest)
#   ENVTEST_START_TIMEOUT     seconds to wait for /readyz (default 120)
#   GO                        go binary to use (default: go on PATH, then /usr/local/go/bin/go)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
readonly SCRIPT_DIR
readonly SERVICE_CIDR="10.0.0.0/24"
readonly UNPRIVILEGED_USER="operator-test"

K8S_VERSION="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ { print $2; exit }' "$SCRIPT_DIR/go.mod")"
ETCD_VERSION="$(awk '$1 == "go.etcd.io/etcd/server/v3" && $2 ~ /^v/ { print $2; exit }' "$SCRIPT_DIR/go.mod")"
[[ -n "$K8S_VERSION" && -n "$ETCD_VERSION" ]] || { echo "envtest: cannot read pinned versions from $SCRIPT_DIR/go.mod" >&2; exit 1; }
readonly K8S_VERSION ETCD_VERSION

CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/atlas-access-operator/envtest/$K8S_VERSION"
STATE_DIR="${ENVTEST_STATE_DIR:-${XDG_RUNTIME_DIR:-/tmp}/atlas-access-operator-envtest}"
readonly CACHE_DIR STATE_DIR
readonly APISERVER_BIN="$CACHE_DIR/kube-apiserver" ETCD_BIN="$CACHE_DIR/etcd" STAMP_FILE="$CACHE_DIR/stamp"

log() { printf 'envtest: %s\n' "$*" >&2; }
die() { printf 'envtest: error: %s\n' "$*" >&2; exit 1; }

# Milliseconds since the epoch (bash 5 has EPOCHREALTIME; fall back to seconds).
now_ms() {
  if [[ -n "${EPOCHREALTIME:-}" ]]; then
    local t="${EPOCHREALTIME/[.,]/}"
    echo "${t:0:${#t}-3}"
  else
    echo "$(($(date +%s) * 1000))"
  fi
}
elapsed() { # start_ms -> "12.345s"
  local d=$(($(now_ms) - $1))
  printf '%d.%03ds' $((d / 1000)) $((d % 1000))
}

sha256() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum | cut -d' ' -f1
  else shasum -a 256 | cut -d' ' -f1; fi
}

# The stamp names everything that determines the binaries' content.
build_stamp() {
  {
    echo "recipe=2"
    cat "$SCRIPT_DIR/go.mod" "$SCRIPT_DIR/go.sum"
  } | sha256
}

find_go() {
  if [[ -n "${GO:-}" ]]; then command -v "$GO"; return; fi
  command -v go 2>/dev/null && return 0
  [[ -x /usr/local/go/bin/go ]] && { echo /usr/local/go/bin/go; return 0; }
  return 1
}

# ---------------------------------------------------------------- install --

cmd_install() {
  local t0 stamp
  t0="$(now_ms)"
  stamp="$(build_stamp)"
  if [[ -x "$APISERVER_BIN" && -x "$ETCD_BIN" && -f "$STAMP_FILE" && "$(cat "$STAMP_FILE")" == "$stamp" ]]; then
    log "kube-apiserver $K8S_VERSION + etcd $ETCD_VERSION already installed in $CACHE_DIR ($(elapsed "$t0"))"
    return 0
  fi

  local go
  go="$(find_go)" || die "'go' not found. Install Go >= 1.26 (https://go.dev/doc/install: unpack the release tarball into /usr/local and add /usr/local/go/bin to PATH), or set GO=/path/to/go. Any Go >= 1.21 also works: it fetches the go1.26 toolchain through the Go module proxy (GOTOOLCHAIN=auto). Debian's golang-go (1.19) is too old."
  log "building kube-apiserver $K8S_VERSION and etcd $ETCD_VERSION with $("$go" version) (first build: ~5 min and ~2.5 GiB RAM on 2 cores)"

  mkdir -p "$CACHE_DIR"
  # One builder at a time per version.
  exec 9>"$CACHE_DIR/.lock"
  if command -v flock >/dev/null 2>&1; then flock 9; fi
  if [[ -x "$APISERVER_BIN" && -x "$ETCD_BIN" && -f "$STAMP_FILE" && "$(cat "$STAMP_FILE")" == "$stamp" ]]; then
    log "installed concurrently by another process ($(elapsed "$t0"))"
    return 0
  fi

  local build_date
  build_date="$(cd "$SCRIPT_DIR" && "$go" list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes 2>/dev/null || echo 1970-01-01T00:00:00Z)"
  local minor="${K8S_VERSION#v*.}"; minor="${minor%%.*}"
  local major="${K8S_VERSION#v}"; major="${major%%.*}"
  local ldflags="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitCommit= -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
  done

  local tmp
  tmp="$(mktemp -d "$CACHE_DIR/.build.XXXXXX")"
  # shellcheck disable=SC2064 # expand now: tmp is local
  trap "rm -rf '$tmp'" EXIT
  local t1
  t1="$(now_ms)"
  (
    cd "$SCRIPT_DIR"
    export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=readonly"
    "$go" mod download
    log "modules downloaded ($(elapsed "$t1"))"
    "$go" build -trimpath -ldflags "$ldflags" -o "$tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
    log "kube-apiserver built ($(elapsed "$t1"))"
    "$go" build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3
    log "etcd built ($(elapsed "$t1"))"
  ) || die "build failed (see the go output above)"

  rm -f "$STAMP_FILE"
  mv -f "$tmp/kube-apiserver" "$APISERVER_BIN"
  mv -f "$tmp/etcd" "$ETCD_BIN"
  echo "$stamp" >"$STAMP_FILE"
  rm -rf "$tmp"
  trap - EXIT
  log "installed into $CACHE_DIR in $(elapsed "$t0")"
  ls -l "$APISERVER_BIN" "$ETCD_BIN" >&2
}

# ------------------------------------------------------------------ state --

state_file() { echo "$STATE_DIR/state.env"; }

state_get() { # KEY -> value from state.env (the last one written wins)
  local f key val found="" out=""
  f="$(state_file)"
  [[ -f "$f" ]] || return 1
  while IFS='=' read -r key val; do
    if [[ "$key" == "$1" ]]; then out="$val"; found=1; fi
  done <"$f"
  [[ -n "$found" ]] || return 1
  printf '%s\n' "$out"
}

# Identity of a live process: start time + executable, so a recycled pid
# is never mistaken for ours.
proc_identity() {
  local pid="$1"
  if [[ -r "/proc/$pid/stat" ]]; then
    local stat exe
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }" # drop "pid (comm) "; starttime is then field 20
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
    exe="${exe% (deleted)}"
    # shellcheck disable=SC2086
    set -- $stat
    echo "${20}:${exe}"
  else
    local out
    out="$(ps -o lstart= -o comm= -p "$pid" 2>/dev/null)" || return 1
    [[ -n "$out" ]] || return 1
    echo "$out" | tr -s ' ' '_'
  fi
}

# Is the process recorded under NAME (etcd | kube-apiserver) still ours and alive?
proc_alive() {
  local name="$1" pid ident
  pid="$(state_get "${name//-/_}_pid" 2>/dev/null)" || return 1
  ident="$(state_get "${name//-/_}_ident" 2>/dev/null)" || return 1
  [[ -n "$pid" ]] || return 1
  [[ "$(proc_identity "$pid" 2>/dev/null || true)" == "$ident" ]]
}

is_up() { proc_alive etcd && proc_alive kube-apiserver; }

stop_proc() {
  local name="$1" pid ident i
  pid="$(state_get "${name//-/_}_pid" 2>/dev/null)" || return 0
  ident="$(state_get "${name//-/_}_ident" 2>/dev/null)" || return 0
  if [[ -z "$pid" || "$(proc_identity "$pid" 2>/dev/null || true)" != "$ident" ]]; then
    log "$name (pid ${pid:-?}) is not running"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    [[ "$(proc_identity "$pid" 2>/dev/null || true)" == "$ident" ]] || { log "stopped $name (pid $pid)"; return 0; }
    # A zombie child of ours (only when up and down share a shell) is gone too.
    [[ -r "/proc/$pid/stat" ]] && [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" == Z ]] && { log "stopped $name (pid $pid)"; return 0; }
    sleep 0.1
  done
  log "$name (pid $pid) did not stop after 10s; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  sleep 0.2
}

# ------------------------------------------------------------------- up ----

free_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
    return
  fi
  local p i
  for ((i = 0; i < 100; i++)); do
    p=$((20000 + RANDOM % 40000))
    # Nothing answers on it (connect refused) -> probably free.
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  die "could not find a free port on 127.0.0.1"
}

# Start a detached process; its real pid is written to PIDFILE.
spawn() { # pidfile logfile cmd args...
  local pidfile="$1" logfile="$2"
  shift 2
  local launcher=()
  command -v setsid >/dev/null 2>&1 && launcher=(setsid)
  # shellcheck disable=SC2016 # $$ and $@ are for the inner sh
  ${launcher[@]+"${launcher[@]}"} sh -c 'echo $$ > "$0"; exec "$@"' "$pidfile" "$@" </dev/null >>"$logfile" 2>&1 &
  local i
  for ((i = 0; i < 50; i++)); do
    [[ -s "$pidfile" ]] && return 0
    sleep 0.05
  done
  die "could not start $1"
}

wait_for_pidfile_ident() { # pidfile binary -> echoes "pid ident" once exec'd
  local pidfile="$1" bin="$2" pid ident i
  pid="$(cat "$pidfile")"
  for ((i = 0; i < 100; i++)); do
    ident="$(proc_identity "$pid" 2>/dev/null || true)"
    if [[ "$ident" == *"$(basename "$bin")"* ]]; then echo "$pid $ident"; return 0; fi
    [[ -z "$ident" ]] && break
    sleep 0.02
  done
  echo "$pid ${ident:-dead}"
}

show_log_tail() {
  local name="$1" f="$2"
  {
    echo "---- last 40 lines of $f ($name) ----"
    tail -n 40 "$f" 2>/dev/null || true
    echo "----"
  } >&2
}

gen_pki() {
  local d="$1"
  mkdir -p "$d"
  (
    cd "$d"
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=atlas-envtest-ca" >/dev/null 2>&1
    cat >serving.ext <<'EOF'
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, IP:10.0.0.1, DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc
EOF
    openssl req -new -newkey rsa:2048 -nodes -keyout serving.key -out serving.csr \
      -subj "/CN=kube-apiserver" >/dev/null 2>&1
    openssl x509 -req -in serving.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -out serving.crt -days 3650 -extfile serving.ext >/dev/null 2>&1
    openssl genrsa -out sa.key 2048 >/dev/null 2>&1
    openssl rsa -in sa.key -pubout -out sa.pub >/dev/null 2>&1
  ) || die "openssl failed to generate the certificates in $d"
}

write_kubeconfig() { # file server ca_file user token
  local file="$1" server="$2" ca="$3" user="$4" token="$5" ca_data
  ca_data="$(base64 <"$ca" | tr -d '\n')"
  (
    umask 077
    cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: envtest
  cluster:
    server: $server
    certificate-authority-data: $ca_data
users:
- name: $user
  user:
    token: $token
contexts:
- name: $user@envtest
  context:
    cluster: envtest
    user: $user
    namespace: default
current-context: $user@envtest
EOF
  )
}

start_etcd() { # data_dir -> sets ETCD_CLIENT_PORT ETCD_PEER_PORT ETCD_PID ETCD_IDENT, or returns 1 (port clash) / dies
  local data="$1" attempt
  for attempt in 1 2 3; do
    ETCD_CLIENT_PORT="$(free_port)"
    ETCD_PEER_PORT="$(free_port)"
    [[ "$ETCD_CLIENT_PORT" != "$ETCD_PEER_PORT" ]] || continue
    rm -rf "$data/etcd" "$data/etcd.pid"
    : >"$data/etcd.log"
    spawn "$data/etcd.pid" "$data/etcd.log" "$ETCD_BIN" \
      --name=envtest \
      --data-dir="$data/etcd" \
      --listen-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
      --advertise-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
      --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
      --initial-cluster="envtest=http://127.0.0.1:$ETCD_PEER_PORT" \
      --unsafe-no-fsync=true \
      --log-level=warn \
      --log-outputs=stderr
    read -r ETCD_PID ETCD_IDENT < <(wait_for_pidfile_ident "$data/etcd.pid" "$ETCD_BIN")
    local i
    for ((i = 0; i < 300; i++)); do
      if curl -fsS --max-time 2 "http://127.0.0.1:$ETCD_CLIENT_PORT/health" 2>/dev/null | grep -q '"health":"true"'; then
        return 0
      fi
      if [[ "$(proc_identity "$ETCD_PID" 2>/dev/null || true)" != "$ETCD_IDENT" ]]; then break; fi
      sleep 0.1
    done
    if grep -q 'address already in use' "$data/etcd.log"; then
      log "etcd could not bind 127.0.0.1:$ETCD_CLIENT_PORT/$ETCD_PEER_PORT (address already in use); retrying on other ports (attempt $attempt/3)"
      kill -KILL "$ETCD_PID" 2>/dev/null || true
      continue
    fi
    kill -KILL "$ETCD_PID" 2>/dev/null || true
    show_log_tail etcd "$data/etcd.log"
    fail_up "etcd did not become healthy on 127.0.0.1:$ETCD_CLIENT_PORT within 30s"
  done
  show_log_tail etcd "$data/etcd.log"
  fail_up "etcd: no free port would bind on 127.0.0.1 after 3 attempts"
}

# Stop whatever `up` started so far, keep the logs, remove the data, fail.
fail_up() {
  local data keep
  data="$(state_get data_dir 2>/dev/null || true)"
  keep="$STATE_DIR/failed-logs"
  if [[ -n "$data" && -d "$data" ]]; then
    mkdir -p "$keep"
    cp "$data"/*.log "$data"/*.cmdline "$keep"/ 2>/dev/null || true
  fi
  cmd_down >/dev/null 2>&1 || true
  die "$* (full logs kept in $keep)"
}

cmd_up() {
  local t0
  t0="$(now_ms)"
  if is_up; then
    log "already up (kube-apiserver on $(state_get apiserver_url)); run '$0 down' first to restart"
    print_env
    return 0
  fi
  if [[ -f "$(state_file)" ]]; then
    log "stale state in $STATE_DIR from an earlier run; cleaning it up"
    cmd_down >/dev/null 2>&1 || true
  fi
  rm -rf "$STATE_DIR/failed-logs"
  command -v curl >/dev/null 2>&1 || die "curl is required (apt-get install -y curl)"
  command -v openssl >/dev/null 2>&1 || die "openssl is required (apt-get install -y openssl)"
  cmd_install

  mkdir -p "$STATE_DIR"
  chmod 700 "$STATE_DIR"
  local data
  data="$(mktemp -d "${TMPDIR:-/tmp}/atlas-envtest-data.XXXXXX")"
  {
    echo "data_dir=$data"
    echo "k8s_version=$K8S_VERSION"
  } >"$(state_file)"

  gen_pki "$data/pki"
  local admin_token unpriv_token
  admin_token="$(openssl rand -hex 24)"
  unpriv_token="$(openssl rand -hex 24)"
  (
    umask 077
    printf '%s,admin,admin-uid,"system:masters"\n' "$admin_token" >"$data/pki/tokens.csv"
    printf '%s,%s,%s-uid\n' "$unpriv_token" "$UNPRIVILEGED_USER" "$UNPRIVILEGED_USER" >>"$data/pki/tokens.csv"
    printf '%s\n' "$admin_token" >"$STATE_DIR/admin-token"
    printf '%s\n' "$unpriv_token" >"$STATE_DIR/unprivileged-token"
  )

  local ETCD_CLIENT_PORT ETCD_PEER_PORT ETCD_PID ETCD_IDENT
  start_etcd "$data"
  {
    echo "etcd_pid=$ETCD_PID"
    echo "etcd_ident=$ETCD_IDENT"
    echo "etcd_client_port=$ETCD_CLIENT_PORT"
    echo "etcd_peer_port=$ETCD_PEER_PORT"
  } >>"$(state_file)"
  log "etcd $ETCD_VERSION up on 127.0.0.1:$ETCD_CLIENT_PORT (pid $ETCD_PID, $(elapsed "$t0"))"

  local attempt port api_pid api_ident ready=""
  for attempt in 1 2 3; do
    port="$(free_port)"
    rm -f "$data/kube-apiserver.pid"
    : >"$data/kube-apiserver.log"
    local args=(
      --bind-address=127.0.0.1
      --advertise-address=127.0.0.1
      # 1.37 refuses a loopback advertise address with the default (lease)
      # endpoint reconciler; upstream's own test server uses "none" too.
      --endpoint-reconciler-type=none
      --secure-port="$port"
      --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT"
      --tls-cert-file="$data/pki/serving.crt"
      --tls-private-key-file="$data/pki/serving.key"
      --client-ca-file="$data/pki/ca.crt"
      --token-auth-file="$data/pki/tokens.csv"
      --authorization-mode=RBAC
      --service-account-issuer=https://kubernetes.default.svc.cluster.local
      --service-account-key-file="$data/pki/sa.pub"
      --service-account-signing-key-file="$data/pki/sa.key"
      --service-cluster-ip-range="$SERVICE_CIDR"
      --disable-admission-plugins=ServiceAccount
      --allow-privileged=true
      --profiling=false
      --cert-dir="$data/pki/generated"
    )
    printf '%q ' "$APISERVER_BIN" "${args[@]}" >"$data/kube-apiserver.cmdline"
    spawn "$data/kube-apiserver.pid" "$data/kube-apiserver.log" "$APISERVER_BIN" "${args[@]}"
    read -r api_pid api_ident < <(wait_for_pidfile_ident "$data/kube-apiserver.pid" "$APISERVER_BIN")
    {
      echo "kube_apiserver_pid=$api_pid"
      echo "kube_apiserver_ident=$api_ident"
    } >>"$(state_file)"

    local deadline=$(($(now_ms) + ${ENVTEST_START_TIMEOUT:-120} * 1000))
    while (($(now_ms) < deadline)); do
      if [[ "$(curl -sS --max-time 2 --cacert "$data/pki/ca.crt" -H "Authorization: Bearer $admin_token" \
        "https://127.0.0.1:$port/readyz" 2>/dev/null || true)" == ok ]]; then
        ready=1
        break
      fi
      [[ "$(proc_identity "$api_pid" 2>/dev/null || true)" == "$api_ident" ]] || break
      sleep 0.2
    done
    [[ -n "$ready" ]] && break
    if grep -q 'address already in use' "$data/kube-apiserver.log"; then
      log "kube-apiserver could not bind 127.0.0.1:$port (address already in use); retrying on another port (attempt $attempt/3)"
      kill -KILL "$api_pid" 2>/dev/null || true
      continue
    fi
    show_log_tail kube-apiserver "$data/kube-apiserver.log"
    if [[ "$(proc_identity "$api_pid" 2>/dev/null || true)" == "$api_ident" ]]; then
      log "kube-apiserver still not ready; /readyz says:"
      curl -sS --max-time 5 --cacert "$data/pki/ca.crt" -H "Authorization: Bearer $admin_token" \
        "https://127.0.0.1:$port/readyz?verbose" 2>&1 | grep -v '\] ok$' >&2 || true
      fail_up "kube-apiserver did not become ready within ${ENVTEST_START_TIMEOUT:-120}s"
    fi
    fail_up "kube-apiserver exited before becoming ready"
  done
  [[ -n "$ready" ]] || fail_up "kube-apiserver: no free port would bind on 127.0.0.1 after 3 attempts"

  local url="https://127.0.0.1:$port"
  write_kubeconfig "$STATE_DIR/kubeconfig" "$url" "$data/pki/ca.crt" admin "$admin_token"
  write_kubeconfig "$STATE_DIR/kubeconfig-unprivileged" "$url" "$data/pki/ca.crt" "$UNPRIVILEGED_USER" "$unpriv_token"
  cp "$data/pki/ca.crt" "$STATE_DIR/ca.crt"
  {
    echo "apiserver_port=$port"
    echo "apiserver_url=$url"
  } >>"$(state_file)"
  log "kube-apiserver $K8S_VERSION ready on $url (pid $api_pid); started in $(elapsed "$t0")"
  print_env
}

# ----------------------------------------------------------------- down ----

cmd_down() {
  if [[ ! -f "$(state_file)" ]]; then
    log "not up (no state in $STATE_DIR)"
    return 0
  fi
  stop_proc kube-apiserver
  stop_proc etcd
  local data
  data="$(state_get data_dir 2>/dev/null || true)"
  if [[ -n "$data" && -d "$data" && "$data" == */atlas-envtest-data.* ]]; then
    rm -rf "$data"
    log "removed $data"
  fi
  rm -f "$STATE_DIR/state.env" "$STATE_DIR/kubeconfig" "$STATE_DIR/kubeconfig-unprivileged" \
    "$STATE_DIR/admin-token" "$STATE_DIR/unprivileged-token" "$STATE_DIR/ca.crt"
  rmdir "$STATE_DIR" 2>/dev/null || true
}

# --------------------------------------------------------- status / env ----

print_env() {
  echo "export KUBECONFIG=$STATE_DIR/kubeconfig"
  echo "export ENVTEST_UNPRIVILEGED_KUBECONFIG=$STATE_DIR/kubeconfig-unprivileged"
}

cmd_status() {
  if is_up; then
    echo "up: kube-apiserver $K8S_VERSION at $(state_get apiserver_url) (pid $(state_get kube_apiserver_pid))"
    echo "    etcd $ETCD_VERSION at http://127.0.0.1:$(state_get etcd_client_port) (peer port $(state_get etcd_peer_port), pid $(state_get etcd_pid))"
    echo "    data dir:                $(state_get data_dir)"
    echo "    kubeconfig (admin):      $STATE_DIR/kubeconfig"
    echo "    kubeconfig (${UNPRIVILEGED_USER}): $STATE_DIR/kubeconfig-unprivileged"
    echo "    CA certificate:          $STATE_DIR/ca.crt"
    return 0
  fi
  if [[ -f "$(state_file)" ]]; then
    echo "down (stale state in $STATE_DIR: etcd $(proc_alive etcd && echo running || echo gone), kube-apiserver $(proc_alive kube-apiserver && echo running || echo gone); run '$0 down' to clean up)"
  else
    echo "down"
  fi
  return 1
}

cmd_env() {
  is_up || die "not up; run '$0 up' first"
  print_env
}

usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

main() {
  case "${1:-}" in
    install) cmd_install ;;
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

# On one line so that bash has read all of it before main runs.
main "$@"; exit
