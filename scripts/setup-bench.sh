#!/usr/bin/env bash
# setup-bench.sh: the systems `make bench` measures Shoal against, from
# Debian's packages: etcd (etcd-server), Redis (redis-server) and NATS
# (nats-server), and hnswlib and faiss for the retrieval rows. The benchmark
# starts and stops its own instances on loopback; nothing here runs as a
# service.
set -euo pipefail
need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v redis-server >/dev/null || need+=(redis-server)
command -v nats-server >/dev/null || need+=(nats-server)
/usr/bin/python3 -c 'import hnswlib' 2>/dev/null || need+=(python3-hnswlib)
/usr/bin/python3 -c 'import faiss' 2>/dev/null || need+=(python3-faiss)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "setup-bench: please install: ${need[*]} (apt-get install ${need[*]})" >&2
  exit 1
fi
echo "setup-bench: installing ${need[*]}" >&2
apt-get update -qq || true
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts the packaged services; the benchmark runs its own instances.
for s in etcd redis-server nats-server; do
  (systemctl stop "$s" || service "$s" stop) >/dev/null 2>&1 || true
done
