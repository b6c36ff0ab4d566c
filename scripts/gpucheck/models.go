package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/shoal-mesh/shoal/inference"
)

// The default models `make setup` installs, each with inputs for a batch
// of b rows: the OCR text-direction classifier (the embedded default
// model), the OCR detector (at 320×320, so that a CPU batch of 32 takes
// seconds, not minutes), Silero VAD and the default embedder.
var benchModels = []struct {
	file   string
	inputs func(b int64) []inference.RequestInput
}{
	{"ocr-cls.onnx", func(b int64) []inference.RequestInput {
		return []inference.RequestInput{fp32("x", b, 3, 48, 192)}
	}},
	{"ocr-det.onnx", func(b int64) []inference.RequestInput {
		return []inference.RequestInput{fp32("x", b, 3, 320, 320)}
	}},
	{"silero-vad.onnx", func(b int64) []inference.RequestInput {
		return []inference.RequestInput{fp32("input", b, 512), fp32("state", 2, b, 128), int64s("sr", []int64{}, func(int) int64 { return 16000 })}
	}},
	{"minilm-l6-v2-q.onnx", func(b int64) []inference.RequestInput {
		shape := []int64{b, 128}
		return []inference.RequestInput{
			int64s("input_ids", shape, func(i int) int64 { return 1000 + int64(i*7919%28000) }),
			int64s("attention_mask", shape, func(int) int64 { return 1 }),
			int64s("token_type_ids", shape, func(int) int64 { return 0 }),
		}
	}},
}

// batches are the batch sizes whose throughput is measured.
var batches = []int64{1, 8, 32}

// fp32 is a tensor of smooth values in [-0.5, 0.5], the same every run.
func fp32(name string, shape ...int64) inference.RequestInput {
	n := product(shape)
	raw := make([]byte, 4*n)
	for i := range n {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(float32(0.5*math.Sin(float64(i)*0.013))))
	}
	return inference.RawInput(name, "FP32", shape, raw)
}

func int64s(name string, shape []int64, f func(int) int64) inference.RequestInput {
	n := product(shape)
	raw := make([]byte, 8*n)
	for i := range n {
		binary.LittleEndian.PutUint64(raw[8*i:], uint64(f(int(i))))
	}
	return inference.RawInput(name, "INT64", shape, raw)
}

func product(shape []int64) int64 {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	return n
}

type modelResult struct {
	file    string
	err     string
	diffs   map[int64]diff           // batch → CPU vs device at that batch
	timings map[string]deviceTimings // "cpu", device
}

type deviceTimings struct {
	p50, p90   time.Duration // batch 1
	throughput map[int64]float64
}

func runModels(ctx context.Context, es engines, o options) []modelResult {
	var out []modelResult
	for _, m := range benchModels {
		r := modelResult{file: m.file, diffs: map[int64]diff{}, timings: map[string]deviceTimings{}}
		if err := benchModel(ctx, es, o, m.file, m.inputs, &r); err != nil {
			r.err = err.Error()
		}
		out = append(out, r)
	}
	return out
}

func benchModel(ctx context.Context, es engines, o options, file string, inputs func(int64) []inference.RequestInput, r *modelResult) error {
	data, err := os.ReadFile(filepath.Join(o.models, file))
	if err != nil {
		return fmt.Errorf("%w (run `make setup`)", err)
	}
	warm := &inference.InferRequest{Inputs: inputs(1)}
	var sessions [2]*inference.Session
	for i, e := range []*inference.Engine{es.cpu, es.dev} {
		if sessions[i], err = e.Load(ctx, inference.Ref{Model: file, Version: "1"}, data, warm); err != nil {
			return fmt.Errorf("load on %s: %w", e.Device(), err)
		}
		defer sessions[i].Retire()
	}
	for _, b := range []int64{1, 8} {
		var outs [2][]inference.ResponseOutput
		for i, s := range sessions {
			if outs[i], err = runOnce(ctx, s, inputs(b)); err != nil {
				return fmt.Errorf("batch %d on %s: %w", b, s.Device(), err)
			}
		}
		r.diffs[b] = compare(outs[0], outs[1], o.modelTol)
	}
	for i, s := range sessions {
		t, err := timeSession(ctx, s, inputs)
		if err != nil {
			return err
		}
		r.timings[[]string{"cpu", "device"}[i]] = t
	}
	return nil
}

func runOnce(ctx context.Context, s *inference.Session, in []inference.RequestInput) ([]inference.ResponseOutput, error) {
	p, err := s.Prepare(&inference.InferRequest{Inputs: in})
	if err != nil {
		return nil, err
	}
	return s.Run(ctx, p)
}

// timeSession measures batch-1 latency over 30 runs, then rows per second
// at each batch size over at least 1.5 s (and 3 runs).
func timeSession(ctx context.Context, s *inference.Session, inputs func(int64) []inference.RequestInput) (deviceTimings, error) {
	t := deviceTimings{throughput: map[int64]float64{}}
	lat := make([]time.Duration, 30)
	one := inputs(1)
	for i := range lat {
		start := time.Now()
		if _, err := runOnce(ctx, s, one); err != nil {
			return t, err
		}
		lat[i] = time.Since(start)
	}
	slices.Sort(lat)
	t.p50, t.p90 = lat[len(lat)/2], lat[len(lat)*9/10]
	for _, b := range batches {
		in := inputs(b)
		start, runs := time.Now(), 0
		for runs < 3 || time.Since(start) < 1500*time.Millisecond {
			if _, err := runOnce(ctx, s, in); err != nil {
				return t, fmt.Errorf("batch %d on %s: %w", b, s.Device(), err)
			}
			runs++
		}
		t.throughput[b] = float64(b) * float64(runs) / time.Since(start).Seconds()
	}
	return t, nil
}
