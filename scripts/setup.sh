#!/usr/bin/env bash
# Installs what Corral needs (idempotent): etcd for the distributed store and its tests, protoc
# for etcd-client's build, QEMU and its qboot firmware for the QEMU driver, the C compiler and
# binutils that build its guest (node-agent/build.rs), the Python `kubernetes` client for
# the client-compatibility tests, Prometheus' Python client (whose text-format parser reads
# every component's /metrics in the HA test) and curl. Safe to run any number of times.
set -euo pipefail

need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
[ -e /usr/share/qemu/qboot.rom ] || need+=(qemu-system-data)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v curl >/dev/null 2>&1 || need+=(curl)
for tool in as ld objcopy; do
  command -v "$tool" >/dev/null 2>&1 || { need+=(binutils); break; }
done

if ((${#need[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! python3 -c "import kubernetes" >/dev/null 2>&1; then
  echo "setup: installing the Python kubernetes client" >&2
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "kubernetes>=31" >/dev/null
fi

if ! python3 -c "import prometheus_client" >/dev/null 2>&1; then
  echo "setup: installing Prometheus' Python client" >&2
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "prometheus-client>=0.16" >/dev/null
fi
