package e2e

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/e2e/testmesh"
	"github.com/shoal-mesh/shoal/grpcapi"
	"github.com/shoal-mesh/shoal/grpcapi/inferencepb"
	"github.com/shoal-mesh/shoal/inference"
	"github.com/shoal-mesh/shoal/peer"
)

// grpcClient dials n's gRPC API.
func grpcClient(t *testing.T, n *peer.Node) inferencepb.GRPCInferenceServiceClient {
	t.Helper()
	if n.GRPCAddr() == "" {
		t.Fatal("the peer serves no gRPC API")
	}
	conn, err := grpc.NewClient(n.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return inferencepb.NewGRPCInferenceServiceClient(conn)
}

// clsInput is clsBody's image as float32s.
func clsInput(seed int) []float32 {
	data := make([]float32, 3*32*64)
	for i := range data {
		data[i] = float32(math.Sin(float64(i)*0.013+float64(seed))) * 0.7
	}
	return data
}

func le32(fs []float32) []byte {
	b := make([]byte, 0, 4*len(fs))
	for _, f := range fs {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(f))
	}
	return b
}

func fromLE32(b []byte) []float64 {
	out := make([]float64, len(b)/4)
	for i := range out {
		out[i] = float64(math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:])))
	}
	return out
}

// errorInfo is a gRPC error's Shoal code (ErrorInfo reason).
func errorInfo(err error) (codes.Code, *errdetails.ErrorInfo) {
	st := status.Convert(err)
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok && ei.Domain == grpcapi.ErrorDomain {
			return st.Code(), ei
		}
	}
	return st.Code(), nil
}

// TestGRPCInferenceServesLikeREST drives the gRPC half of the Open
// Inference Protocol on a second peer the way a KServe/Triton client
// would: health and metadata, an inference pinned to a write's token
// carried in metadata, raw and typed tensor data giving exactly the REST
// answer, the result cache shared with REST, and errors with the
// catalogue's codes — including a broken staleness bound, refused and
// then flagged.
func TestGRPCInferenceServesLikeREST(t *testing.T) {
	m := startMesh(t, 2, nil)
	a, b := m.Node(0), m.Node(1)
	v1, _ := clsModels(t)
	tok := push(t, a, "cls", "v1", v1, onnxQuery+"&activate=true")
	c := grpcClient(t, b)
	ctx := metadata.AppendToOutgoingContext(t.Context(), "shoal-after", tok, "shoal-timeout", "60s")

	eventually(t, "the model is ready over gRPC", func() error {
		r, err := c.ModelReady(ctx, &inferencepb.ModelReadyRequest{Name: "cls"})
		if err == nil && !r.Ready {
			return fmt.Errorf("not ready")
		}
		return err
	})
	var hdr metadata.MD
	md, err := c.ModelMetadata(ctx, &inferencepb.ModelMetadataRequest{Name: "cls"}, grpc.Header(&hdr))
	if err != nil {
		t.Fatalf("metadata after the push's token: %v", err)
	}
	if md.Name != "cls" || len(md.Inputs) != 1 || md.Inputs[0].Name != "x" || md.Inputs[0].Datatype != "FP32" || hdr.Get("shoal-model-version")[0] != "v1" {
		t.Fatalf("metadata %v, header %v", md, hdr)
	}
	if live, err := c.ServerLive(t.Context(), &inferencepb.ServerLiveRequest{}); err != nil || !live.Live {
		t.Fatalf("live: %v %v", live, err)
	}
	if sm, err := c.ServerMetadata(t.Context(), &inferencepb.ServerMetadataRequest{}); err != nil || sm.Name != "shoal" {
		t.Fatalf("server metadata: %v %v", sm, err)
	}

	// The REST answer on the writer is the reference.
	rest := inferHTTP(t, a, "cls", "v1", clsBody(3))
	if rest.code != http.StatusOK {
		t.Fatalf("REST: %d %s", rest.code, rest.body)
	}
	var want []float64
	raw, _ := json.Marshal(rest.resp.Outputs[0].Data)
	json.Unmarshal(raw, &want)

	in := &inferencepb.ModelInferRequest_InferInputTensor{Name: "x", Datatype: "FP32", Shape: []int64{1, 3, 32, 64}}
	req := &inferencepb.ModelInferRequest{ModelName: "cls", ModelVersion: "v1", Id: "g-1",
		Inputs: []*inferencepb.ModelInferRequest_InferInputTensor{in}, RawInputContents: [][]byte{le32(clsInput(3))}}
	check := func(what string, resp *inferencepb.ModelInferResponse, hdr metadata.MD, cache string) {
		t.Helper()
		if len(resp.Outputs) != 1 || len(resp.RawOutputContents) != 1 || resp.ModelVersion != "v1" {
			t.Fatalf("%s: %v", what, resp)
		}
		got := fromLE32(resp.RawOutputContents[0])
		if len(got) != len(want) {
			t.Fatalf("%s: %d values, REST gave %d", what, len(got), len(want))
		}
		for i := range got {
			if float32(got[i]) != float32(want[i]) { // JSON carries a float32 in its shortest form
				t.Fatalf("%s: output %d = %v, REST gave %v", what, i, got[i], want[i])
			}
		}
		if h := hdr.Get("shoal-cache"); len(h) != 1 || h[0] != cache {
			t.Errorf("%s: shoal-cache %v, want %s", what, h, cache)
		}
		if len(hdr.Get("shoal-staleness")) == 0 {
			t.Errorf("%s: no shoal-staleness in %v", what, hdr)
		}
	}
	resp, err := c.ModelInfer(ctx, req, grpc.Header(&hdr))
	if err != nil {
		t.Fatal(err)
	}
	check("raw contents", resp, hdr, api.CacheMiss)
	resp, err = c.ModelInfer(ctx, req, grpc.Header(&hdr))
	if err != nil {
		t.Fatal(err)
	}
	check("repeated", resp, hdr, api.CacheHit)

	// Typed contents instead of raw bytes: the same request, so the
	// same answer (from the cache the raw request filled).
	typed := &inferencepb.ModelInferRequest{ModelName: "cls", Inputs: []*inferencepb.ModelInferRequest_InferInputTensor{{
		Name: "x", Datatype: "FP32", Shape: in.Shape, Contents: &inferencepb.InferTensorContents{Fp32Contents: clsInput(3)}}}}
	resp, err = c.ModelInfer(ctx, typed, grpc.Header(&hdr))
	if err != nil {
		t.Fatal(err)
	}
	check("typed contents", resp, hdr, api.CacheHit)

	// Errors carry the catalogue's code under the matching gRPC code.
	for _, tc := range []struct {
		what string
		call func() error
		code codes.Code
		want string
	}{
		{"unknown model", func() error {
			_, err := c.ModelInfer(ctx, &inferencepb.ModelInferRequest{ModelName: "nope", Inputs: req.Inputs, RawInputContents: req.RawInputContents})
			return err
		}, codes.NotFound, api.CodeModelUnknown},
		{"short tensor", func() error {
			_, err := c.ModelInfer(ctx, &inferencepb.ModelInferRequest{ModelName: "cls", Inputs: req.Inputs, RawInputContents: [][]byte{make([]byte, 12)}})
			return err
		}, codes.InvalidArgument, api.CodeInferenceInput},
		{"bad token", func() error {
			_, err := c.ModelMetadata(metadata.AppendToOutgoingContext(t.Context(), "shoal-after", "garbage"), &inferencepb.ModelMetadataRequest{Name: "cls"})
			return err
		}, codes.InvalidArgument, api.CodeTokenMalformed},
		{"staleness bound", func() error {
			_, err := c.ModelInfer(metadata.AppendToOutgoingContext(t.Context(), "shoal-max-staleness", "0s"), req)
			return err
		}, codes.Unavailable, api.CodeStalenessExceeded},
	} {
		code, ei := errorInfo(tc.call())
		if code != tc.code || ei == nil || ei.Reason != tc.want {
			t.Errorf("%s: %v %v, want %v with reason %s", tc.what, code, ei, tc.code, tc.want)
		}
	}
	// Asked to flag rather than refuse, the same bound answers and says so.
	resp, err = c.ModelInfer(metadata.AppendToOutgoingContext(t.Context(), "shoal-max-staleness", "0s", "shoal-staleness-policy", "flag"), req, grpc.Header(&hdr))
	if err != nil {
		t.Fatal(err)
	}
	if h := hdr.Get("shoal-stale"); len(h) != 1 || h[0] != "true" {
		t.Errorf("flagged answer: shoal-stale %v", h)
	}

	var st api.Status
	do(t, http.MethodGet, baseURL(b)+"/v1/status", nil).json(t, &st)
	if st.GRPCAddr != b.GRPCAddr() {
		t.Errorf("/v1/status grpc_addr %q, want %q", st.GRPCAddr, b.GRPCAddr())
	}
}

// clientMetadata is model metadata as a Triton client returned it.
type clientMetadata struct {
	Name   string
	Inputs []struct {
		Name, Datatype string
		Shape          []any
	}
}

// TestTritonPythonClients points NVIDIA Triton's own Python clients
// (tritonclient[http,grpc] from PyPI, pinned in
// scripts/python-requirements.txt) at a peer, unchanged: liveness,
// readiness and metadata, inference with binary and JSON tensors over
// REST and raw tensors over gRPC — each exactly the bare onnxruntime
// answer — a write's token passed as their headers, and the peer's
// errors raised by the clients as errors with the peer's status.
func TestTritonPythonClients(t *testing.T) {
	out, ref := runPythonClients(t, "e2e/testdata/triton_clients.py")
	var got struct {
		HTTPLive         bool                 `json:"http_live"`
		HTTPModelReady   bool                 `json:"http_model_ready"`
		GRPCLive         bool                 `json:"grpc_live"`
		GRPCServerReady  bool                 `json:"grpc_server_ready"`
		GRPCModelReady   bool                 `json:"grpc_model_ready"`
		HTTPMetadata     clientMetadata       `json:"http_metadata"`
		GRPCMetadata     clientMetadata       `json:"grpc_metadata"`
		HTTPBinary       map[string][]float64 `json:"http_binary"`
		HTTPJSON         map[string][]float64 `json:"http_json"`
		GRPC             map[string][]float64 `json:"grpc"`
		HTTPVersion      string               `json:"http_version"`
		GRPCVersion      string               `json:"grpc_version"`
		HTTPUnknownModel *clientFailure       `json:"http_unknown_model"`
		HTTPBadShape     *clientFailure       `json:"http_bad_shape"`
		GRPCUnknownModel *clientFailure       `json:"grpc_unknown_model"`
		GRPCBadShape     *clientFailure       `json:"grpc_bad_shape"`
		GRPCStale        *clientFailure       `json:"grpc_stale"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if !got.HTTPLive || !got.HTTPModelReady || !got.GRPCLive || !got.GRPCServerReady || !got.GRPCModelReady {
		t.Errorf("health as the clients saw it: %s", out)
	}
	for _, md := range []any{got.HTTPMetadata, got.GRPCMetadata} {
		if s := fmt.Sprint(md); !strings.Contains(s, "cls") || !strings.Contains(s, "FP32") {
			t.Errorf("metadata as a client saw it: %s", s)
		}
	}
	if got.HTTPVersion != "v1" || got.GRPCVersion != "v1" {
		t.Errorf("versions: http %q grpc %q", got.HTTPVersion, got.GRPCVersion)
	}

	for what, outs := range map[string]map[string][]float64{"http binary": got.HTTPBinary, "http json": got.HTTPJSON, "grpc": got.GRPC} {
		sameAsReference(t, what, outs, ref)
	}
	raised(t, map[string]raisedAs{
		"http unknown model": {got.HTTPUnknownModel, "404"},
		"http bad shape":     {got.HTTPBadShape, "400"},
		"grpc unknown model": {got.GRPCUnknownModel, "StatusCode.NOT_FOUND"},
		"grpc bad shape":     {got.GRPCBadShape, "StatusCode.INVALID_ARGUMENT"},
		"grpc stale":         {got.GRPCStale, "StatusCode.UNAVAILABLE"},
	})
}

// clientFailure is an error as a client script reported it.
type clientFailure struct{ Status, Message string }

// raisedAs is what a client should have raised: its report, and the
// status the peer's error must carry.
type raisedAs struct {
	got    *clientFailure
	status string
}

// raised checks that each client raised the peer's error, with its status
// and a message.
func raised(t *testing.T, want map[string]raisedAs) {
	t.Helper()
	for what, f := range want {
		if f.got == nil || f.got.Status != f.status || f.got.Message == "" {
			t.Errorf("%s: the client raised %+v, want status %s with a message", what, f.got, f.status)
		}
	}
}

// runPythonClients starts two peers, activates the cls model on one and
// runs script (one of e2e/testdata's client scripts, in the tests' Python)
// against the other with the model's input and the activation's token. It
// returns what the script printed and the bare onnxruntime outputs of the
// same input, outside any peer.
func runPythonClients(t *testing.T, script string) ([]byte, []inference.ResponseOutput) {
	t.Helper()
	python := testmesh.RepoFile("deps/python/bin/python3")
	if _, err := os.Stat(python); err != nil {
		t.Fatalf("the tests' Python is missing (%v): run `make setup`", err)
	}
	m := startMesh(t, 2, nil)
	v1, _ := clsModels(t)
	tok := push(t, m.Node(0), "cls", "v1", v1, onnxQuery+"&activate=true")
	n := m.Node(1) // the clients talk to a peer that learns of the model by replication
	input := filepath.Join(t.TempDir(), "image.f32")
	if err := os.WriteFile(input, le32(clsInput(5)), 0o600); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(python, testmesh.RepoFile(script), n.APIAddr(), n.GRPCAddr(), "cls", input, tok)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python clients: %v\n%s", err, stderr.String())
	}
	body, _ := json.Marshal(inference.InferRequest{Inputs: []inference.RequestInput{{Name: "x", Shape: []int64{1, 3, 32, 64}, Datatype: "FP32",
		Data: mustJSON(t, clsInput(5))}}})
	var ref []inference.ResponseOutput
	json.Unmarshal([]byte(reference(t, v1, body)), &ref)
	return out, ref
}

// sameAsReference checks that a client's outputs are exactly onnxruntime's.
func sameAsReference(t *testing.T, what string, outs map[string][]float64, ref []inference.ResponseOutput) {
	t.Helper()
	if len(outs) != len(ref) {
		t.Fatalf("%s: %d outputs, the model has %d", what, len(outs), len(ref))
	}
	for _, r := range ref {
		var want []float64
		json.Unmarshal(mustJSON(t, r.Data), &want)
		got := outs[r.Name]
		if len(got) != len(want) {
			t.Fatalf("%s: output %s has %d values, want %d", what, r.Name, len(got), len(want))
		}
		for i := range want {
			if float32(got[i]) != float32(want[i]) {
				t.Fatalf("%s: output %s[%d] = %v, onnxruntime gave %v", what, r.Name, i, got[i], want[i])
			}
		}
	}
}

// TestKServePythonClients points the KServe SDK's own inference clients
// (kserve from PyPI, pinned in scripts/python-requirements.txt) at a peer,
// unchanged, speaking the v2 protocol: liveness and readiness, inference
// with JSON and binary tensors over REST and over gRPC — each exactly the
// bare onnxruntime answer — a write's token passed as their headers, and
// an unknown model raised by each client as an error with the peer's
// status. (The SDK's REST client drops model_version from the response
// body: the script reads the peer's Shoal-Model-Version header instead.)
func TestKServePythonClients(t *testing.T) {
	out, ref := runPythonClients(t, "e2e/testdata/kserve_clients.py")
	var got struct {
		RESTLive         bool                 `json:"rest_live"`
		RESTReady        bool                 `json:"rest_ready"`
		RESTModelReady   bool                 `json:"rest_model_ready"`
		GRPCLive         bool                 `json:"grpc_live"`
		GRPCReady        bool                 `json:"grpc_ready"`
		GRPCModelReady   bool                 `json:"grpc_model_ready"`
		RESTJSON         map[string][]float64 `json:"rest_json"`
		RESTBinary       map[string][]float64 `json:"rest_binary"`
		GRPC             map[string][]float64 `json:"grpc"`
		RESTVersion      string               `json:"rest_version"`
		GRPCVersion      string               `json:"grpc_version"`
		RESTUnknownModel *clientFailure       `json:"rest_unknown_model"`
		GRPCUnknownModel *clientFailure       `json:"grpc_unknown_model"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if !got.RESTLive || !got.RESTReady || !got.RESTModelReady || !got.GRPCLive || !got.GRPCReady || !got.GRPCModelReady {
		t.Errorf("health as the clients saw it: %s", out)
	}
	if got.RESTVersion != "v1" || got.GRPCVersion != "v1" {
		t.Errorf("versions: rest %q grpc %q", got.RESTVersion, got.GRPCVersion)
	}
	for what, outs := range map[string]map[string][]float64{"rest json": got.RESTJSON, "rest binary": got.RESTBinary, "grpc": got.GRPC} {
		sameAsReference(t, what, outs, ref)
	}
	raised(t, map[string]raisedAs{
		"rest unknown model": {got.RESTUnknownModel, "404"},
		"grpc unknown model": {got.GRPCUnknownModel, "NOT_FOUND"},
	})
}

func mustJSON(t *testing.T, v any) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
