package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"github.com/shoal-mesh/shoal/api"
	"math"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/shoal-mesh/shoal/e2e/testmesh"
	"github.com/shoal-mesh/shoal/inference"
	"github.com/shoal-mesh/shoal/peer"
)

// benchPeer starts one peer serving the classifier as cls@v1.
func benchPeer(b *testing.B, cacheBytes int64) *peer.Node {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, err := testmesh.Start(ctx, testmesh.Options{N: 1, Dir: b.TempDir(), Tweak: func(_ int, c *peer.Config) { c.CacheBytes = cacheBytes }})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	n := m.Node(0)
	data, err := testmesh.Model("ocr-cls.onnx")
	if err != nil {
		b.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodPut, "/v1/models/cls/versions/v1?activate=true&"+onnxQuery, bytes.NewReader(data))
	rec := httptest.NewRecorder()
	n.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusCreated {
		b.Fatalf("push: %d %s", rec.Code, rec.Body)
	}
	if err := testmesh.Eventually(ctx, 20*time.Millisecond, func() error {
		if v, _ := n.Serving("cls"); v != "v1" {
			return fmt.Errorf("not serving")
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
	return n
}

func serveInfer(b *testing.B, h http.Handler, body []byte, wantCache string) {
	req := httptest.NewRequest(http.MethodPost, "/v2/models/cls/infer", bytes.NewReader(body))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != 200 || (wantCache != "" && rec.Header().Get(api.HeaderCache) != wantCache) {
		b.Fatalf("%d cache %q %s", rec.Code, rec.Header().Get(api.HeaderCache), rec.Body)
	}
}

// BenchmarkCacheHit is a result-cache hit through the peer's handler,
// in-process. Target: p99 < 200 µs (see docs/benchmarks.md).
func BenchmarkCacheHit(b *testing.B) {
	n := benchPeer(b, 64<<20)
	body := clsBody(1)
	h := n.Handler()
	serveInfer(b, h, body, "")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		serveInfer(b, h, body, api.CacheHit)
	}
}

// BenchmarkInferJSON is an uncached inference through the handler.
func BenchmarkInferJSON(b *testing.B) {
	n := benchPeer(b, -1)
	body := clsBody(1)
	h := n.Handler()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		serveInfer(b, h, body, api.CacheBypass)
	}
}

// BenchmarkInferBinary is an uncached inference with the binary tensor
// extension, the lowest-overhead way in.
func BenchmarkInferBinary(b *testing.B) {
	n := benchPeer(b, -1)
	var jreq struct {
		Inputs []struct {
			Data []float32 `json:"data"`
		} `json:"inputs"`
	}
	json.Unmarshal(clsBody(1), &jreq)
	var raw []byte
	for _, f := range jreq.Inputs[0].Data {
		raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(f))
	}
	header := fmt.Sprintf(`{"inputs":[{"name":"x","shape":[1,3,32,64],"datatype":"FP32","parameters":{"binary_data_size":%d}}],"parameters":{"binary_data_output":true}}`, len(raw))
	body := append([]byte(header), raw...)
	h := n.Handler()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		req := httptest.NewRequest(http.MethodPost, "/v2/models/cls/infer", bytes.NewReader(body))
		req.Header.Set(inference.HeaderInferenceHeaderLength, fmt.Sprint(len(header)))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 {
			b.Fatalf("%d %s", rec.Code, rec.Body)
		}
	}
}
