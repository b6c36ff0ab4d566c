package inference

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-mesh/shoal/inference/onnxmodel"
	"github.com/shoal-mesh/shoal/internal/poll"
)

// repoModel reads a model `make setup` fetched into deps/models.
func repoModel(t testing.TB, name string) []byte {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	b, err := os.ReadFile(filepath.Join(filepath.Dir(file), "..", "deps", "models", name))
	if err != nil {
		t.Fatalf("model missing (%v): run `make setup`", err)
	}
	return b
}

func openEngine(t testing.TB) *Engine {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	e, err := Open(Config{Library: filepath.Join(filepath.Dir(file), "..", DefaultLibraryPath), Device: DeviceAuto})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// clsRequest is a 1×3×48×192 image whose pixels follow seed.
func clsRequest(seed float64) *InferRequest {
	n := 3 * 48 * 192
	data := make([]float32, n)
	for i := range data {
		data[i] = float32(math.Sin(float64(i)*0.01+seed)) * 0.5
	}
	raw, _ := json.Marshal(data)
	return &InferRequest{Inputs: []RequestInput{{Name: "x", Shape: []int64{1, 3, 48, 192}, Datatype: "FP32", Data: raw}}}
}

func vadRequest() *InferRequest {
	frame, _ := json.Marshal(make([]float32, 512))
	state, _ := json.Marshal(make([]float32, 2*128))
	return &InferRequest{Inputs: []RequestInput{
		{Name: "input", Shape: []int64{1, 512}, Datatype: "FP32", Data: frame},
		{Name: "state", Shape: []int64{2, 1, 128}, Datatype: "FP32", Data: state},
		{Name: "sr", Shape: []int64{}, Datatype: "INT64", Data: json.RawMessage(`16000`)},
	}}
}

func infer(t testing.TB, s *Session, req *InferRequest) []ResponseOutput {
	t.Helper()
	p, err := s.Prepare(req)
	if err != nil {
		t.Fatal(err)
	}
	out, err := s.Run(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestRealModelsLoadWithMetadataFromONNXRuntime(t *testing.T) {
	e := openEngine(t)
	if e.Device() != DeviceCPU {
		t.Logf("device %s", e.Device())
	}
	for _, tc := range []struct {
		file, input, dt string
		inputs          int
		warmup          *InferRequest
	}{
		{"ocr-cls.onnx", "x", "FP32", 1, nil},
		{"ocr-det.onnx", "x", "FP32", 1, nil},
		// Silero VAD wants a 512-sample frame at 16 kHz, a state and a
		// rank-0 INT64 sample rate: zeros of guessed sizes do not run.
		{"silero-vad.onnx", "input", "FP32", 3, vadRequest()},
	} {
		s, err := e.Load(context.Background(), Ref{Model: tc.file, Version: "1"}, repoModel(t, tc.file), tc.warmup)
		if err != nil {
			t.Fatalf("%s: %v", tc.file, err)
		}
		md := s.Metadata()
		if len(md.Inputs) != tc.inputs {
			t.Errorf("%s: inputs %+v", tc.file, md.Inputs)
		}
		found := false
		for _, in := range md.Inputs {
			if in.Name == tc.input && in.Datatype == tc.dt {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: no input %s %s in %+v", tc.file, tc.input, tc.dt, md.Inputs)
		}
		if md.Platform != "onnxruntime_onnx" || len(md.Outputs) == 0 {
			t.Errorf("%s: metadata %+v", tc.file, md)
		}
		s.Retire()
		<-s.Drained()
	}
}

func TestClassifierOutputsAreProbabilities(t *testing.T) {
	e := openEngine(t)
	s, err := e.Load(context.Background(), Ref{Model: "cls", Version: "1"}, repoModel(t, "ocr-cls.onnx"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Retire()
	out := infer(t, s, clsRequest(0))
	if len(out) != 1 || out[0].Datatype != "FP32" || fmt.Sprint(out[0].Shape) != "[1 2]" {
		t.Fatalf("outputs %+v", out)
	}
	p := out[0].Data.([]float32)
	if math.Abs(float64(p[0]+p[1])-1) > 1e-4 {
		t.Errorf("softmax outputs %v do not sum to 1", p)
	}
	// Deterministic: the same request gives the same bytes.
	again := infer(t, s, clsRequest(0))
	if fmt.Sprint(again[0].Data) != fmt.Sprint(out[0].Data) {
		t.Errorf("same input, different outputs: %v vs %v", again[0].Data, out[0].Data)
	}
	// A derived version computes something else.
	v2bytes, err := onnxmodel.ScaleWeights(repoModel(t, "ocr-cls.onnx"), 0.8)
	if err != nil {
		t.Fatal(err)
	}
	v2, err := e.Load(context.Background(), Ref{Model: "cls", Version: "2"}, v2bytes, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer v2.Retire()
	if got := infer(t, v2, clsRequest(0)); fmt.Sprint(got[0].Data) == fmt.Sprint(out[0].Data) {
		t.Errorf("scaled weights gave identical outputs %v", got[0].Data)
	}
}

func TestEveryDatatypeRoundTripsThroughONNXRuntime(t *testing.T) {
	e := openEngine(t)
	cases := []struct {
		elem int
		dt   string
		data string
		want string
	}{
		{onnxmodel.Float, "FP32", `[1.5, -2, 3.25, 0]`, `[1.5,-2,3.25,0]`},
		{onnxmodel.Double, "FP64", `[[1e-300, 2], [3, 4]]`, `[1e-300,2,3,4]`},
		{onnxmodel.Float16, "FP16", `[1.5, -2, 65504, 0.000061035156]`, `[1.5,-2,65504,0.000061035156]`},
		{onnxmodel.Int64, "INT64", `[9007199254740993, -1, 0, 7]`, `[9007199254740993,-1,0,7]`},
		{onnxmodel.Int32, "INT32", `[2147483647, -2147483648, 0, 1]`, `[2147483647,-2147483648,0,1]`},
		{onnxmodel.Int8, "INT8", `[127, -128, 0, 1]`, `[127,-128,0,1]`},
		{onnxmodel.Uint8, "UINT8", `[255, 0, 1, 2]`, `[255,0,1,2]`},
		{onnxmodel.Uint16, "UINT16", `[65535, 0, 1, 2]`, `[65535,0,1,2]`},
		{onnxmodel.Bool, "BOOL", `[true, false, 1, 0]`, `[true,false,true,false]`},
		{onnxmodel.String, "BYTES", `["edge", "", "gateway ✓", "x"]`, `["edge","","gateway ✓","x"]`},
	}
	for _, tc := range cases {
		t.Run(tc.dt, func(t *testing.T) {
			dims := []int64{-1, 2}
			if tc.dt == "FP16" { // see Session.run: FP16 outputs need a static shape
				dims = []int64{2, 2}
			}
			s, err := e.Load(context.Background(), Ref{Model: "id", Version: tc.dt}, onnxmodel.Identity(tc.elem, dims), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Retire()
			if s.Inputs()[0].Datatype != tc.dt || fmt.Sprint(s.Inputs()[0].Shape) != fmt.Sprint(dims) {
				t.Fatalf("metadata %+v", s.Inputs())
			}
			out := infer(t, s, &InferRequest{Inputs: []RequestInput{{Name: "x", Shape: []int64{2, 2}, Datatype: tc.dt, Data: json.RawMessage(tc.data)}}})
			got, _ := json.Marshal(out[0].Data)
			if string(got) != tc.want || out[0].Datatype != tc.dt || fmt.Sprint(out[0].Shape) != "[2 2]" {
				t.Errorf("got %s %s %v, want %s", out[0].Datatype, got, out[0].Shape, tc.want)
			}
		})
	}
}

// TestMatMulChain checks the test model whose cost the request picks
// (the e2e capacity tests keep an inference running with it): sum(E^3)
// for E = 0.5 everywhere, 4×4, is 16 · 4² · 0.5³ = 32.
func TestMatMulChain(t *testing.T) {
	e := openEngine(t)
	s, err := e.Load(context.Background(), Ref{Model: "chain", Version: "1"}, onnxmodel.MatMulChain(2), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Retire()
	out := infer(t, s, &InferRequest{Inputs: []RequestInput{
		{Name: "x", Shape: []int64{1, 1}, Datatype: "FP32", Data: json.RawMessage(`[0.5]`)},
		{Name: "n", Shape: []int64{2}, Datatype: "INT64", Data: json.RawMessage(`[4, 4]`)},
	}})
	if got, _ := json.Marshal(out[0].Data); string(got) != "[32]" || fmt.Sprint(out[0].Shape) != "[1 1]" {
		t.Errorf("got %s %v, want [32] [1 1]", got, out[0].Shape)
	}
}

func TestMalformedRequestsAreBadRequests(t *testing.T) {
	e := openEngine(t)
	s, err := e.Load(context.Background(), Ref{Model: "cls", Version: "1"}, repoModel(t, "ocr-cls.onnx"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Retire()
	good := clsRequest(0).Inputs[0]
	for _, tc := range []struct {
		name string
		req  InferRequest
		want string
	}{
		{"no inputs", InferRequest{}, "no inputs"},
		{"unknown input", InferRequest{Inputs: []RequestInput{good, {Name: "y", Shape: []int64{1}, Datatype: "FP32", Data: json.RawMessage(`[1]`)}}}, `unknown input "y"`},
		{"missing input", InferRequest{Inputs: []RequestInput{{Name: "z", Shape: []int64{1}, Datatype: "FP32", Data: json.RawMessage(`[1]`)}}}, `missing input "x"`},
		{"wrong datatype", InferRequest{Inputs: []RequestInput{{Name: "x", Shape: good.Shape, Datatype: "INT64", Data: good.Data}}}, "datatype INT64, the model expects FP32"},
		{"wrong rank", InferRequest{Inputs: []RequestInput{{Name: "x", Shape: []int64{3, 48, 192}, Datatype: "FP32", Data: good.Data}}}, "has 3 dimensions"},
		{"wrong static dim", InferRequest{Inputs: []RequestInput{{Name: "x", Shape: []int64{1, 4, 48, 144}, Datatype: "FP32", Data: good.Data}}}, "dimension 1 must be 3"},
		{"length mismatch", InferRequest{Inputs: []RequestInput{{Name: "x", Shape: []int64{1, 3, 48, 193}, Datatype: "FP32", Data: good.Data}}}, "27648 elements for shape [1 3 48 193], which needs 27792"},
		{"not numbers", InferRequest{Inputs: []RequestInput{{Name: "x", Shape: []int64{1, 3, 1, 1}, Datatype: "FP32", Data: json.RawMessage(`["a","b","c"]`)}}}, "is not a number"},
		{"huge shape", InferRequest{Inputs: []RequestInput{{Name: "x", Shape: []int64{1 << 40, 3, 1 << 40, 1}, Datatype: "FP32", Data: json.RawMessage(`[1]`)}}}, "too large"},
		{"negative dim", InferRequest{Inputs: []RequestInput{{Name: "x", Shape: []int64{1, 3, -4, 1}, Datatype: "FP32", Data: json.RawMessage(`[1]`)}}}, "negative dimension"},
		{"unknown output", InferRequest{Inputs: []RequestInput{good}, Outputs: []RequestOutput{{Name: "nope"}}}, `unknown output "nope"`},
		{"binary size without binary data", InferRequest{Inputs: []RequestInput{{Name: "x", Shape: good.Shape, Datatype: "FP32", Parameters: map[string]any{"binary_data_size": 4.0}}}}, "binary_data_size without binary data"},
	} {
		_, err := s.Prepare(&tc.req)
		if !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want ErrBadRequest containing %q", tc.name, err, tc.want)
		}
	}
	// Integer range checks.
	id, err := e.Load(context.Background(), Ref{Model: "id8", Version: "1"}, onnxmodel.Identity(onnxmodel.Uint8, []int64{2}), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer id.Retire()
	if _, err := id.Prepare(&InferRequest{Inputs: []RequestInput{{Name: "x", Shape: []int64{2}, Datatype: "UINT8", Data: json.RawMessage(`[256, 1]`)}}}); !errors.Is(err, ErrBadRequest) {
		t.Errorf("UINT8 256 accepted: %v", err)
	}
	// The session still serves after all that.
	infer(t, s, clsRequest(1))
}

func TestCorruptModelDoesNotLoad(t *testing.T) {
	e := openEngine(t)
	good := repoModel(t, "ocr-cls.onnx")
	for name, data := range map[string][]byte{
		"truncated": good[:len(good)/2],
		"garbage":   []byte(strings.Repeat("not an onnx model ", 100)),
	} {
		_, err := e.Load(context.Background(), Ref{Model: "bad", Version: name}, data, nil)
		if !errors.Is(err, ErrLoad) {
			t.Errorf("%s: err = %v, want ErrLoad", name, err)
		} else if strings.Contains(err.Error(), "/proc/") || strings.Contains(err.Error(), os.TempDir()) {
			t.Errorf("%s: the reason names the staging file: %v", name, err)
		}
	}
}

func TestPoolSwapDrainsWithoutDroppingRequests(t *testing.T) {
	e := openEngine(t)
	data := repoModel(t, "ocr-cls.onnx")
	v1, err := e.Load(context.Background(), Ref{Model: "cls", Version: "v1"}, data, nil)
	if err != nil {
		t.Fatal(err)
	}
	v2bytes, _ := onnxmodel.ScaleWeights(data, 0.8)
	v2, err := e.Load(context.Background(), Ref{Model: "cls", Version: "v2"}, v2bytes, nil)
	if err != nil {
		t.Fatal(err)
	}
	pool := NewPool()
	defer pool.Close()
	pool.Swap(v1)
	req := clsRequest(0)
	const workers, each = 8, 6
	var failures, afterSwapOld atomic.Int64
	var swapped atomic.Bool
	// How many workers have finished `each` requests they started before
	// the swap, and `each` they started after it (each: about what the
	// fixed 200 ms waits gave on a 2-core machine).
	var readyBefore, readyAfter atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	halt := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer halt() // before pool.Close, also when a wait below fails the test
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var before, after int
			finished := func(wasSwapped bool) {
				if !wasSwapped {
					if before++; before == each {
						readyBefore.Add(1)
					}
				} else if after++; after == each {
					readyAfter.Add(1)
				}
			}
			for {
				select {
				case <-stop:
					return
				default:
				}
				wasSwapped := swapped.Load()
				s, err := pool.Acquire("cls", "")
				if err != nil {
					failures.Add(1)
					finished(wasSwapped)
					continue
				}
				p, err := s.Prepare(req)
				if err == nil {
					_, err = s.Run(context.Background(), p)
				}
				if err != nil {
					failures.Add(1)
				}
				if wasSwapped && s.Version == "v1" {
					afterSwapOld.Add(1)
				}
				s.Release()
				finished(wasSwapped)
			}
		}()
	}
	// The swap comes while every worker keeps requests coming.
	poll.Until(t, 30*time.Second, "the workers run requests before the swap", func() error {
		if n := readyBefore.Load(); n < workers {
			return fmt.Errorf("%d of %d workers have finished %d requests", n, workers, each)
		}
		return nil
	})
	old := pool.Swap(v2)
	swapped.Store(true)
	if old != v1 {
		t.Fatalf("Swap returned %v", old)
	}
	select {
	case <-old.Drained():
	case <-time.After(10 * time.Second):
		t.Fatal("old session never drained")
	}
	poll.Until(t, 30*time.Second, "the workers run requests after the swap", func() error {
		if n := readyAfter.Load(); n < workers {
			return fmt.Errorf("%d of %d workers have finished %d requests started after the swap", n, workers, each)
		}
		return nil
	})
	halt()
	if failures.Load() != 0 {
		t.Errorf("%d requests failed across the swap", failures.Load())
	}
	if afterSwapOld.Load() != 0 {
		t.Errorf("%d requests started after the swap got v1", afterSwapOld.Load())
	}
	if _, err := pool.Acquire("cls", "v1"); !errors.Is(err, ErrNotLoaded) {
		t.Errorf("pinned v1 after swap: %v, want ErrNotLoaded", err)
	}
}

func TestRankZeroTensorsInAndOut(t *testing.T) {
	e := openEngine(t)
	s, err := e.Load(context.Background(), Ref{Model: "scalar", Version: "1"}, onnxmodel.Identity(onnxmodel.Int64, []int64{}), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Retire()
	out := infer(t, s, &InferRequest{Inputs: []RequestInput{{Name: "x", Shape: []int64{}, Datatype: "INT64", Data: json.RawMessage(`-42`)}}})
	if len(out) != 1 || len(out[0].Shape) != 0 || fmt.Sprint(out[0].Data) != "[-42]" || out[0].Datatype != "INT64" {
		t.Errorf("rank-0 output %+v", out)
	}
}

// TestCancelledRunsTerminateSafely cancels requests while they run: the
// terminate callback and the run's cleanup must not race (run with -race).
func TestCancelledRunsTerminateSafely(t *testing.T) {
	e := openEngine(t)
	s, err := e.Load(context.Background(), Ref{Model: "det", Version: "1"}, repoModel(t, "ocr-det.onnx"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Retire()
	raw, _ := json.Marshal(make([]float32, 3*64*192))
	p, err := s.Prepare(&InferRequest{Inputs: []RequestInput{{Name: "x", Shape: []int64{1, 3, 64, 192}, Datatype: "FP32", Data: raw}}})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i%5)*300*time.Microsecond)
			defer cancel()
			if _, err := s.Run(ctx, p); err != nil && ctx.Err() == nil {
				t.Errorf("run %d: %v", i, err)
			}
		}(i)
	}
	wg.Wait()
	if _, err := s.Run(context.Background(), p); err != nil {
		t.Errorf("session unusable after cancelled runs: %v", err)
	}
}

// TestPoolSharedSessionSwapThenAdd: one load can reach both Swap (the
// activation) and Add (a pinned request) — the pool must keep serving it.
func TestPoolSharedSessionSwapThenAdd(t *testing.T) {
	e := openEngine(t)
	s, err := e.Load(context.Background(), Ref{Model: "cls", Version: "v1"}, repoModel(t, "ocr-cls.onnx"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, order := range []string{"swap-add", "add-swap"} {
		pool := NewPool()
		if order == "swap-add" {
			pool.Swap(s)
			pool.Add(s)
		} else {
			pool.Add(s)
			pool.Swap(s)
		}
		for _, v := range []string{"", "v1"} {
			got, err := pool.Acquire("cls", v)
			if err != nil || got != s {
				t.Fatalf("%s: Acquire(%q) = %v, %v", order, v, got, err)
			}
			got.Release()
		}
		if order == "add-swap" {
			pool.Close()
		}
	}
}
