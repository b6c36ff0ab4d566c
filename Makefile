# Shoal — the two commands that matter:
#   make run    set up, build and run a peer on the embedded defaults
#   make test   set up and run every test (what CI runs)

GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)

.PHONY: all setup setup-gpu build run test vet fuzz bench reliability proto clean

all: build

setup:
	@scripts/setup.sh

# onnxruntime with CUDA and NVIDIA's CUDA 12 libraries (2.4 GB download,
# 3.1 GB in deps/onnxruntime-gpu), for GPU gateways; not part of setup or
# test. A peer prefers this build when it is there. See docs/inference.md.
setup-gpu:
	@scripts/setup-gpu.sh

build: setup
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/shoal ./cmd/shoal

run: build
	./bin/shoal run $(ARGS)

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

# Each fuzz target runs briefly; the seed corpus lives in testdata/fuzz.
# Budgets are execution counts, not durations: with a duration, Go 1.26's
# fuzz coordinator can report its own deadline as a failure ("context
# deadline exceeded" with no failing input, golang/go#75804, fixed in 1.27).
# FUZZEXECS raises the budget for a longer local hunt.
FUZZEXECS ?= 20000
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeRecord$$' -fuzztime $(FUZZEXECS)x ./crdt/
	$(GO) test -run '^$$' -fuzz '^FuzzParseToken$$' -fuzztime $(FUZZEXECS)x ./crdt/
	$(GO) test -run '^$$' -fuzz '^FuzzParseRequest$$' -fuzztime $(FUZZEXECS)x ./inference/
	$(GO) test -run '^$$' -fuzz '^FuzzDocumentRecords$$' -fuzztime $(FUZZEXECS)x ./crdt/collections/
	$(GO) test -run '^$$' -fuzz '^FuzzManifestVerify$$' -fuzztime $(FUZZEXECS)x ./crdt/models/
	$(GO) test -run '^$$' -fuzz '^FuzzParseQuery$$' -fuzztime $(FUZZEXECS)x ./httpapi/

test: setup vet
	$(GO) test -race -count=1 -timeout 30m ./...
	$(MAKE) --no-print-directory fuzz

# Side-by-side benchmarks (etcd, Redis, NATS from Debian; the delay/loss row
# needs root for network namespaces). Rewrites docs/benchmarks.md.
bench: setup
	@scripts/setup-bench.sh
	$(GO) run ./e2e/cmd/shoal-bench -out docs/benchmarks.md

# Fault scenarios with real processes in network namespaces (root).
reliability: setup
	$(GO) run ./e2e/cmd/shoal-reliability -out docs/reliability.md

# Regenerates grpcapi/inferencepb from inference.proto: protoc from Debian
# (protobuf-compiler), the Go plugins at these versions. The generated code
# is committed; builds and CI need none of this.
PROTOC_GEN_GO      := google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
PROTOC_GEN_GO_GRPC := google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.1
proto:
	GOBIN=$(CURDIR)/bin/protoc-plugins $(GO) install $(PROTOC_GEN_GO)
	GOBIN=$(CURDIR)/bin/protoc-plugins $(GO) install $(PROTOC_GEN_GO_GRPC)
	cd grpcapi/inferencepb && PATH=$(CURDIR)/bin/protoc-plugins:$$PATH protoc --go_out=. --go_opt=paths=source_relative \
		--go-grpc_out=. --go-grpc_opt=paths=source_relative inference.proto

clean:
	rm -rf bin
