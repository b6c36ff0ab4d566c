package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"sort"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/shoal-mesh/shoal/grpcapi/inferencepb"
	"github.com/shoal-mesh/shoal/peer"
)

// grpcLatencies times ModelInfer over loopback gRPC with the tensor in
// raw_input_contents, as Triton's clients send it.
func grpcLatencies(addr string, bm benchModel, iters int) (latencies, error) {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	c := inferencepb.NewGRPCInferenceServiceClient(conn)
	var raw []byte
	for _, f := range bm.input() {
		raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(f))
	}
	req := &inferencepb.ModelInferRequest{ModelName: bm.name,
		Inputs:           []*inferencepb.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: bm.shape}},
		RawInputContents: [][]byte{raw}}
	var lat latencies
	for i := 0; i < iters+20; i++ {
		start := time.Now()
		if _, err := c.ModelInfer(context.Background(), req); err != nil {
			return nil, err
		}
		if i >= 20 {
			lat = append(lat, time.Since(start))
		}
	}
	return lat, nil
}

// overheadModes are the ways one request is made in the overhead table,
// measured in turn within each round so the machine's drift hits all alike.
var overheadModes = []string{"bare", "HTTP binary", "gRPC", "handler binary"}

// roundFigures are one mode's p50 and p99 in each round.
type roundFigures struct{ p50, p99 []time.Duration }

// measureOverhead runs rounds of iters requests per mode for bm and returns
// each mode's figures by round.
func measureOverhead(n *peer.Node, base string, bm benchModel, iters, rounds, threads int) (map[string]*roundFigures, error) {
	figs := map[string]*roundFigures{}
	for _, m := range overheadModes {
		figs[m] = &roundFigures{}
	}
	body, hl := bm.binaryBody()
	url := base + "/v2/models/" + bm.name + "/infer"
	for r := 0; r < rounds; r++ {
		fmt.Fprintf(os.Stderr, "measuring inference overhead, %s, round %d/%d...\n", bm.name, r+1, rounds)
		for _, mode := range overheadModes {
			var lat latencies
			var err error
			switch mode {
			case "bare":
				lat, err = bareRun(bm, iters, threads)
			case "HTTP binary":
				lat, err = httpLatencies(url, body, hl, iters)
			case "gRPC":
				lat, err = grpcLatencies(n.GRPCAddr(), bm, iters)
			case "handler binary":
				lat, err = handlerLatencies(n, "/v2/models/"+bm.name+"/infer", body, hl, iters, false)
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w", mode, err)
			}
			figs[mode].p50 = append(figs[mode].p50, lat.pct(0.5))
			figs[mode].p99 = append(figs[mode].p99, lat.pct(0.99))
		}
	}
	return figs, nil
}

// writeOverhead writes the overhead table: per mode the median over
// rounds of p50 and p99, and the overhead over bare as the median of the
// rounds' ratios with their range, which shows how much the machine moved.
func writeOverhead(b *bytes.Buffer, n *peer.Node, base string, benchModels []benchModel, iters, rounds, threads int) error {
	fmt.Fprintf(b, "%d interleaved rounds; in each, %d sequential requests per mode, the modes in turn. Figures are the median of the\n", rounds, iters)
	fmt.Fprintf(b, "rounds' percentiles; *overhead* is the median of the rounds' p50 ratios to bare, lowest–highest round in brackets.\n")
	fmt.Fprintf(b, "*Bare* is `DynamicAdvancedSession.Run` with a preallocated input; *HTTP binary* uses the binary tensor data extension\n")
	fmt.Fprintf(b, "over loopback with keep-alive; *gRPC* is `ModelInfer` with `raw_input_contents` over loopback; *handler* calls the\n")
	fmt.Fprintf(b, "peer's HTTP handler in-process (routing, consistency checks, decoding, validation, run, response; no sockets).\n\n")
	fmt.Fprintln(b, "| model, input | bare p50 | p99 | HTTP binary p50 | p99 | overhead | gRPC p50 | p99 | overhead | handler p50 | p99 | overhead |")
	fmt.Fprintln(b, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, bm := range benchModels {
		figs, err := measureOverhead(n, base, bm, iters, rounds, threads)
		if err != nil {
			return err
		}
		row := fmt.Sprintf("| %s %v | %s | %s", bm.name, bm.shape, us(median(figs["bare"].p50)), us(median(figs["bare"].p99)))
		for _, mode := range overheadModes[1:] {
			var ratios []float64
			for r := range figs[mode].p50 {
				ratios = append(ratios, float64(figs[mode].p50[r])/float64(figs["bare"].p50[r])-1)
			}
			s := append([]float64(nil), ratios...)
			sort.Float64s(s)
			row += fmt.Sprintf(" | %s | %s | %+.0f %% (%+.0f…%+.0f)", us(median(figs[mode].p50)), us(median(figs[mode].p99)),
				100*median(ratios), 100*s[0], 100*s[len(s)-1])
		}
		fmt.Fprintln(b, row+" |")
	}
	return nil
}
