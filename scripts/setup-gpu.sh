#!/usr/bin/env bash
# setup-gpu.sh (`make setup-gpu`): onnxruntime with CUDA enabled in its core
# library, and the CUDA 12 libraries its CUDA provider needs, into
# deps/onnxruntime-gpu/. Not part of `make setup`: it downloads about 2.4 GB
# and installs about 3.1 GB. A peer started without --ort-lib uses this build
# when it is there (inference.FindLibrary) and CUDA when a GPU answers.
#
# Why these: onnxruntime_go v1.27 requests C API version 24, so the core
# must be onnxruntime 1.24 or later, and it must be a build whose core
# selects CUDA through AppendExecutionProviderCUDA (not a plugin provider,
# which needs the EP-device API onnxruntime_go does not wrap). The Maven
# artifact com.microsoft.onnxruntime:onnxruntime_gpu is such a build, CUDA 12
# and cuDNN 9; 1.29.0 is the newest version Maven serves (1.30 is not there).
# PyPI's onnxruntime-gpu 1.31.1 has a C-API core too, but for CUDA 13, which
# needs an R580+ driver where CUDA 12 runs on R525+.
# The provider's DT_NEEDED are libcudart.so.12, libcublas.so.12,
# libcublasLt.so.12, libcurand.so.10 and the driver's libcuda.so.1; it
# dlopens libcudnn.so.9, and libnvrtc.so.12 and libcufft.so.11 for the few
# operators that use them.
# Those come from NVIDIA's PyPI wheels, fetched with pip, not installed.
#
# The provider library has no RUNPATH, so CUDA libraries beside it are not
# found by the dynamic loader on their own: the inference package loads them
# from this directory before onnxruntime loads the provider (cuda_linux.go).
#
# Every file is pinned by sha256 and checked before use. Idempotent: does
# nothing when the installed set was made by this exact script.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

DIR=deps/onnxruntime-gpu
STAMP=$(sha256sum "$0" | cut -d' ' -f1)
if [ -f "$DIR/.sha256" ] && [ "$(cat "$DIR/.sha256")" = "$STAMP" ]; then
  echo "setup-gpu: $DIR is up to date" >&2
  exit 0
fi

sum() { sha256sum "$1" | cut -d' ' -f1; }
check() { # check FILE SHA256 WHAT
  local got
  got=$(sum "$1")
  [ "$got" = "$2" ] || { echo "setup-gpu: $3 ($1) has sha256 $got, expected $2: refusing it" >&2; exit 1; }
}

need=()
command -v mvn >/dev/null || need+=(maven)
command -v unzip >/dev/null || need+=(unzip)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || { echo "setup-gpu: please install: ${need[*]}" >&2; exit 1; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# onnxruntime 1.29.0 with CUDA 12 (MIT): the jar carries linux-x64 and
# win-x64 native libraries; only these three are taken.
ORT_VERSION=1.29.0
ORT_GAV=com.microsoft.onnxruntime:onnxruntime_gpu:$ORT_VERSION
ORT_JAR=.cache/m2/com/microsoft/onnxruntime/onnxruntime_gpu/$ORT_VERSION/onnxruntime_gpu-$ORT_VERSION.jar
ORT_JAR_SUM=fe39a98c499fc9be3944dd2bf2fb77d7dc5f152668bf95d8beb1c3d7b22f2a89
ORT_FILES=(
  "libonnxruntime.so b81e7ceaba1131e391f94c455d71ecf9af8ec7999d7130beebb79c67a0c7e05d"
  "libonnxruntime_providers_shared.so c6a12593396095f5670160e284c35d1700b7708cf3037b7042e2a5200ccae772"
  "libonnxruntime_providers_cuda.so 310d2cfdc5feead352318eaf9e6b11cd0f9ef96d29c4ad759ced7da7ff9a21b5"
)

# NVIDIA's CUDA 12.9 runtime libraries and cuDNN 9 (NVIDIA licences), as
# PyPI wheels: "name==version sha256 files-to-take".
WHEELS=(
  "nvidia-cuda-runtime-cu12==12.9.79 25bba2dfb01d48a9b59ca474a1ac43c6ebf7011f1b0b8cc44f54eb6ac48a96c3 libcudart.so.12"
  "nvidia-cublas-cu12==12.9.1.4 453611eb21a7c1f2c2156ed9f3a45b691deda0440ec550860290dc901af5b4c2 libcublas.so.12 libcublasLt.so.12"
  "nvidia-curand-cu12==10.3.10.19 49b274db4780d421bd2ccd362e1415c13887c53c214f0d4b761752b8f9f6aa1e libcurand.so.10"
  "nvidia-cuda-nvrtc-cu12==12.9.86 210cf05005a447e29214e9ce50851e83fc5f4358df8b453155d5e1918094dcb4 libnvrtc.so.12 libnvrtc-builtins.so.12.9"
  "nvidia-cufft-cu12==11.4.1.4 c67884f2a7d276b4b80eb56a79322a95df592ae5e765cf1243693365ccab4e28 libcufft.so.11"
  "nvidia-cudnn-cu12==9.27.0.42 0a4aa3a7d2264256506c6857fc41fc0c499982f78d70195b1cfcc9055c1957cd libcudnn*.so.9"
)

if [ ! -f "$ORT_JAR" ] || [ "$(sum "$ORT_JAR")" != "$ORT_JAR_SUM" ]; then
  echo "setup-gpu: fetching $ORT_GAV from the Maven registry (642 MB)..." >&2
  mkdir -p .cache/m2
  mvn -q -B -Dstyle.color=never -Dmaven.repo.local="$root/.cache/m2" \
    org.apache.maven.plugins:maven-dependency-plugin:3.6.1:get -Dartifact="$ORT_GAV" -Dtransitive=false >&2
fi
check "$ORT_JAR" "$ORT_JAR_SUM" "$ORT_GAV"

# pip picks, among each version's files, the one whose hash is pinned.
WHL_DIR=.cache/gpu-wheels
mkdir -p "$WHL_DIR"
req=$(mktemp)
mkdir -p deps
stage=$(mktemp -d "$root/deps/.onnxruntime-gpu.XXXXXX")
trap 'rm -rf "$req" "$stage"' EXIT
for w in "${WHEELS[@]}"; do
  read -r spec hash _ <<<"$w"
  echo "$spec --hash=sha256:$hash" >>"$req"
done
echo "setup-gpu: fetching the CUDA 12 wheels from PyPI (1.7 GB, cached in $WHL_DIR)..." >&2
python3 -m pip download -q --disable-pip-version-check --no-deps --require-hashes --only-binary=:all: \
  --python-version 3.11 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 \
  --platform manylinux2010_x86_64 -d "$WHL_DIR" -r "$req" >&2

for f in "${ORT_FILES[@]}"; do
  read -r name hash <<<"$f"
  unzip -q -o -j "$ORT_JAR" "ai/onnxruntime/native/linux-x64/$name" -d "$stage"
  check "$stage/$name" "$hash" "$name from $ORT_GAV"
done
mv "$stage/libonnxruntime.so" "$stage/libonnxruntime.so.1"   # its SONAME
ln -s libonnxruntime.so.1 "$stage/libonnxruntime.so"

for w in "${WHEELS[@]}"; do
  read -r spec hash files <<<"$w"
  name=${spec%%==*}; version=${spec##*==}
  whl=
  for c in "$WHL_DIR/$(echo "$name" | tr - _)-$version-"*.whl; do
    [ -f "$c" ] && [ "$(sum "$c")" = "$hash" ] && whl=$c
  done
  [ -n "$whl" ] || { echo "setup-gpu: no wheel of $spec with sha256 $hash in $WHL_DIR" >&2; exit 1; }
  patterns=()
  for f in $files; do patterns+=("nvidia/*/lib/$f"); done
  unzip -q -o -j "$whl" "${patterns[@]}" -d "$stage"
done

chmod 0755 "$stage"
rm -rf "$DIR"
mv "$stage" "$DIR"
echo "$STAMP" >"$DIR/.sha256"
echo "setup-gpu: installed onnxruntime $ORT_VERSION (CUDA 12) and its CUDA libraries in $DIR ($(du -sh "$DIR" | cut -f1))" >&2

# What the provider still lacks here is what this machine must bring: only
# the driver's libcuda.so.1, which comes with the NVIDIA driver, never with
# a package like these.
missing=$(cd "$DIR" && LD_LIBRARY_PATH=. ldd libonnxruntime_providers_cuda.so | awk '/not found/ {print $1}' | tr '\n' ' ')
if [ -n "$missing" ]; then
  echo "setup-gpu: this machine lacks ${missing% } (the NVIDIA driver): peers here run on CPU and say why" >&2
fi
