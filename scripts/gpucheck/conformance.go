package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"sync"
	"time"

	"github.com/shoal-mesh/shoal/inference"
	"github.com/shoal-mesh/shoal/inference/onnxmodel"
)

// The ONNX project's backend node cases (Debian's libonnx-testdata, which
// `make setup` installs): one-operator models with their input tensors.
// Each runs on CPU and on the device and the outputs are compared with
// each other; how CPU itself compares with the reference outputs is the
// e2e suite's business (TestONNXBackendCasesThroughTheEndpoint).

var oipType = onnxmodel.OIPType

// random operators and training-mode dropout draw different numbers on
// each device: only their output names, datatypes and shapes are compared.
var nondeterministic = regexp.MustCompile(`^test_(bernoulli.*|random.*|training_dropout.*)$`)

type conformance struct {
	cases, compared, matched, cpuCannot, unreadable, notStarted int
	failures                                                    []string
	maxAbs                                                      float64
	elapsed                                                     time.Duration
}

type backendCase struct {
	name  string
	model []byte
	req   *inference.InferRequest
}

// loadCase reads a case's model and its first data set's inputs.
func loadCase(dir string) (backendCase, error) {
	c := backendCase{name: filepath.Base(dir), req: &inference.InferRequest{}}
	var err error
	if c.model, err = os.ReadFile(filepath.Join(dir, "model.onnx")); err != nil {
		return c, err
	}
	for i := 0; ; i++ {
		b, err := os.ReadFile(filepath.Join(dir, "test_data_set_0", fmt.Sprintf("input_%d.pb", i)))
		if os.IsNotExist(err) {
			break
		}
		if err != nil {
			return c, err
		}
		t, err := onnxmodel.ParseTensor(b)
		if err != nil {
			return c, err
		}
		dt, ok := oipType[t.DataType]
		if !ok {
			return c, fmt.Errorf("datatype %d", t.DataType)
		}
		c.req.Inputs = append(c.req.Inputs, inference.RawInput(t.Name, dt, dims(t.Dims), raw(t)))
	}
	if len(c.req.Inputs) == 0 {
		return c, fmt.Errorf("no inputs")
	}
	return c, nil
}

func dims(d []int64) []int64 {
	if d == nil {
		return []int64{}
	}
	return d
}

// raw is a tensor's elements in the binary extension's layout (BYTES: a
// 4-byte little-endian length before each string).
func raw(t onnxmodel.Tensor) []byte {
	if t.DataType != onnxmodel.String {
		return t.Raw
	}
	var b []byte
	for _, s := range t.Strings {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	return b
}

// runOn loads a model on one engine (warmed up with the request itself),
// runs the request once more and closes the session.
func runOn(ctx context.Context, e *inference.Engine, name string, model []byte, req *inference.InferRequest) ([]inference.ResponseOutput, error) {
	s, err := e.Load(ctx, inference.Ref{Model: name, Version: "1"}, model, req)
	if err != nil {
		return nil, err
	}
	defer s.Retire()
	p, err := s.Prepare(req)
	if err != nil {
		return nil, err
	}
	return s.Run(ctx, p)
}

func runConformance(ctx context.Context, es engines, o options) conformance {
	start := time.Now()
	dirs, err := os.ReadDir(o.testdata)
	if err != nil {
		return conformance{failures: []string{fmt.Sprintf("backend cases unreadable (%v): run `make setup`", err)}}
	}
	deadline := start.Add(o.budget)
	var mu sync.Mutex
	res := conformance{cases: len(dirs)}
	work := make(chan string)
	var wg sync.WaitGroup
	for range max(o.jobs, 1) {
		wg.Go(func() {
			for dir := range work {
				outcome, problem, maxAbs := oneCase(ctx, es, dir, o.tol)
				mu.Lock()
				res.record(filepath.Base(dir), outcome, problem, maxAbs)
				mu.Unlock()
			}
		})
	}
	for i, d := range dirs {
		if time.Now().After(deadline) {
			res.notStarted = len(dirs) - i
			break
		}
		work <- filepath.Join(o.testdata, d.Name())
	}
	close(work)
	wg.Wait()
	sort.Strings(res.failures)
	res.elapsed = time.Since(start)
	return res
}

// oneCase runs one case on both engines: outcome is "unreadable", "cpu"
// (the CPU cannot run it: nothing to compare with), "match" or "fail".
func oneCase(ctx context.Context, es engines, dir string, tol tolerance) (outcome, problem string, maxAbs float64) {
	c, err := loadCase(dir)
	if err != nil {
		return "unreadable", "", 0
	}
	want, err := runOn(ctx, es.cpu1, c.name, c.model, c.req)
	if err != nil {
		return "cpu", "", 0
	}
	got, err := runOn(ctx, es.dev1, c.name, c.model, c.req)
	if err != nil {
		return "fail", "fails on the device: " + err.Error(), 0
	}
	if nondeterministic.MatchString(c.name) {
		want, got = withoutData(want), withoutData(got)
	}
	d := compare(want, got, tol)
	if d.problem != "" {
		return "fail", d.problem, d.maxAbs
	}
	return "match", "", d.maxAbs
}

// withoutData keeps the outputs' names, datatypes and shapes only.
func withoutData(outs []inference.ResponseOutput) []inference.ResponseOutput {
	bare := make([]inference.ResponseOutput, len(outs))
	for i, o := range outs {
		bare[i] = inference.ResponseOutput{Name: o.Name, Datatype: o.Datatype, Shape: o.Shape}
	}
	return bare
}

func (r *conformance) record(name, outcome, problem string, maxAbs float64) {
	switch outcome {
	case "unreadable":
		r.unreadable++
		return
	case "cpu":
		r.cpuCannot++
		return
	case "fail":
		r.failures = append(r.failures, name+": "+problem)
	case "match":
		r.matched++
	}
	r.compared++
	r.maxAbs = max(r.maxAbs, maxAbs)
}
