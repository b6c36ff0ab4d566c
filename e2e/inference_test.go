package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"github.com/shoal-mesh/shoal/api"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/e2e/testmesh"
	"github.com/shoal-mesh/shoal/inference"
	"github.com/shoal-mesh/shoal/inference/onnxmodel"
	"github.com/shoal-mesh/shoal/peer"
)

const onnxQuery = "media_type=" + models.MediaTypeONNX

// clsModels returns the real PaddleOCR text-direction classifier (v1) and
// a derived version with scaled weights (v2): same interface, different
// outputs.
func clsModels(t *testing.T) (v1, v2 []byte) {
	t.Helper()
	v1, err := testmesh.Model("ocr-cls.onnx")
	if err != nil {
		t.Fatal(err)
	}
	v2, err = onnxmodel.ScaleWeights(v1, 0.8)
	if err != nil {
		t.Fatal(err)
	}
	return v1, v2
}

// clsBody is an OIP v2 request: one 1×3×32×64 image following seed.
func clsBody(seed int) []byte {
	data := make([]float32, 3*32*64)
	for i := range data {
		data[i] = float32(math.Sin(float64(i)*0.013+float64(seed))) * 0.7
	}
	raw, _ := json.Marshal(data)
	b, _ := json.Marshal(inference.InferRequest{ID: fmt.Sprintf("req-%d", seed),
		Inputs: []inference.RequestInput{{Name: "x", Shape: []int64{1, 3, 32, 64}, Datatype: "FP32", Data: raw}}})
	return b
}

type inferResult struct {
	httpResult
	resp inference.InferResponse
}

func inferHTTP(t *testing.T, n *peer.Node, model, version string, body []byte, headers ...string) inferResult {
	t.Helper()
	path := "/v2/models/" + model
	if version != "" {
		path += "/versions/" + version
	}
	res := inferResult{httpResult: do(t, http.MethodPost, baseURL(n)+path+"/infer", body, headers...)}
	if res.code == http.StatusOK {
		res.json(t, &res.resp)
	}
	return res
}

// outputsOf is the canonical text of a response's outputs.
func outputsOf(r inference.InferResponse) string {
	b, _ := json.Marshal(r.Outputs)
	return string(b)
}

// reference computes a request's outputs with a bare onnxruntime session,
// outside any peer.
func reference(t *testing.T, model []byte, body []byte) string {
	t.Helper()
	e, err := inference.Open(inference.Config{Library: testmesh.RepoFile("deps/onnxruntime/libonnxruntime.so"), Device: inference.DeviceCPU, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	s, err := e.Load(context.Background(), inference.Ref{Model: "ref", Version: "ref"}, model, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Retire()
	var req inference.InferRequest
	if err := json.Unmarshal(body, &req); err != nil {
		t.Fatal(err)
	}
	p, err := s.Prepare(&req)
	if err != nil {
		t.Fatal(err)
	}
	out, err := s.Run(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	// Through JSON, as a peer's response would carry it.
	b, _ := json.Marshal(out)
	var back []inference.ResponseOutput
	json.Unmarshal(b, &back)
	return outputsOf(inference.InferResponse{Outputs: back})
}

func TestPinnedInferenceAcrossPeersAndActivation(t *testing.T) {
	m := startMesh(t, 3, nil)
	v1, v2 := clsModels(t)
	body := clsBody(1)
	want1, want2 := reference(t, v1, body), reference(t, v2, body)
	if want1 == want2 {
		t.Fatal("v1 and v2 compute the same outputs; the test would prove nothing")
	}
	push(t, m.Node(0), "cls", "v1", v1, onnxQuery+"&activate=true")
	tok := push(t, m.Node(0), "cls", "v2", v2, onnxQuery)

	far := m.Node(2)
	// Pinned requests on peer 3: each version's exact outputs. v2 is not
	// activated and not local yet; the request waits for the fetch and
	// the load within its deadline.
	for _, tc := range []struct{ version, want string }{{"v2", want2}, {"v1", want1}} {
		r := inferHTTP(t, far, "cls", tc.version, body, api.HeaderAfter, tok)
		if r.code != http.StatusOK {
			t.Fatalf("pinned %s: %d %s", tc.version, r.code, r.body)
		}
		if r.resp.ModelVersion != tc.version || r.header.Get(api.HeaderModelVersion) != tc.version || r.resp.ModelName != "cls" {
			t.Errorf("pinned %s answered by %q / %q", tc.version, r.resp.ModelVersion, r.header.Get(api.HeaderModelVersion))
		}
		if got := outputsOf(r.resp); got != tc.want {
			t.Errorf("pinned %s outputs %s, want %s", tc.version, got, tc.want)
		}
		if r.resp.ID != "req-1" {
			t.Errorf("id %q not echoed", r.resp.ID)
		}
	}
	// Unpinned follows activation.
	eventually(t, "peer 3 answers unpinned with v1", func() error {
		r := inferHTTP(t, far, "cls", "", body)
		if r.code != 200 || r.resp.ModelVersion != "v1" || outputsOf(r.resp) != want1 {
			return fmt.Errorf("%d %s %s", r.code, r.resp.ModelVersion, r.body)
		}
		return nil
	})
	res := do(t, http.MethodPost, baseURL(m.Node(0))+"/v1/models/cls/activate", []byte(`{"version":"v2"}`))
	if res.code != http.StatusOK {
		t.Fatalf("activate: %d %s", res.code, res.body)
	}
	eventually(t, "peer 3 answers unpinned with v2", func() error {
		r := inferHTTP(t, far, "cls", "", body)
		if r.code != 200 || r.resp.ModelVersion != "v2" || outputsOf(r.resp) != want2 {
			return fmt.Errorf("%d %s", r.code, r.resp.ModelVersion)
		}
		return nil
	})
	// Pinned v1 still answers v1 after the switch.
	if r := inferHTTP(t, far, "cls", "v1", body); r.code != 200 || r.resp.ModelVersion != "v1" || outputsOf(r.resp) != want1 {
		t.Errorf("pinned v1 after switch: %d %s", r.code, r.resp.ModelVersion)
	}
}

func TestHotSwapUnderLoadDropsNothing(t *testing.T) {
	const clients, duration = 50, 10 * time.Second
	// The cache is off so that every request runs a session.
	m := startMesh(t, 1, func(_ int, c *peer.Config) { c.CacheBytes = -1 })
	n := m.Node(0)
	v1, v2 := clsModels(t)
	bodies := make([][]byte, 4)
	want := map[string][]string{}
	for i := range bodies {
		bodies[i] = clsBody(i)
		want["v1"] = append(want["v1"], reference(t, v1, bodies[i]))
		want["v2"] = append(want["v2"], reference(t, v2, bodies[i]))
	}
	push(t, n, "cls", "v1", v1, onnxQuery+"&activate=true")
	push(t, n, "cls", "v2", v2, onnxQuery+"&prefetch=true")
	eventually(t, "v1 serving", func() error {
		if r := inferHTTP(t, n, "cls", "", bodies[0]); r.code != 200 || r.resp.ModelVersion != "v1" {
			return fmt.Errorf("%d %s", r.code, r.body)
		}
		return nil
	})

	var (
		total, failed, wrong, oldAfterSwitch atomic.Int64
		switchedAt                           atomic.Int64 // unix nanos when v2 was first seen serving
		mu                                   sync.Mutex
		firstErr                             string
	)
	client := &http.Client{Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(duration) // how long the load runs, not a wait
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline); i++ {
				k := (c + i) % len(bodies)
				started := time.Now().UnixNano()
				resp, err := client.Post(baseURL(n)+"/v2/models/cls/infer", "application/json", bytes.NewReader(bodies[k]))
				total.Add(1)
				if err != nil {
					failed.Add(1)
					mu.Lock()
					firstErr = err.Error()
					mu.Unlock()
					continue
				}
				var r inference.InferResponse
				err = json.NewDecoder(resp.Body).Decode(&r)
				resp.Body.Close()
				if resp.StatusCode != 200 || err != nil {
					failed.Add(1)
					mu.Lock()
					firstErr = fmt.Sprintf("status %d, %v", resp.StatusCode, err)
					mu.Unlock()
					continue
				}
				if r.ModelVersion != resp.Header.Get(api.HeaderModelVersion) || outputsOf(r) != want[r.ModelVersion][k] {
					wrong.Add(1)
				}
				if sw := switchedAt.Load(); sw != 0 && started > sw && r.ModelVersion != "v2" {
					oldAfterSwitch.Add(1)
				}
			}
		}(c)
	}
	time.Sleep(duration / 3) // the switch comes a third into the load: the scenario's timing, not synchronisation
	res := do(t, http.MethodPost, baseURL(n)+"/v1/models/cls/activate", []byte(`{"version":"v2"}`))
	if res.code != http.StatusOK {
		t.Fatalf("activate: %d %s", res.code, res.body)
	}
	eventually(t, "v2 serving", func() error {
		if v, _ := n.Serving("cls"); v != "v2" {
			return fmt.Errorf("serving %q", v)
		}
		switchedAt.Store(time.Now().UnixNano())
		return nil
	})
	wg.Wait()
	t.Logf("%d requests from %d clients in %s; switch at %s", total.Load(), clients, duration, time.Unix(0, switchedAt.Load()).Format(time.StampMilli))
	if failed.Load() != 0 {
		t.Errorf("%d of %d requests failed (e.g. %s)", failed.Load(), total.Load(), firstErr)
	}
	if wrong.Load() != 0 {
		t.Errorf("%d responses did not carry the outputs of the version they named", wrong.Load())
	}
	if oldAfterSwitch.Load() != 0 {
		t.Errorf("%d requests sent after the switch were answered by v1", oldAfterSwitch.Load())
	}
	if total.Load() < clients {
		t.Errorf("only %d requests ran", total.Load())
	}
}

func TestCorruptModelIsMarkedBadAndPreviousKeepsServing(t *testing.T) {
	m := startMesh(t, 2, nil)
	v1, _ := clsModels(t)
	body := clsBody(2)
	push(t, m.Node(0), "cls", "v1", v1, onnxQuery+"&activate=true")
	for i := 0; i < 2; i++ {
		eventually(t, "v1 serving", func() error {
			if r := inferHTTP(t, m.Node(i), "cls", "", body); r.code != 200 || r.resp.ModelVersion != "v1" {
				return fmt.Errorf("peer %d: %d %s", i, r.code, r.body)
			}
			return nil
		})
	}
	// Validly signed, sha256 matches, but onnxruntime cannot load it.
	corrupt := append([]byte(nil), v1[:len(v1)/3]...)
	push(t, m.Node(0), "cls", "v2", corrupt, onnxQuery+"&activate=true")
	for i := 0; i < 2; i++ {
		n := m.Node(i)
		eventually(t, "v2 marked bad", func() error {
			var mi api.ModelInfo
			do(t, "GET", baseURL(n)+"/v1/models/cls", nil).json(t, &mi)
			for _, v := range mi.Versions {
				if v.Version == "v2" && v.LoadError != "" {
					if !strings.Contains(v.LoadError, "does not load") {
						return fmt.Errorf("reason %q", v.LoadError)
					}
					return nil
				}
			}
			return fmt.Errorf("peer %d: v2 not marked bad yet", i)
		})
		if r := inferHTTP(t, n, "cls", "", body); r.code != 200 || r.resp.ModelVersion != "v1" {
			t.Errorf("peer %d after bad v2: %d %s", i, r.code, r.body)
		}
		if v, _ := n.Serving("cls"); v != "v1" {
			t.Errorf("peer %d serves %q", i, v)
		}
		r := inferHTTP(t, n, "cls", "v2", body)
		if r.code != http.StatusConflict || r.errCode() != api.CodeModelLoadFailed {
			t.Errorf("pinned bad v2: %d %s", r.code, r.body)
		}
		if got := metricValue(t, n, "shoal_model_load_failures_total", map[string]string{"model": "cls"}); got < 1 {
			t.Errorf("load failures metric %v", got)
		}
		var st api.Status
		do(t, "GET", baseURL(n)+"/v1/status", nil).json(t, &st)
		if st.Inference.Bad["cls@v2"] == "" || st.Models[0].Bad != 1 {
			t.Errorf("status does not show v2 bad: %+v %+v", st.Inference.Bad, st.Models)
		}
	}
}

func TestMalformedTensorsAreRejectedAndThePeerKeepsServing(t *testing.T) {
	m := startMesh(t, 1, nil)
	n := m.Node(0)
	v1, _ := clsModels(t)
	push(t, n, "cls", "v1", v1, onnxQuery+"&activate=true")
	good := clsBody(3)
	eventually(t, "serving", func() error {
		if r := inferHTTP(t, n, "cls", "", good); r.code != 200 {
			return fmt.Errorf("%d %s", r.code, r.body)
		}
		return nil
	})
	input := func(mod func(in map[string]any)) []byte {
		var req map[string]any
		json.Unmarshal(good, &req)
		in := req["inputs"].([]any)[0].(map[string]any)
		mod(in)
		b, _ := json.Marshal(req)
		return b
	}
	huge := append([]byte(`{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[`), bytes.Repeat([]byte("0,"), 33<<20)...)
	huge = append(huge, []byte(`0]}]}`)...)
	for _, tc := range []struct {
		name string
		body []byte
		code int
		msg  string
		api  string
	}{
		{"wrong shape", input(func(in map[string]any) { in["shape"] = []int{1, 4, 32, 48} }), 400, "dimension 1 must be 3", api.CodeInferenceInput},
		{"wrong rank", input(func(in map[string]any) { in["shape"] = []int{3, 32, 64} }), 400, "has 3 dimensions", api.CodeInferenceInput},
		{"wrong datatype", input(func(in map[string]any) { in["datatype"] = "INT32" }), 400, "datatype INT32, the model expects FP32", api.CodeInferenceInput},
		{"data length mismatch", input(func(in map[string]any) { in["shape"] = []int{1, 3, 32, 65} }), 400, "which needs 6240", api.CodeInferenceInput},
		{"unknown input name", input(func(in map[string]any) { in["name"] = "image" }), 400, `missing input "x"`, api.CodeInferenceInput},
		{"strings in a float tensor", input(func(in map[string]any) { in["data"] = []string{"a", "b", "c"}; in["shape"] = []int{1, 3, 1, 1} }), 400, "not a number", api.CodeInferenceInput},
		{"not JSON", []byte("{inputs"), 400, "not an OIP v2 inference request", api.CodeInferenceInput},
		{"no inputs", []byte(`{"inputs":[]}`), 400, "no inputs", api.CodeInferenceInput},
		{"huge body", huge, 413, "larger than", api.CodeBodyTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := inferHTTP(t, n, "cls", "", tc.body)
			if r.code != tc.code || r.errCode() != tc.api || !strings.Contains(r.errMsg(), tc.msg) {
				t.Errorf("%d %s, want %d %s with %q", r.code, truncate(r.body), tc.code, tc.api, tc.msg)
			}
			if r := inferHTTP(t, n, "cls", "", good); r.code != 200 {
				t.Errorf("peer stopped serving: %d %s", r.code, r.body)
			}
		})
	}
}

func truncate(b []byte) string {
	if len(b) > 300 {
		return string(b[:300]) + "..."
	}
	return string(b)
}

// TestOpenInferenceProtocolConformance sends the protocol's documented
// request and response shapes to every endpoint, good and bad.
func TestOpenInferenceProtocolConformance(t *testing.T) {
	m := startMesh(t, 1, nil)
	n := m.Node(0)
	base := baseURL(n)

	// Live before anything is loaded; ready (vacuously) with no models.
	var live map[string]any
	r := do(t, "GET", base+"/v2/health/live", nil)
	r.json(t, &live)
	if r.code != 200 || live["live"] != true {
		t.Errorf("live: %d %s", r.code, r.body)
	}
	var srv inference.ServerMetadata
	r = do(t, "GET", base+"/v2", nil)
	r.json(t, &srv)
	if r.code != 200 || srv.Name != "shoal" || srv.Version == "" || srv.Extensions == nil {
		t.Errorf("server metadata: %d %s", r.code, r.body)
	}

	v1, _ := clsModels(t)
	tok := push(t, n, "cls", "v1", v1, onnxQuery+"&activate=true")
	eventually(t, "ready", func() error {
		if r := do(t, "GET", base+"/v2/health/ready", nil); r.code != 200 {
			return fmt.Errorf("%d %s", r.code, r.body)
		}
		return nil
	})
	push(t, n, "blob", "b1", []byte("not a model"), "activate=true")

	var md inference.ModelMetadata
	r = do(t, "GET", base+"/v2/models/cls", nil, api.HeaderAfter, tok)
	r.json(t, &md)
	if r.code != 200 || md.Name != "cls" || md.Platform != "onnxruntime_onnx" || len(md.Versions) != 1 || md.Versions[0] != "v1" {
		t.Errorf("model metadata: %d %s", r.code, r.body)
	}
	if len(md.Inputs) != 1 || md.Inputs[0].Name != "x" || md.Inputs[0].Datatype != "FP32" || fmt.Sprint(md.Inputs[0].Shape) != "[-1 3 -1 -1]" {
		t.Errorf("inputs %+v", md.Inputs)
	}
	if len(md.Outputs) != 1 || md.Outputs[0].Datatype != "FP32" || len(md.Outputs[0].Shape) != 2 {
		t.Errorf("outputs %+v", md.Outputs)
	}
	r = do(t, "GET", base+"/v2/models/cls/versions/v1", nil)
	r.json(t, &md)
	if r.code != 200 || md.Name != "cls" || fmt.Sprint(md.Versions) != "[v1]" {
		t.Errorf("version metadata: %d %s", r.code, r.body)
	}
	var ready map[string]any
	r = do(t, "GET", base+"/v2/models/cls/ready", nil)
	r.json(t, &ready)
	if r.code != 200 || ready["ready"] != true || ready["name"] != "cls" {
		t.Errorf("model ready: %d %s", r.code, r.body)
	}
	r = do(t, "GET", base+"/v2/models/cls/versions/v1/ready", nil)
	if r.code != 200 {
		t.Errorf("version ready: %d %s", r.code, r.body)
	}

	// Inference with an id, parameters and a requested output.
	var req map[string]any
	json.Unmarshal(clsBody(4), &req)
	req["id"] = "conformance-1"
	req["parameters"] = map[string]any{"priority": 1}
	req["outputs"] = []map[string]any{{"name": md.Outputs[0].Name}}
	body, _ := json.Marshal(req)
	for _, path := range []string{"/v2/models/cls/infer", "/v2/models/cls/versions/v1/infer"} {
		r = do(t, "POST", base+path, body, "Content-Type", "application/json")
		var resp map[string]any
		r.json(t, &resp)
		if r.code != 200 || resp["model_name"] != "cls" || resp["model_version"] != "v1" || resp["id"] != "conformance-1" {
			t.Fatalf("%s: %d %s", path, r.code, truncate(r.body))
		}
		outs := resp["outputs"].([]any)
		o := outs[0].(map[string]any)
		if len(outs) != 1 || o["name"] != md.Outputs[0].Name || o["datatype"] != "FP32" || fmt.Sprint(o["shape"]) != "[1 2]" || len(o["data"].([]any)) != 2 {
			t.Errorf("%s outputs %v", path, outs)
		}
	}
	// Nested data is accepted as row-major.
	nested := []byte(`{"inputs":[{"name":"x","shape":[1,3,32,32],"datatype":"FP32","data":` + nestedZeros(1, 3, 32, 32) + `}]}`)
	if r := do(t, "POST", base+"/v2/models/cls/infer", nested); r.code != 200 {
		t.Errorf("nested data: %d %s", r.code, truncate(r.body))
	}

	// The binary tensor data extension: raw input bytes after the JSON
	// header, and a binary output back; same numbers as the JSON request.
	jsonRes := inferHTTP(t, n, "cls", "", clsBody(7))
	img := make([]byte, 0, 3*32*64*4)
	var jreq inference.InferRequest
	json.Unmarshal(clsBody(7), &jreq)
	var floats []float32
	json.Unmarshal(jreq.Inputs[0].Data, &floats)
	for _, f := range floats {
		img = binary.LittleEndian.AppendUint32(img, math.Float32bits(f))
	}
	header := fmt.Sprintf(`{"inputs":[{"name":"x","shape":[1,3,32,64],"datatype":"FP32","parameters":{"binary_data_size":%d}}],"outputs":[{"name":%q,"parameters":{"binary_data":true}}]}`, len(img), md.Outputs[0].Name)
	r = do(t, "POST", base+"/v2/models/cls/infer", append([]byte(header), img...),
		inference.HeaderInferenceHeaderLength, fmt.Sprint(len(header)), "Content-Type", "application/octet-stream")
	hl, _ := strconv.Atoi(r.header.Get(inference.HeaderInferenceHeaderLength))
	if r.code != 200 || hl <= 0 || hl > len(r.body) {
		t.Fatalf("binary request: %d %s %s", r.code, r.header, truncate(r.body))
	}
	var bresp inference.InferResponse
	if err := json.Unmarshal(r.body[:hl], &bresp); err != nil {
		t.Fatal(err)
	}
	raw := r.body[hl:]
	if len(bresp.Outputs) != 1 || fmt.Sprint(bresp.Outputs[0].Parameters["binary_data_size"]) != "8" || len(raw) != 8 {
		t.Fatalf("binary response %+v, %d bytes", bresp, len(raw))
	}
	got := []float32{math.Float32frombits(binary.LittleEndian.Uint32(raw)), math.Float32frombits(binary.LittleEndian.Uint32(raw[4:]))}
	var want []float32
	for _, v := range jsonRes.resp.Outputs[0].Data.([]any) {
		want = append(want, float32(v.(float64)))
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("binary outputs %v, JSON outputs %v", got, want)
	}
	if r := do(t, "POST", base+"/v2/models/cls/infer", append([]byte(header), img[:100]...), inference.HeaderInferenceHeaderLength, fmt.Sprint(len(header))); r.code != 400 || !strings.Contains(r.errMsg(), "binary_data_size") {
		t.Errorf("short binary body: %d %s", r.code, r.body)
	}

	// Errors: the protocol's {"error": "..."} with the right status.
	for _, tc := range []struct {
		name, method, path string
		body               []byte
		code               int
	}{
		{"metadata of an unknown model", "GET", "/v2/models/nope", nil, 404},
		{"metadata of an unknown version", "GET", "/v2/models/cls/versions/v9", nil, 404},
		{"ready of an unknown model", "GET", "/v2/models/nope/ready", nil, 404},
		{"ready of an unknown version", "GET", "/v2/models/cls/versions/v9/ready", nil, 404},
		{"infer on an unknown model", "POST", "/v2/models/nope/infer", clsBody(0), 404},
		{"infer on an unknown version", "POST", "/v2/models/cls/versions/v9/infer", clsBody(0), 404},
		{"infer on an artifact that is not a model", "POST", "/v2/models/blob/infer", clsBody(0), 400},
		{"infer with a bad body", "POST", "/v2/models/cls/infer", []byte(`[]`), 400},
		{"unknown output", "POST", "/v2/models/cls/infer", []byte(`{"inputs":[{"name":"x","shape":[1,3,32,32],"datatype":"FP32","data":` + nestedZeros(1, 3, 32, 32) + `}],"outputs":[{"name":"nope"}]}`), 400},
		{"wrong method", "GET", "/v2/models/cls/infer", nil, 404},
	} {
		r := do(t, tc.method, base+tc.path, tc.body)
		if r.code != tc.code || r.errMsg() == "" {
			t.Errorf("%s: %d %s, want %d with a JSON error", tc.name, r.code, truncate(r.body), tc.code)
		}
	}
}

func nestedZeros(dims ...int) string {
	if len(dims) == 0 {
		return "0"
	}
	parts := make([]string, dims[0])
	inner := nestedZeros(dims[1:]...)
	for i := range parts {
		parts[i] = inner
	}
	return "[" + strings.Join(parts, ",") + "]"
}

func TestResultCacheHitsMissesAndReplicatedFlush(t *testing.T) {
	m := startMesh(t, 2, nil)
	v1, v2 := clsModels(t)
	body := clsBody(5)
	push(t, m.Node(0), "cls", "v1", v1, onnxQuery+"&activate=true")
	n := m.Node(1)
	eventually(t, "peer 2 serves", func() error {
		if r := inferHTTP(t, n, "cls", "", body); r.code != 200 {
			return fmt.Errorf("%d %s", r.code, r.body)
		}
		return nil
	})
	first := inferHTTP(t, n, "cls", "", clsBody(6))
	second := inferHTTP(t, n, "cls", "", clsBody(6))
	if first.header.Get(api.HeaderCache) != "miss" || second.header.Get(api.HeaderCache) != "hit" {
		t.Errorf("cache headers %q then %q", first.header.Get(api.HeaderCache), second.header.Get(api.HeaderCache))
	}
	if outputsOf(first.resp) != outputsOf(second.resp) || second.resp.ID != "req-6" {
		t.Errorf("hit differs from the miss: %s vs %s (id %q)", outputsOf(first.resp), outputsOf(second.resp), second.resp.ID)
	}
	if hits := metricValue(t, n, "shoal_cache_requests_total", map[string]string{"model": "cls", "version": "v1", "result": "hit"}); hits < 1 {
		t.Errorf("hit counter %v", hits)
	}
	if cold := metricValue(t, n, "shoal_cache_requests_total", map[string]string{"model": "cls", "version": "v1", "result": "cold_miss"}); cold != 1 {
		t.Errorf("cold_miss counter %v, want 1", cold)
	}
	if b := metricValue(t, n, "shoal_cache_bytes", nil); b <= 0 {
		t.Errorf("cache bytes %v", b)
	}

	// A flush on peer 1 reaches peer 2: the next request misses.
	res := do(t, "POST", baseURL(m.Node(0))+"/v1/cache/flush?model=cls", nil)
	if res.code != 200 {
		t.Fatalf("flush: %d %s", res.code, res.body)
	}
	tok := res.header.Get(api.HeaderToken)
	r := inferHTTP(t, n, "cls", "", clsBody(6), api.HeaderAfter, tok)
	if r.code != 200 || r.header.Get(api.HeaderCache) != "miss" {
		t.Errorf("after the replicated flush: %d cache %q", r.code, r.header.Get(api.HeaderCache))
	}
	if r := inferHTTP(t, n, "cls", "", clsBody(6)); r.header.Get(api.HeaderCache) != "hit" {
		t.Errorf("no hit after refilling: %q", r.header.Get(api.HeaderCache))
	}

	// A new version never answers from the old version's entries.
	push(t, m.Node(0), "cls", "v2", v2, onnxQuery+"&activate=true")
	eventually(t, "v2 serving on peer 2", func() error {
		if v, _ := n.Serving("cls"); v != "v2" {
			return fmt.Errorf("serving %q", v)
		}
		return nil
	})
	r = inferHTTP(t, n, "cls", "", clsBody(6))
	if r.resp.ModelVersion != "v2" || r.header.Get(api.HeaderCache) != "miss" || outputsOf(r.resp) != reference(t, v2, clsBody(6)) {
		t.Errorf("v2 request: %s cache %q", r.resp.ModelVersion, r.header.Get(api.HeaderCache))
	}

	// A model that opts out is never cached.
	push(t, m.Node(0), "vad", "v1", v1, onnxQuery+"&activate=true&no_cache=true")
	eventually(t, "no-cache model serving", func() error {
		if r := inferHTTP(t, n, "vad", "", body); r.code != 200 {
			return fmt.Errorf("%d %s", r.code, r.body)
		}
		return nil
	})
	if r := inferHTTP(t, n, "vad", "", body); r.header.Get(api.HeaderCache) != "bypass" {
		t.Errorf("opted-out model: cache %q", r.header.Get(api.HeaderCache))
	}
}

// metricValue scrapes one sample from a peer's /metrics (sum over
// samples matching labels).
func metricValue(t *testing.T, n *peer.Node, name string, labels map[string]string) float64 {
	t.Helper()
	res := do(t, "GET", baseURL(n)+"/metrics", nil)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(res.body))
	if err != nil {
		t.Fatal(err)
	}
	fam, ok := fams[name]
	if !ok {
		return math.NaN()
	}
	var sum float64
	for _, mt := range fam.Metric {
		match := true
		for k, v := range labels {
			found := false
			for _, lp := range mt.Label {
				if lp.GetName() == k && lp.GetValue() == v {
					found = true
				}
			}
			match = match && found
		}
		if !match {
			continue
		}
		switch {
		case mt.Counter != nil:
			sum += mt.Counter.GetValue()
		case mt.Gauge != nil:
			sum += mt.Gauge.GetValue()
		}
	}
	return sum
}
