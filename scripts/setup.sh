#!/usr/bin/env bash
# setup.sh: everything a fresh Debian machine with Go needs to build, run
# and test Shoal. Idempotent; every download is pinned by version and sha256.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

need_apt=()
command -v gcc >/dev/null || need_apt+=(gcc libc6-dev)   # cgo, for onnxruntime_go
command -v npm >/dev/null || need_apt+=(npm)             # fetches the pinned onnxruntime build
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: please install: ${need_apt[*]} (apt-get install ${need_apt[*]})" >&2
    exit 1
  fi
  echo "setup: installing ${need_apt[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

go mod download

# onnxruntime 1.30.0, CPU build, MIT licence (design: DEVELOPERS.md pins).
ORT_DIR=deps/onnxruntime
scripts/fetch-npm.sh onnxruntime-node@1.30.0 \
  6e3390d6b783e7be946fad629292799da28d0b42f84856e50d2c1b0383291e75 \
  package/bin/napi-v6/linux/x64/libonnxruntime.so.1 \
  ffb75a925ba05e47b235bb66e3e3911714a80b328a9c9425539feb204aa32a23 \
  "$ORT_DIR/libonnxruntime.so.1"
ln -sf libonnxruntime.so.1 "$ORT_DIR/libonnxruntime.so"
echo "setup: done" >&2
