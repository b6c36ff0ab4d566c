package inference

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"testing"

	"github.com/shoal-mesh/shoal/inference/onnxmodel"
)

// clsRows is a rows×3×48×192 batch of images whose pixels follow seed.
func clsRows(seed float64, rows int) *InferRequest {
	data := make([]float32, rows*3*48*192)
	for i := range data {
		data[i] = float32(math.Sin(float64(i)*0.01+seed)) * 0.5
	}
	raw, _ := json.Marshal(data)
	return &InferRequest{Inputs: []RequestInput{{Name: "x", Shape: []int64{int64(rows), 3, 48, 192}, Datatype: "FP32", Data: raw}}}
}

func prepare(t *testing.T, s *Session, req *InferRequest) *Prepared {
	t.Helper()
	p, err := s.Prepare(req)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// sameOutputs compares outputs element for element (float bits, so that
// a difference in the last place counts).
func sameOutputs(got, want []ResponseOutput) error {
	if len(got) != len(want) {
		return fmt.Errorf("%d outputs, want %d", len(got), len(want))
	}
	for i := range got {
		g, w := got[i], want[i]
		if g.Name != w.Name || g.Datatype != w.Datatype || fmt.Sprint(g.Shape) != fmt.Sprint(w.Shape) {
			return fmt.Errorf("output %d is %s %s%v, want %s %s%v", i, g.Name, g.Datatype, g.Shape, w.Name, w.Datatype, w.Shape)
		}
		if gf, ok := g.Data.([]float32); ok {
			wf, _ := w.Data.([]float32)
			if len(gf) != len(wf) {
				return fmt.Errorf("output %s: %d elements, want %d", g.Name, len(gf), len(wf))
			}
			for j := range gf {
				if math.Float32bits(gf[j]) != math.Float32bits(wf[j]) {
					return fmt.Errorf("output %s element %d: %v, alone %v", g.Name, j, gf[j], wf[j])
				}
			}
			continue
		}
		if !reflect.DeepEqual(g.Data, w.Data) {
			return fmt.Errorf("output %s: %v, want %v", g.Name, g.Data, w.Data)
		}
	}
	return nil
}

// TestRunBatchEqualsRunAlone: requests of 1 to 3 rows joined into one run
// of the real classifier get, bit for bit, what each gets alone.
func TestRunBatchEqualsRunAlone(t *testing.T) {
	e := openEngine(t)
	s, err := e.Load(context.Background(), Ref{Model: "cls", Version: "1"}, repoModel(t, "ocr-cls.onnx"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Retire()
	if !s.Batchable() {
		t.Fatalf("classifier %v → %v not batchable", s.Inputs(), s.Outputs())
	}
	var ps []*Prepared
	for i, rows := range []int{1, 2, 3, 1} {
		ps = append(ps, prepare(t, s, clsRows(float64(i), rows)))
	}
	got, err := s.RunBatch(context.Background(), ps)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range ps {
		alone, err := s.Run(context.Background(), p)
		if err != nil {
			t.Fatal(err)
		}
		if err := sameOutputs(got[i], alone); err != nil {
			t.Errorf("request %d: %v", i, err)
		}
	}
}

// TestRunBatchJoinsEveryKind: strings and integers are joined and split
// like floats.
func TestRunBatchJoinsEveryKind(t *testing.T) {
	e := openEngine(t)
	for _, tc := range []struct {
		elem  int
		dt    string
		dims  []int64
		parts []string // JSON data of each request
		shape [][]int64
	}{
		{onnxmodel.String, "BYTES", []int64{-1}, []string{`["a"]`, `["bc","","d"]`}, [][]int64{{1}, {3}}},
		{onnxmodel.Int64, "INT64", []int64{-1, 2}, []string{`[[1,2],[3,4]]`, `[[5,6]]`, `[[-7,8]]`}, [][]int64{{2, 2}, {1, 2}, {1, 2}}},
		{onnxmodel.Uint8, "UINT8", []int64{-1, 1}, []string{`[[255]]`, `[[0],[7]]`}, [][]int64{{1, 1}, {2, 1}}},
	} {
		s, err := e.Load(context.Background(), Ref{Model: "id", Version: tc.dt}, onnxmodel.Identity(tc.elem, tc.dims), nil)
		if err != nil {
			t.Fatal(err)
		}
		var ps []*Prepared
		for i, data := range tc.parts {
			ps = append(ps, prepare(t, s, &InferRequest{Inputs: []RequestInput{{Name: "x", Shape: tc.shape[i], Datatype: tc.dt, Data: json.RawMessage(data)}}}))
		}
		got, err := s.RunBatch(context.Background(), ps)
		if err != nil {
			t.Fatalf("%s: %v", tc.dt, err)
		}
		for i, p := range ps {
			alone, _ := s.Run(context.Background(), p)
			if err := sameOutputs(got[i], alone); err != nil {
				t.Errorf("%s request %d: %v", tc.dt, i, err)
			}
		}
		s.Retire()
	}
}

func TestBatchableAndBatchKey(t *testing.T) {
	e := openEngine(t)
	load := func(name string, model []byte, warmup *InferRequest) *Session {
		s, err := e.Load(context.Background(), Ref{Model: name, Version: "1"}, model, warmup)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Retire)
		return s
	}
	for name, tc := range map[string]struct {
		s    *Session
		want bool
	}{
		"classifier":       {load("cls", repoModel(t, "ocr-cls.onnx"), nil), true},
		"fixed batch":      {load("id14", onnxmodel.Identity(onnxmodel.Float, []int64{1, 4}), nil), false},
		"rank-0 input":     {load("vad", repoModel(t, "silero-vad.onnx"), vadRequest()), false},
		"dynamic identity": {load("idn4", onnxmodel.Identity(onnxmodel.Float, []int64{-1, 4}), nil), true},
	} {
		if got := tc.s.Batchable(); got != tc.want {
			t.Errorf("%s: Batchable() = %v, want %v", name, got, tc.want)
		}
	}

	s := load("two", onnxmodel.IdentityNeg(3), nil)
	req := func(rows int, outputs ...string) *Prepared {
		data := make([]float32, rows*3)
		raw, _ := json.Marshal(data)
		r := &InferRequest{Inputs: []RequestInput{{Name: "x", Shape: []int64{int64(rows), 3}, Datatype: "FP32", Data: raw}}}
		for _, o := range outputs {
			r.Outputs = append(r.Outputs, RequestOutput{Name: o})
		}
		return prepare(t, s, r)
	}
	rows, k1, ok := req(2).BatchKey()
	if !ok || rows != 2 {
		t.Fatalf("BatchKey() rows %d ok %v", rows, ok)
	}
	if _, k, _ := req(5, "y", "neg").BatchKey(); k != k1 {
		t.Error("requests of 2 and 5 rows for all outputs (by default, by name) have different keys")
	}
	_, ky, _ := req(1, "y").BatchKey()
	_, kn, _ := req(1, "neg").BatchKey()
	_, kny, _ := req(1, "neg", "y").BatchKey()
	if ky == k1 || ky == kn || kn == kny || kny == k1 {
		t.Error("requests for different outputs share a key")
	}
	wide := load("idn", onnxmodel.Identity(onnxmodel.Float, []int64{-1, -1}), nil)
	p4 := prepare(t, wide, &InferRequest{Inputs: []RequestInput{{Name: "x", Shape: []int64{1, 4}, Datatype: "FP32", Data: json.RawMessage(`[1,2,3,4]`)}}})
	p3 := prepare(t, wide, &InferRequest{Inputs: []RequestInput{{Name: "x", Shape: []int64{1, 3}, Datatype: "FP32", Data: json.RawMessage(`[1,2,3]`)}}})
	_, k4, _ := p4.BatchKey()
	_, k3, _ := p3.BatchKey()
	if k4 == k3 {
		t.Error("[1 4] and [1 3] share a key")
	}
	if _, err := wide.RunBatch(context.Background(), []*Prepared{p4, p3}); err == nil {
		t.Error("RunBatch joined [1 4] and [1 3]")
	}
}

// TestRunBatchDetectsUnsplittableOutputs: a model whose first output
// dimension is not its rows fails a batch with ErrNotSplittable (its
// requests then run alone).
func TestRunBatchDetectsUnsplittableOutputs(t *testing.T) {
	e := openEngine(t)
	s, err := e.Load(context.Background(), Ref{Model: "tr", Version: "1"}, onnxmodel.Transpose(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Retire()
	if !s.Batchable() {
		t.Fatalf("declared %v → %v: want it to look batchable", s.Inputs(), s.Outputs())
	}
	row := func(x string) *Prepared {
		return prepare(t, s, &InferRequest{Inputs: []RequestInput{{Name: "x", Shape: []int64{1, 4}, Datatype: "FP32", Data: json.RawMessage(x)}}})
	}
	a, b := row(`[1,2,3,4]`), row(`[5,6,7,8]`)
	if _, err := s.RunBatch(context.Background(), []*Prepared{a, b}); !errors.Is(err, ErrNotSplittable) {
		t.Fatalf("err %v, want ErrNotSplittable", err)
	}
	if out, err := s.Run(context.Background(), a); err != nil || fmt.Sprint(out[0].Shape) != "[4 1]" {
		t.Fatalf("alone: %v %v", out, err)
	}
}
