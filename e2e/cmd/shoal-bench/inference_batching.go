package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/e2e/testmesh"
	"github.com/shoal-mesh/shoal/peer"
)

// Dynamic batching's settings in the batched rows: Triton-like, a batch of
// up to 32 rows and a 2 ms queue delay.
const (
	benchMaxBatch   = 32
	benchQueueDelay = 2000 // µs
)

// writeBatching compares the classifier pushed twice — v1 without
// batching, "batched" with it — at 1, 8 and 64 clients, the two measured
// in turn within each round; per cell the median of the rounds.
func writeBatching(b *bytes.Buffer, n *peer.Node, base string, rounds int, tput time.Duration) error {
	data, err := testmesh.Model("ocr-cls.onnx")
	if err != nil {
		return err
	}
	url := fmt.Sprintf("%s/v1/models/ocr-cls.onnx/versions/batched?media_type=%s&max_batch_size=%d&max_queue_delay_us=%d",
		base, models.MediaTypeONNX, benchMaxBatch, benchQueueDelay)
	req, _ := http.NewRequest(http.MethodPut, url, bytes.NewReader(data))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("push the batched version: %s", resp.Status)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	warm, whl := benchModel{"ocr-cls.onnx", []int64{1, 3, 32, 64}}.binaryBody()
	if err := warmPinned(ctx, base, "ocr-cls.onnx", "batched", warm, whl); err != nil {
		return err
	}
	fmt.Fprintf(b, "\nDynamic batching on the classifier (max_batch_size %d, max_queue_delay_us %d; the same model pushed as a version\n", benchMaxBatch, benchQueueDelay)
	fmt.Fprintf(b, "without batching and one with, pinned URLs): requests per second over %s per cell, %d rounds with the two in turn,\n", tput, rounds)
	fmt.Fprintf(b, "median of the rounds (ratio batched ÷ unbatched, lowest–highest round); 1-client p50 latency likewise.\n\n")
	fmt.Fprintln(b, "| input | clients | unbatched req/s | batched req/s | ratio |")
	fmt.Fprintln(b, "|---|---:|---:|---:|---:|")
	for _, bm := range []benchModel{{"ocr-cls.onnx", []int64{1, 3, 32, 64}}, {"ocr-cls.onnx", []int64{1, 3, 48, 192}}} {
		body, hl := bm.binaryBody()
		for _, clients := range []int{1, 8, 64} {
			var off, on, ratio []float64
			for r := 0; r < rounds; r++ {
				fmt.Fprintf(os.Stderr, "measuring batching, %v, %d clients, round %d/%d...\n", bm.shape, clients, r+1, rounds)
				a, err := throughput(base+"/v2/models/ocr-cls.onnx/versions/v1/infer", body, hl, clients, tput)
				if err != nil {
					return err
				}
				z, err := throughput(base+"/v2/models/ocr-cls.onnx/versions/batched/infer", body, hl, clients, tput)
				if err != nil {
					return err
				}
				off, on, ratio = append(off, a), append(on, z), append(ratio, z/a)
			}
			lo, hi := minMax(ratio)
			fmt.Fprintf(b, "| %v | %d | %.0f | %.0f | %.2f× (%.2f…%.2f) |\n", bm.shape[1:], clients, median(off), median(on), median(ratio), lo, hi)
		}
		var p50off, p50on []time.Duration
		for r := 0; r < rounds; r++ {
			a, err := httpLatencies(base+"/v2/models/ocr-cls.onnx/versions/v1/infer", body, hl, 200)
			if err != nil {
				return err
			}
			z, err := httpLatencies(base+"/v2/models/ocr-cls.onnx/versions/batched/infer", body, hl, 200)
			if err != nil {
				return err
			}
			p50off, p50on = append(p50off, a.pct(0.5)), append(p50on, z.pct(0.5))
		}
		fmt.Fprintf(b, "| %v | 1, p50 latency | %s | %s | %+.1f %% |\n", bm.shape[1:], us(median(p50off)), us(median(p50on)),
			100*(float64(median(p50on))/float64(median(p50off))-1))
	}
	return nil
}

func minMax(fs []float64) (float64, float64) {
	lo, hi := fs[0], fs[0]
	for _, f := range fs {
		lo, hi = min(lo, f), max(hi, f)
	}
	return lo, hi
}

// warmPinned makes sure a pinned version answers before it is measured
// (the first pinned request loads it).
func warmPinned(ctx context.Context, base, model, version string, body []byte, hl int) error {
	return testmesh.Eventually(ctx, 100*time.Millisecond, func() error {
		_, err := httpLatencies(base+"/v2/models/"+model+"/versions/"+version+"/infer", body, hl, 1)
		return err
	})
}
