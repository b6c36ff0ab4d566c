package serving

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-mesh/shoal/inference/onnxmodel"
)

// BenchmarkBatching measures the serving path (parse, session, run,
// answer; cache off, binary tensors in and out, as the throughput rows of
// docs/benchmarks.md) on the CPU classifier, with 1 and 64 concurrent
// clients (each sends its next request when the last is answered),
// unbatched and with dynamic batching (max_batch_size 32,
// max_queue_delay_us 2000, the default four runners). Images are 3×32×64
// (the e2e benchmarks' input) and 3×48×192 (shoal-bench's). It reports
// requests per second, the median latency, the mean rows per run and how
// busy the cores were.
//
//	go test -run '^$' -bench Batching -benchtime 3s ./serving/
func BenchmarkBatching(b *testing.B) {
	pool := loadModel(b, "cls", nil, "ocr-cls.onnx")
	for _, size := range [][2]int64{{32, 64}, {48, 192}} {
		body, headerLen := clsBinaryBody(size[0], size[1])
		for _, clients := range []int{1, 64} {
			for _, maxBatch := range []int{0, 32} {
				name := fmt.Sprintf("input=3x%dx%d/clients=%d/max_batch=%d", size[0], size[1], clients, maxBatch)
				b.Run(name, func(b *testing.B) {
					srv, _ := servers(b, pool, "cls", Config{}, maxBatch, 2*time.Millisecond)
					call := Call{Model: "cls", Body: body, HeaderLen: headerLen}
					benchClients(b, srv, call, clients)
				})
			}
		}
	}
}

// BenchmarkLoneRequest isolates what the batching path costs a request
// that finds its queue idle: a one-row identity model, whose run takes
// microseconds, served unbatched and with batching on (ns/op differ by
// the queue's bookkeeping).
func BenchmarkLoneRequest(b *testing.B) {
	pool := loadModel(b, "id", onnxmodel.Identity(onnxmodel.Float, []int64{-1, 4}), "")
	for _, maxBatch := range []int{0, 32} {
		b.Run(fmt.Sprintf("max_batch=%d", maxBatch), func(b *testing.B) {
			srv, _ := servers(b, pool, "id", Config{}, maxBatch, 2*time.Millisecond)
			call := rowsCall("id", 0, 1, []int64{4})
			for b.Loop() {
				if _, err := srv.Infer(context.Background(), call); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// clsBinaryBody is a one-image request for the classifier in the binary
// tensor extension, asking for binary outputs.
func clsBinaryBody(h, w int64) ([]byte, int) {
	n := 3 * h * w
	var raw []byte
	for i := range n {
		raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(float32(math.Sin(float64(i)*0.013))*0.7))
	}
	header := fmt.Sprintf(`{"inputs":[{"name":"x","shape":[1,3,%d,%d],"datatype":"FP32","parameters":{"binary_data_size":%d}}],"parameters":{"binary_data_output":true}}`, h, w, len(raw))
	return append([]byte(header), raw...), len(header)
}

// benchClients sends b.N calls from clients goroutines, each sending its
// next call when the last is answered.
func benchClients(b *testing.B, srv *Server, call Call, clients int) {
	if _, err := srv.Infer(context.Background(), call); err != nil {
		b.Fatal(err)
	}
	var next, runs, rows atomic.Int64
	srv.batchHook = func(bt *batch) {
		runs.Add(1)
		rows.Add(int64(bt.rows))
	}
	lat := make([][]time.Duration, clients)
	var wg sync.WaitGroup
	b.ResetTimer()
	start, cpu := time.Now(), processCPU()
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				t0 := time.Now()
				if _, err := srv.Infer(context.Background(), call); err != nil {
					b.Error(err)
					return
				}
				lat[c] = append(lat[c], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed, cpu := time.Since(start), processCPU()-cpu
	b.StopTimer()
	all := slices.Concat(lat...)
	slices.Sort(all)
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "req/s")
	if len(all) > 0 {
		b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
	}
	if cpu > 0 {
		// Of runtime.NumCPU cores: how busy the run kept the machine.
		b.ReportMetric(100*cpu.Seconds()/elapsed.Seconds()/float64(runtime.NumCPU()), "cpu-%")
	}
	if runs.Load() > 0 {
		b.ReportMetric(float64(rows.Load())/float64(runs.Load()), "rows/run")
	}
}
