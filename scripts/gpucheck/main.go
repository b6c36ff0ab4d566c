// Command gpucheck compares inference on CUDA with inference on CPU, on the
// ONNX project's backend test cases and on the default models, and
// measures latency and batched throughput on both. scripts/gpu-check.sh
// runs it after `make setup-gpu` on a machine with an NVIDIA GPU; it writes
// a Markdown report and exits 0 when every comparison is within tolerance,
// 1 when one is not, 2 when CUDA is unavailable (the report says why).
//
// It is a program, not a test: the test suite runs on machines without a
// GPU, where a CUDA comparison could only be skipped, and a skipped check
// must not read as a passed one.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/shoal-mesh/shoal/inference"
)

type options struct {
	lib, testdata, models, out, against string
	budget                              time.Duration
	jobs                                int
	tol, modelTol                       tolerance
}

func main() {
	var o options
	flag.StringVar(&o.lib, "lib", inference.GPULibraryPath, "onnxruntime library with CUDA (make setup-gpu)")
	flag.StringVar(&o.testdata, "testdata", "deps/onnx-testdata/usr/share/libonnx-testdata/data/node", "ONNX backend node cases (make setup)")
	flag.StringVar(&o.models, "models", "deps/models", "default models (make setup)")
	flag.StringVar(&o.out, "out", "", "write the Markdown report here (default stdout)")
	flag.StringVar(&o.against, "against", inference.DeviceCUDA, "device compared with CPU: cuda, or cpu to try this program where there is no GPU")
	flag.DurationVar(&o.budget, "conformance-budget", 75*time.Second, "stop starting backend cases after this long")
	flag.IntVar(&o.jobs, "jobs", 4, "backend cases run at once")
	flag.Float64Var(&o.tol.rtol, "rtol", 1e-3, "relative tolerance, backend cases")
	flag.Float64Var(&o.tol.atol, "atol", 1e-4, "absolute tolerance, backend cases")
	flag.Float64Var(&o.modelTol.rtol, "model-rtol", 1e-2, "relative tolerance, whole models")
	flag.Float64Var(&o.modelTol.atol, "model-atol", 1e-3, "absolute tolerance, whole models")
	flag.Parse()
	os.Exit(run(o))
}

func run(o options) int {
	var r report
	r.started = time.Now()
	r.opts = o
	code := check(o, &r)
	w := io.Writer(os.Stdout)
	if o.out != "" {
		f, err := os.Create(o.out)
		if err != nil {
			fmt.Fprintln(os.Stderr, "gpucheck:", err)
			return 1
		}
		defer f.Close()
		w = f
	}
	r.write(w)
	if code != 0 {
		fmt.Fprintf(os.Stderr, "gpucheck: %s\n", r.verdict)
	}
	return code
}

// engines are the two sides of every comparison: single-threaded ones for
// the many small backend cases run in parallel, and ones with a thread per
// core for the models and their timings.
type engines struct {
	cpu1, dev1, cpu, dev *inference.Engine
}

func check(o options, r *report) int {
	quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var es engines
	var err error
	open := func(device string, threads int) *inference.Engine {
		if err != nil {
			return nil
		}
		var e *inference.Engine
		e, err = inference.Open(inference.Config{Library: o.lib, Device: device, IntraOpThreads: threads, Logger: quiet})
		return e
	}
	es.cpu1, es.dev1 = open(inference.DeviceCPU, 1), open(o.against, 1)
	es.cpu, es.dev = open(inference.DeviceCPU, 0), open(o.against, 0)
	if err != nil {
		r.verdict = "CUDA unavailable: " + strings.TrimPrefix(err.Error(), inference.ErrNoCUDA.Error()+": ")
		return 2
	}
	r.ort, r.library, r.device = es.cpu.Version(), es.cpu.Library(), es.dev.Device()
	ctx := context.Background()
	r.conformance = runConformance(ctx, es, o)
	r.models = runModels(ctx, es, o)
	return r.judge()
}
