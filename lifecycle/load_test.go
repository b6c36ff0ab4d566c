package lifecycle

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/shoal-mesh/shoal/inference"
	"github.com/shoal-mesh/shoal/inference/onnxmodel"
)

// TestWarmupCutShortIsNotALoadFailure reproduces a version marked bad for
// good because one request's deadline (Shoal-Timeout) ran out while its
// session warmed up: e2e's TestRetrievalBadInput saw an embedder answer
// 409 "does not load" after a 2 s request. The warm-up here is a real
// onnxruntime run long enough to outlast its context.
func TestWarmupCutShortIsNotALoadFailure(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	e, err := inference.Open(inference.Config{Library: filepath.Join(filepath.Dir(file), "..", inference.DefaultLibraryPath), Device: inference.DeviceCPU})
	if err != nil {
		t.Fatalf("onnxruntime (run `make setup`): %v", err)
	}
	defer e.Close()
	warm := &inference.InferRequest{Inputs: []inference.RequestInput{
		{Name: "x", Shape: []int64{1, 1}, Datatype: "FP32", Data: json.RawMessage(`[0]`)},
		{Name: "n", Shape: []int64{2}, Datatype: "INT64", Data: json.RawMessage(`[4096, 4096]`)},
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = e.Load(ctx, inference.Ref{Model: "chain", Version: "v1"}, onnxmodel.MatMulChain(8), warm)
	if err == nil {
		t.Fatal("8 products of 4096² matrices warmed up within 200 ms: make the warm-up longer")
	}
	if !errors.Is(err, inference.ErrWarmup) || ctx.Err() == nil {
		t.Fatalf("err %v (deadline passed: %v), want a warm-up cut short by its deadline", err, ctx.Err() != nil)
	}
	if doesNotLoad(ctx, err) {
		t.Fatalf("a warm-up cut short by the caller's deadline is taken for a version that does not load: %v", err)
	}
	// A version that really does not load is still remembered as such.
	_, err = e.Load(context.Background(), inference.Ref{Model: "junk", Version: "v1"}, []byte("not onnx"), nil)
	if !doesNotLoad(context.Background(), err) {
		t.Fatalf("junk bytes: %v is not taken for a load failure", err)
	}
}
