#!/usr/bin/env bash
# Corral's production layout on one machine, on 127.0.0.1, every component its own process: a
# 3-member etcd cluster over TLS for clients and peers (etcd's own CA, client certificates
# required), two API servers on it, two controllers processes (leader-elected) and N
# simulated sleds, each a `corral node-agent` with its fault API and power controller.
#
#   deploy/local-cluster.sh up DIR [--sleds N]   start it (N = 4); returns once it is all up
#   deploy/local-cluster.sh status DIR           every process, alive or dead (exit 1: one dead)
#   deploy/local-cluster.sh down DIR             stop every process (idempotent)
#
# What it leaves in DIR:
#   kubeconfig        admin's, naming both API servers (the corral.dev/servers extension)
#   pids              `NAME PID` a line: etcd-1..3, apiserver-1..2, controllers-1..2, sled-1..N
#   endpoints         `NAME URL` a line: each etcd member's client URL, each API server's,
#                     each controllers process's debug page, each sled's fault API
#   NAME.log          each process's output
#   pki/              `corral certs`: the rack's CA and identities; etcd's CA in pki/etcd
#   ports             the ports picked, kept so that `up` after `down` restarts the same cluster
#   etcd-N/, sleds/   etcd's data, the sleds' machines and journals
#
# Environment:
#   CORRAL                    the corral binary (else `corral` on PATH, else the repository's
#                             target/{release,debug}/corral, or under $CARGO_TARGET_DIR)
#   ETCD                      the etcd binary (else `etcd` on PATH, Debian's /usr/bin/etcd)
#   CORRAL_CLUSTER_WAIT       how long `up` waits for everything to be up, in seconds (60)
#   CORRAL_CLUSTER_OWNER_PID  `up` also leaves a watchdog that runs `down DIR` once this process
#                             is gone, however it ended
#
# deploy/README.md, "Trying it on one machine", tells what each piece is in production.
set -euo pipefail

SCRIPT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
REPO=$(cd "$(dirname "$SCRIPT")/.." && pwd)
ETCD_MEMBERS=3
APISERVERS=2
CONTROLLERS=2

usage() {
  echo "usage: $0 up|down|status DIR [--sleds N]" >&2
  exit 2
}

say() { echo "local-cluster: $*" >&2; }

# Whether process $1 runs (a zombie does not).
alive() {
  [[ -r /proc/$1/status ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

# Whether process $1 runs and is one of this cluster's: its command line names DIR. A pid
# that a finished process left and another took is not killed.
ours() {
  alive "$1" && tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$DIR/"
}

# The `NAME PID` lines of DIR/pids, if any.
pid_lines() {
  if [[ -f $DIR/pids ]]; then
    cat "$DIR/pids"
  fi
}

corral_binary() {
  if [[ -n ${CORRAL:-} ]]; then
    echo "$CORRAL"
    return
  fi
  if command -v corral >/dev/null 2>&1; then
    command -v corral
    return
  fi
  local candidate
  for candidate in "${CARGO_TARGET_DIR:-$REPO/target}/release/corral" \
    "${CARGO_TARGET_DIR:-$REPO/target}/debug/corral" \
    "$REPO/target/release/corral" "$REPO/target/debug/corral"; do
    if [[ -x $candidate ]]; then
      echo "$candidate"
      return
    fi
  done
  say "no corral binary: set CORRAL, put corral on PATH, or cargo build -p corral"
  exit 1
}

etcd_binary() {
  if [[ -n ${ETCD:-} ]]; then
    echo "$ETCD"
  elif command -v etcd >/dev/null 2>&1; then
    command -v etcd
  elif [[ -x /usr/bin/etcd ]]; then
    echo /usr/bin/etcd
  else
    say "no etcd: apt-get install etcd-server (scripts/setup.sh does), or set ETCD"
    exit 1
  fi
}

# `count` free loopback ports, asked of the kernel all at once so that they differ.
free_ports() {
  python3 - "$1" <<'PYTHON'
import socket
import sys

sockets = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    sockets.append(s)
print(" ".join(str(s.getsockname()[1]) for s in sockets))
PYTHON
}

# Fills PORT[name] for every name given: from DIR/ports where a previous `up` picked it (etcd
# keeps its peers' URLs in its data), else a free port; writes DIR/ports.
declare -A PORT
pick_ports() {
  local name port missing=()
  if [[ -f $DIR/ports ]]; then
    while read -r name port; do
      PORT[$name]=$port
    done <"$DIR/ports"
  fi
  for name in "$@"; do
    [[ -n ${PORT[$name]:-} ]] || missing+=("$name")
  done
  if ((${#missing[@]})); then
    local fresh index=0
    read -r -a fresh <<<"$(free_ports "${#missing[@]}")"
    for name in "${missing[@]}"; do
      PORT[$name]=${fresh[$index]}
      index=$((index + 1))
    done
  fi
  : >"$DIR/ports.tmp"
  for name in "${!PORT[@]}"; do
    echo "$name ${PORT[$name]}" >>"$DIR/ports.tmp"
  done
  sort -o "$DIR/ports" "$DIR/ports.tmp"
  rm -f "$DIR/ports.tmp"
}

# Starts `NAME COMMAND...` in the background, output to DIR/NAME.log, and records its pid.
launch() {
  local name=$1
  shift
  "$@" </dev/null >"$DIR/$name.log" 2>&1 &
  echo "$name $!" >>"$DIR/pids"
}

# Fails naming the process if one of those started has exited, with the end of its log.
check_alive() {
  local name pid
  while read -r name pid; do
    if ! alive "$pid"; then
      say "$name (pid $pid) exited; the end of $DIR/$name.log:"
      tail -n 20 "$DIR/$name.log" >&2 || true
      return 1
    fi
  done < <(pid_lines)
}

# Polls `check` (a function that prints what is not up yet and fails, or succeeds) once
# every half second until it succeeds, a process exits, or DEADLINE passes.
wait_until() {
  local what=$1 check=$2 why
  while true; do
    check_alive || return 1
    if why=$("$check" 2>&1); then
      say "$what: up"
      return 0
    fi
    if ((SECONDS >= DEADLINE)); then
      say "$what: not up within ${WAIT}s: $why"
      return 1
    fi
    sleep 0.5
  done
}

etcd_healthy() {
  local index unhealthy=()
  for index in $(seq "$ETCD_MEMBERS"); do
    curl -sf --max-time 2 --cacert "$PKI/etcd/ca.crt" \
      --cert "$PKI/etcd/apiserver-client.crt" --key "$PKI/etcd/apiserver-client.key" \
      "https://127.0.0.1:${PORT[etcd-$index-client]}/health" 2>/dev/null |
      grep -q '"health":"true"' || unhealthy+=("etcd-$index")
  done
  ((${#unhealthy[@]} == 0)) || {
    echo "not healthy: ${unhealthy[*]}"
    return 1
  }
}

apiservers_ready() {
  local index unready=()
  for index in $(seq "$APISERVERS"); do
    curl -sf --max-time 2 --cacert "$PKI/ca.crt" \
      "https://127.0.0.1:${PORT[apiserver-$index]}/readyz" >/dev/null 2>&1 ||
      unready+=("apiserver-$index")
  done
  ((${#unready[@]} == 0)) || {
    echo "not answering /readyz: ${unready[*]}"
    return 1
  }
}

# Every sled registered and Ready (the Sled's Ready condition True), as admin sees it.
sleds_ready() {
  local sleds
  sleds=$(curl -sf --max-time 5 --cacert "$PKI/ca.crt" \
    --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
    "https://127.0.0.1:${PORT[apiserver-1]}/apis/corral.dev/v1alpha1/sleds") || {
    echo "listing sleds failed"
    return 1
  }
  python3 -c '
import json, sys
want = ["sled-%d" % i for i in range(1, int(sys.argv[1]) + 1)]
ready = {
    item["metadata"]["name"]
    for item in json.load(sys.stdin).get("items", [])
    if any(c.get("type") == "Ready" and c.get("status") == "True"
           for c in (item.get("status") or {}).get("conditions", []))
}
missing = [name for name in want if name not in ready]
if missing:
    print("%d of %d sleds registered and Ready; not %s"
          % (len(want) - len(missing), len(want), ", ".join(missing[:5])))
    sys.exit(1)
' "$SLEDS" <<<"$sleds"
}

up() {
  mkdir -p "$DIR"
  DIR=$(cd "$DIR" && pwd)
  PKI=$DIR/pki
  local name pid
  while read -r name pid; do
    if ours "$pid"; then
      say "$DIR already holds a running cluster ($name is pid $pid): $0 down $DIR first"
      exit 1
    fi
  done < <(pid_lines)
  local corral etcd
  corral=$(corral_binary)
  etcd=$(etcd_binary)
  WAIT=${CORRAL_CLUSTER_WAIT:-60}
  DEADLINE=$((SECONDS + WAIT))

  local names=() index
  for index in $(seq "$ETCD_MEMBERS"); do names+=("etcd-$index-client" "etcd-$index-peer"); done
  for index in $(seq "$APISERVERS"); do names+=("apiserver-$index"); done
  for index in $(seq "$CONTROLLERS"); do names+=("controllers-$index"); done
  for index in $(seq "$SLEDS"); do names+=("sled-$index-fault" "sled-$index-power"); done
  pick_ports "${names[@]}"

  # The certificates: both API servers' URLs, the etcd members, a node identity per sled (and
  # the controllers' and admin's, always made).
  local certs=(certs --dir "$PKI")
  for index in $(seq "$APISERVERS"); do
    certs+=(--server "https://127.0.0.1:${PORT[apiserver-$index]}")
  done
  for index in $(seq "$ETCD_MEMBERS"); do certs+=(--etcd-member "etcd-$index=127.0.0.1"); done
  for index in $(seq "$SLEDS"); do certs+=(--node "sled-$index"); done
  "$corral" "${certs[@]}" >"$DIR/certs.log" 2>&1 || {
    say "corral certs failed:"
    cat "$DIR/certs.log" >&2
    exit 1
  }
  install -m 600 "$PKI/admin.kubeconfig" "$DIR/kubeconfig"

  : >"$DIR/pids"
  : >"$DIR/endpoints"
  # From here on a failure stops whatever was started.
  trap 'say "up failed; stopping what it started (logs stay in $DIR)"; stop_all' EXIT
  trap 'exit 130' INT TERM
  if [[ -n ${CORRAL_CLUSTER_OWNER_PID:-} ]]; then
    start_watchdog "$CORRAL_CLUSTER_OWNER_PID"
  fi

  local cluster="" endpoints=""
  for index in $(seq "$ETCD_MEMBERS"); do
    cluster+="${cluster:+,}etcd-$index=https://127.0.0.1:${PORT[etcd-$index-peer]}"
    endpoints+="${endpoints:+,}https://127.0.0.1:${PORT[etcd-$index-client]}"
  done
  for index in $(seq "$ETCD_MEMBERS"); do
    local client="https://127.0.0.1:${PORT[etcd-$index-client]}"
    local peer="https://127.0.0.1:${PORT[etcd-$index-peer]}"
    local cert=$PKI/etcd/etcd-$index.crt key=$PKI/etcd/etcd-$index.key
    # The same settings as deploy/etcd/etcd-N.env, as flags.
    launch "etcd-$index" "$etcd" --name "etcd-$index" --data-dir "$DIR/etcd-$index" \
      --listen-client-urls "$client" --advertise-client-urls "$client" \
      --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --initial-cluster-token corral-local \
      --cert-file "$cert" --key-file "$key" \
      --client-cert-auth --trusted-ca-file "$PKI/etcd/ca.crt" \
      --peer-cert-file "$cert" --peer-key-file "$key" \
      --peer-client-cert-auth --peer-trusted-ca-file "$PKI/etcd/ca.crt" \
      --logger zap --log-outputs stderr
    echo "etcd-$index $client" >>"$DIR/endpoints"
  done
  wait_until "etcd (${ETCD_MEMBERS} members)" etcd_healthy

  for index in $(seq "$APISERVERS"); do
    launch "apiserver-$index" env RUST_LOG="${RUST_LOG:-info}" "$corral" apiserver \
      --listen "127.0.0.1:${PORT[apiserver-$index]}" \
      --store "etcd:$endpoints" \
      --etcd-cafile "$PKI/etcd/ca.crt" \
      --etcd-certfile "$PKI/etcd/apiserver-client.crt" \
      --etcd-keyfile "$PKI/etcd/apiserver-client.key" \
      --pki "$PKI" --audit-log-path "$DIR/apiserver-$index-audit.log"
    echo "apiserver-$index https://127.0.0.1:${PORT[apiserver-$index]}" >>"$DIR/endpoints"
  done
  wait_until "API servers (${APISERVERS})" apiservers_ready

  for index in $(seq "$CONTROLLERS"); do
    launch "controllers-$index" env RUST_LOG="${RUST_LOG:-info}" "$corral" controllers \
      --kubeconfig "$PKI/controllers.kubeconfig" --pki "$PKI" \
      --debug-listen "127.0.0.1:${PORT[controllers-$index]}"
    echo "controllers-$index http://127.0.0.1:${PORT[controllers-$index]}" >>"$DIR/endpoints"
  done
  for index in $(seq "$SLEDS"); do
    # The simulated power controller's address is inventory: admin records it.
    launch "sled-$index" env RUST_LOG="${RUST_LOG:-info}" "$corral" node-agent \
      --sled "sled-$index" --data-dir "$DIR/sleds/sled-$index" \
      --kubeconfig "$PKI/node-sled-$index.kubeconfig" --pki "$PKI" \
      --fault-listen "127.0.0.1:${PORT[sled-$index-fault]}" \
      --power-listen "127.0.0.1:${PORT[sled-$index-power]}" \
      --inventory-kubeconfig "$DIR/kubeconfig" --cold-start
    echo "sled-$index https://127.0.0.1:${PORT[sled-$index-fault]}" >>"$DIR/endpoints"
  done
  wait_until "sleds (${SLEDS})" sleds_ready

  trap - EXIT INT TERM
  say "up in ${SECONDS}s: KUBECONFIG=$DIR/kubeconfig; $0 down $DIR to stop it"
}

# Leaves a background watchdog that brings the cluster down once process $1 is gone.
start_watchdog() {
  local owner=$1
  (
    trap '' HUP
    while alive "$owner"; do sleep 1; done
    CORRAL_CLUSTER_WATCHDOG=$BASHPID "$SCRIPT" down "$DIR"
  ) </dev/null >>"$DIR/watchdog.log" 2>&1 &
  echo "$!" >"$DIR/watchdog.pid"
}

# SIGTERM to each of `pids` still ours, then SIGKILL to those left after a bounded wait.
stop_pids() {
  local pid left=() waited
  for pid in "$@"; do
    if ours "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      left+=("$pid")
    fi
  done
  for waited in $(seq 100); do
    local still=()
    for pid in "${left[@]}"; do
      alive "$pid" && still+=("$pid")
    done
    left=("${still[@]}")
    ((${#left[@]} == 0)) && return 0
    ((waited < 100)) && sleep 0.1
  done
  say "killing (SIGKILL) what did not stop within 10 s: ${left[*]}"
  for pid in "${left[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
}

# Stops the cluster's processes: the sleds, controllers and API servers first, then etcd.
stop_all() {
  if [[ -f $DIR/watchdog.pid ]]; then
    local watchdog
    watchdog=$(cat "$DIR/watchdog.pid")
    if [[ $watchdog != "${CORRAL_CLUSTER_WATCHDOG:-}" ]] && alive "$watchdog"; then
      kill -TERM "$watchdog" 2>/dev/null || true
    fi
    rm -f "$DIR/watchdog.pid"
  fi
  local name pid clients=() members=()
  while read -r name pid; do
    case $name in
    etcd-*) members+=("$pid") ;;
    *) clients+=("$pid") ;;
    esac
  done < <(pid_lines)
  ((${#clients[@]} == 0)) || stop_pids "${clients[@]}"
  ((${#members[@]} == 0)) || stop_pids "${members[@]}"
}

down() {
  if [[ ! -d $DIR ]]; then
    say "no cluster in $DIR"
    return 0
  fi
  DIR=$(cd "$DIR" && pwd)
  stop_all
  say "down: nothing of $DIR runs"
}

status() {
  if [[ ! -f $DIR/pids ]]; then
    say "no cluster in $DIR (no $DIR/pids)"
    exit 1
  fi
  DIR=$(cd "$DIR" && pwd)
  local name pid dead=0
  while read -r name pid; do
    if ours "$pid"; then
      echo "$name $pid alive"
    else
      echo "$name $pid dead"
      dead=1
    fi
  done < <(pid_lines)
  return "$dead"
}

(($# >= 2)) || usage
COMMAND=$1
DIR=$2
shift 2
SLEDS=4
while (($#)); do
  case $1 in
  --sleds)
    (($# >= 2)) || usage
    SLEDS=$2
    shift 2
    ;;
  *) usage ;;
  esac
done
[[ $SLEDS =~ ^[1-9][0-9]*$ ]] || {
  say "--sleds $SLEDS: a number of at least 1"
  exit 2
}

case $COMMAND in
up) up ;;
down) down ;;
status) status ;;
*) usage ;;
esac
