#!/usr/bin/env bash
# setup-cuda.sh: fetch onnxruntime 1.29 with its CUDA 13 execution provider
# for GPU gateways (not needed for CPU peers, tests or CI). The core library
# and the provider must come from the same onnxruntime build, so both come
# from the asus4 packages (MIT), pinned by tarball and file sha256.
#
# The provider needs the CUDA 13 runtime on the machine: libcudart.so.13,
# libcublas.so.13, libcublasLt.so.13, libcurand.so.10 and the driver's
# libcuda.so.1. Then:  shoal run --ort-lib deps/onnxruntime-cuda/libonnxruntime.so --device cuda
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
DIR=deps/onnxruntime-cuda
CORE=com.github.asus4.onnxruntime@0.4.9
CORE_SUM=e59788788818fdde1b2e522e766a21ba0f7d8391de55737abf81e32cc801785d
GPU=com.github.asus4.onnxruntime.linux-x64-gpu@0.4.9
GPU_SUM=2b459e0c17f340c92970c10ed86de4f37a3009f93c14053e6ad4334cbb6be412
scripts/fetch-npm.sh $CORE $CORE_SUM package/Plugins/Linux/x64/libonnxruntime.so \
  5715f06d8992ca8eeeddcce43df3a7d38f97d537052126f558e912cb312460ca "$DIR/libonnxruntime.so"
scripts/fetch-npm.sh $GPU $GPU_SUM package/Plugins/Linux/x64/libonnxruntime_providers_shared.so \
  c6a12593396095f5670160e284c35d1700b7708cf3037b7042e2a5200ccae772 "$DIR/libonnxruntime_providers_shared.so"
scripts/fetch-npm.sh $GPU $GPU_SUM package/Plugins/Linux/x64/libonnxruntime_providers_cuda.so \
  56cf3254b118ad837ccc4ed8f6d1b23504bbf7ef91b34cbc0b289cb7f10b3037 "$DIR/libonnxruntime_providers_cuda.so"
missing=$(ldd "$DIR/libonnxruntime_providers_cuda.so" | awk '/not found/ {print $1}' | tr '\n' ' ')
if [ -n "$missing" ]; then
  echo "setup-cuda: installed, but this machine lacks CUDA libraries the provider needs: $missing" >&2
  echo "setup-cuda: peers here fall back to CPU (--device auto) or refuse to start (--device cuda)" >&2
fi
echo "setup-cuda: done ($DIR)" >&2
