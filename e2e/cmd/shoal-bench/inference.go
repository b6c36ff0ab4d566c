package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"github.com/shoal-mesh/shoal/api"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/e2e/testmesh"
	"github.com/shoal-mesh/shoal/inference"
	"github.com/shoal-mesh/shoal/peer"
)

// benchModel is one model measured by the inference scenario.
type benchModel struct {
	name  string // deps/models file
	shape []int64
}

func (b benchModel) elements() int {
	n := 1
	for _, d := range b.shape {
		n *= int(d)
	}
	return n
}

func (b benchModel) input() []float32 {
	data := make([]float32, b.elements())
	for i := range data {
		data[i] = float32(math.Sin(float64(i)*0.01)) * 0.5
	}
	return data
}

func (b benchModel) jsonBody() []byte {
	raw, _ := json.Marshal(b.input())
	body, _ := json.Marshal(inference.InferRequest{Inputs: []inference.RequestInput{{Name: "x", Shape: b.shape, Datatype: "FP32", Data: raw}}})
	return body
}

// binaryBody is the request in the binary tensor data extension.
func (b benchModel) binaryBody() ([]byte, int) {
	var raw []byte
	for _, f := range b.input() {
		raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(f))
	}
	shape, _ := json.Marshal(b.shape)
	header := fmt.Sprintf(`{"inputs":[{"name":"x","shape":%s,"datatype":"FP32","parameters":{"binary_data_size":%d}}],"parameters":{"binary_data_output":true}}`, shape, len(raw))
	return append([]byte(header), raw...), len(header)
}

type latencies []time.Duration

func (l latencies) pct(p float64) time.Duration {
	s := append(latencies(nil), l...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(int(float64(len(s))*p), len(s)-1)]
}

func us(d time.Duration) string { return fmt.Sprintf("%d µs", d.Microseconds()) }

// bareRun times onnxruntime's Run on a session made with the same
// settings the peer uses (default threads), inputs preallocated.
func bareRun(m benchModel, iters, threads int) (latencies, error) {
	path := testmesh.RepoFile("deps/models/" + m.name)
	ins, outs, err := ort.GetInputOutputInfo(path)
	if err != nil {
		return nil, err
	}
	opts, err := ort.NewSessionOptions()
	if err != nil {
		return nil, err
	}
	defer opts.Destroy()
	if err := inference.ApplyThreading(opts, threads); err != nil {
		return nil, err
	}
	s, err := ort.NewDynamicAdvancedSession(path, []string{ins[0].Name}, []string{outs[0].Name}, opts)
	if err != nil {
		return nil, err
	}
	defer s.Destroy()
	in, err := ort.NewTensor(ort.NewShape(m.shape...), m.input())
	if err != nil {
		return nil, err
	}
	defer in.Destroy()
	var lat latencies
	for i := 0; i < iters+20; i++ {
		out := []ort.Value{nil}
		start := time.Now()
		if err := s.Run([]ort.Value{in}, out); err != nil {
			return nil, err
		}
		if i >= 20 {
			lat = append(lat, time.Since(start))
		}
		out[0].Destroy()
	}
	return lat, nil
}

func httpLatencies(url string, body []byte, headerLen, iters int) (latencies, error) {
	client := &http.Client{}
	var lat latencies
	for i := 0; i < iters+20; i++ {
		req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
		if headerLen >= 0 {
			req.Header.Set(inference.HeaderInferenceHeaderLength, fmt.Sprint(headerLen))
		}
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			return nil, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return nil, fmt.Errorf("%s: %s", url, resp.Status)
		}
		if i >= 20 {
			lat = append(lat, time.Since(start))
		}
	}
	return lat, nil
}

func throughput(url string, body []byte, headerLen, clients int, d time.Duration) (float64, error) {
	var done, failed atomic.Int64
	deadline := time.Now().Add(d) // how long the load runs, not a wait
	var wg sync.WaitGroup
	tr := &http.Transport{MaxIdleConnsPerHost: clients}
	client := &http.Client{Transport: tr}
	defer tr.CloseIdleConnections()
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
				if headerLen >= 0 {
					req.Header.Set(inference.HeaderInferenceHeaderLength, fmt.Sprint(headerLen))
				}
				resp, err := client.Do(req)
				if err != nil {
					failed.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
					continue
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	if failed.Load() > 0 {
		return 0, fmt.Errorf("%d requests failed", failed.Load())
	}
	return float64(done.Load()) / d.Seconds(), nil
}

func runInference(iters, rounds int, tput time.Duration, threads int, out string) error {
	benchModels := []benchModel{
		{"ocr-cls.onnx", []int64{1, 3, 48, 192}},
		{"ocr-det.onnx", []int64{1, 3, 64, 192}},
	}
	dir, err := testmesh.TempDir()
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// Two peers on one machine would share its cores: one peer, cache off
	// for the overhead and throughput figures.
	m, err := testmesh.Start(ctx, testmesh.Options{N: 1, Dir: dir, Tweak: func(_ int, c *peer.Config) { c.CacheBytes = -1; c.IntraOpThreads = threads }})
	if err != nil {
		return err
	}
	defer m.Close()
	n := m.Node(0)
	base := "http://" + n.APIAddr()
	for _, bm := range benchModels {
		data, err := testmesh.Model(bm.name)
		if err != nil {
			return err
		}
		req, _ := http.NewRequest(http.MethodPut, fmt.Sprintf("%s/v1/models/%s/versions/v1?activate=true&media_type=%s", base, bm.name, models.MediaTypeONNX), bytes.NewReader(data))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if err := testmesh.Eventually(ctx, 50*time.Millisecond, func() error {
			if v, _ := n.Serving(bm.name); v != "v1" {
				return fmt.Errorf("not serving")
			}
			return nil
		}); err != nil {
			return err
		}
	}

	var b bytes.Buffer
	threadsDesc := "onnxruntime's default intra-op threads (one per core)"
	if threads > 0 {
		threadsDesc = fmt.Sprintf("%d intra-op thread(s)", threads)
	}
	fmt.Fprintf(&b, "### Inference: the endpoints over a bare onnxruntime Run (%s)\n\n", threadsDesc)
	fmt.Fprintf(&b, "Measured %s on %s, CPU execution provider, onnxruntime %s, %s and no spinning for all, result cache off.\n", time.Now().UTC().Format("2006-01-02"), machine(), ort.GetVersion(), threadsDesc)
	if err := writeOverhead(&b, n, base, benchModels, iters, rounds, threads); err != nil {
		return err
	}
	fmt.Fprintf(&b, "\nJSON tensors, %d sequential HTTP requests (one round; tensors as JSON numbers):\n\n", iters)
	fmt.Fprintln(&b, "| model, input | HTTP JSON p50 | p99 |")
	fmt.Fprintln(&b, "|---|---:|---:|")
	for _, bm := range benchModels {
		fmt.Fprintf(os.Stderr, "measuring JSON requests, %s...\n", bm.name)
		js, err := httpLatencies(base+"/v2/models/"+bm.name+"/infer", bm.jsonBody(), -1, iters)
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "| %s %v | %s | %s |\n", bm.name, bm.shape, us(js.pct(0.5)), us(js.pct(0.99)))
	}

	fmt.Fprintf(&b, "\nThroughput, requests per second over %s per row (binary requests, cache off):\n\n", tput)
	fmt.Fprintln(&b, "| model | 1 client | 8 clients | 64 clients |")
	fmt.Fprintln(&b, "|---|---:|---:|---:|")
	for _, bm := range benchModels {
		fmt.Fprintf(os.Stderr, "measuring throughput, %s...\n", bm.name)
		body, hl := bm.binaryBody()
		row := "| " + bm.name
		for _, c := range []int{1, 8, 64} {
			rps, err := throughput(base+"/v2/models/"+bm.name+"/infer", body, hl, c, tput)
			if err != nil {
				return err
			}
			row += fmt.Sprintf(" | %.0f", rps)
		}
		fmt.Fprintln(&b, row+" |")
	}
	if err := writeBatching(&b, n, base, min(rounds, 3), min(tput, 3*time.Second)); err != nil {
		return err
	}
	m.Close()

	// Cache hits: a second mesh with the cache on.
	fmt.Fprintf(os.Stderr, "measuring cache hits...\n")
	dir2, err := testmesh.TempDir()
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir2)
	m2, err := testmesh.Start(ctx, testmesh.Options{N: 1, Dir: dir2})
	if err != nil {
		return err
	}
	defer m2.Close()
	n2 := m2.Node(0)
	data, _ := testmesh.Model("ocr-cls.onnx")
	req, _ := http.NewRequest(http.MethodPut, fmt.Sprintf("http://%s/v1/models/cls/versions/v1?activate=true&media_type=%s", n2.APIAddr(), models.MediaTypeONNX), bytes.NewReader(data))
	if resp, err := http.DefaultClient.Do(req); err != nil {
		return err
	} else {
		resp.Body.Close()
	}
	if err := testmesh.Eventually(ctx, 50*time.Millisecond, func() error {
		if v, _ := n2.Serving("cls"); v != "v1" {
			return fmt.Errorf("not serving")
		}
		return nil
	}); err != nil {
		return err
	}
	small := benchModel{"ocr-cls.onnx", []int64{1, 3, 8, 16}}
	hitSmall, err := handlerLatencies(n2, "/v2/models/cls/infer", small.jsonBody(), -1, iters, true)
	if err != nil {
		return err
	}
	full := benchModel{"ocr-cls.onnx", []int64{1, 3, 48, 192}}
	fb, fhl := full.binaryBody()
	hitFull, err := handlerLatencies(n2, "/v2/models/cls/infer", fb, fhl, iters, true)
	if err != nil {
		return err
	}
	fmt.Fprintf(&b, "\nResult-cache hits, in-process through the peer's HTTP handler (no network), %d hits per row:\n\n", iters)
	fmt.Fprintln(&b, "| request | p50 | p99 |")
	fmt.Fprintln(&b, "|---|---:|---:|")
	fmt.Fprintf(&b, "| ocr-cls, JSON input 1×3×8×16 | %s | %s |\n", us(hitSmall.pct(0.5)), us(hitSmall.pct(0.99)))
	fmt.Fprintf(&b, "| ocr-cls, binary input 1×3×48×192 (110 KiB hashed per lookup) | %s | %s |\n", us(hitFull.pct(0.5)), us(hitFull.pct(0.99)))
	b.WriteString("\n")

	fmt.Print(b.String())
	if out != "" {
		return writeSection(out, fmt.Sprintf("inference-threads-%d", threads), b.String())
	}
	return nil
}

// handlerLatencies times requests through the peer's HTTP handler
// in-process (no sockets, no client). headerLen < 0 sends plain JSON; with
// wantHit every request after the first must be a result-cache hit.
func handlerLatencies(n *peer.Node, path string, body []byte, headerLen, iters int, wantHit bool) (latencies, error) {
	h := n.Handler()
	var lat latencies
	for i := 0; i < iters+20; i++ {
		req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
		if headerLen >= 0 {
			req.Header.Set(inference.HeaderInferenceHeaderLength, fmt.Sprint(headerLen))
		}
		rec := httptest.NewRecorder()
		start := time.Now()
		h.ServeHTTP(rec, req)
		el := time.Since(start)
		if rec.Code != 200 {
			return nil, fmt.Errorf("%s: %d %s", path, rec.Code, rec.Body.Bytes())
		}
		if wantHit && i > 0 && rec.Header().Get(api.HeaderCache) != api.CacheHit {
			return nil, fmt.Errorf("request %d was a cache %s", i, rec.Header().Get(api.HeaderCache))
		}
		if i >= 20 {
			lat = append(lat, el)
		}
	}
	return lat, nil
}
