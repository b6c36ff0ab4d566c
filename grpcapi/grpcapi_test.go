package grpcapi

import (
	"bytes"
	"encoding/binary"
	"math"
	"testing"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/grpcapi/inferencepb"
)

// Every code of the catalogue answers a deliberate gRPC code: a new HTTP
// status in api.Codes fails here until it is mapped.
func TestEveryCatalogueCodeHasAGRPCCode(t *testing.T) {
	for _, c := range api.Codes {
		if _, ok := codeByCode[c.Code]; ok {
			continue
		}
		if _, ok := codeByStatus[c.Status]; !ok {
			t.Errorf("%s (HTTP %d) has no gRPC code: add its status to codeByStatus", c.Code, c.Status)
		}
	}
}

// Typed contents render as the raw little-endian bytes the same tensor
// has in raw_input_contents; values past the datatype are refused.
func TestContentsBytes(t *testing.T) {
	le := func(vs ...any) []byte {
		var b bytes.Buffer
		for _, v := range vs {
			binary.Write(&b, binary.LittleEndian, v)
		}
		return b.Bytes()
	}
	for _, tc := range []struct {
		dt   string
		c    *inferencepb.InferTensorContents
		want []byte
	}{
		{"BOOL", &inferencepb.InferTensorContents{BoolContents: []bool{true, false}}, []byte{1, 0}},
		{"INT8", &inferencepb.InferTensorContents{IntContents: []int32{-128, 127}}, le(int8(-128), int8(127))},
		{"INT16", &inferencepb.InferTensorContents{IntContents: []int32{-300, 300}}, le(int16(-300), int16(300))},
		{"INT32", &inferencepb.InferTensorContents{IntContents: []int32{math.MinInt32, 7}}, le(int32(math.MinInt32), int32(7))},
		{"INT64", &inferencepb.InferTensorContents{Int64Contents: []int64{-1, 1 << 40}}, le(int64(-1), int64(1<<40))},
		{"UINT8", &inferencepb.InferTensorContents{UintContents: []uint32{0, 255}}, []byte{0, 255}},
		{"UINT16", &inferencepb.InferTensorContents{UintContents: []uint32{65535}}, le(uint16(65535))},
		{"UINT64", &inferencepb.InferTensorContents{Uint64Contents: []uint64{1 << 63}}, le(uint64(1 << 63))},
		{"FP32", &inferencepb.InferTensorContents{Fp32Contents: []float32{1.5, -2}}, le(float32(1.5), float32(-2))},
		{"FP64", &inferencepb.InferTensorContents{Fp64Contents: []float64{math.Pi}}, le(math.Pi)},
		{"BYTES", &inferencepb.InferTensorContents{BytesContents: [][]byte{[]byte("ab"), {}}}, append(le(uint32(2)), 'a', 'b', 0, 0, 0, 0)},
		{"FP32", &inferencepb.InferTensorContents{}, []byte{}},
	} {
		got, err := contentsBytes(tc.dt, tc.c)
		if err != nil || !bytes.Equal(got, tc.want) {
			t.Errorf("%s %v: %v %v, want %v", tc.dt, tc.c, got, err, tc.want)
		}
	}
	for _, tc := range []struct {
		dt string
		c  *inferencepb.InferTensorContents
	}{
		{"INT8", &inferencepb.InferTensorContents{IntContents: []int32{128}}},
		{"INT16", &inferencepb.InferTensorContents{IntContents: []int32{-40000}}},
		{"UINT8", &inferencepb.InferTensorContents{UintContents: []uint32{256}}},
		{"FP16", &inferencepb.InferTensorContents{}},
		{"FP32", nil},
	} {
		if got, err := contentsBytes(tc.dt, tc.c); err == nil {
			t.Errorf("%s %v: %v, want an error", tc.dt, tc.c, got)
		}
	}
}

// Raw and typed data cannot be mixed, and raw data needs one entry per
// input.
func TestDecodeRequestRefusesMixedData(t *testing.T) {
	in := func(c *inferencepb.InferTensorContents) *inferencepb.ModelInferRequest_InferInputTensor {
		return &inferencepb.ModelInferRequest_InferInputTensor{Name: "x", Datatype: "FP32", Shape: []int64{1}, Contents: c}
	}
	for what, req := range map[string]*inferencepb.ModelInferRequest{
		"both":    {Inputs: []*inferencepb.ModelInferRequest_InferInputTensor{in(&inferencepb.InferTensorContents{Fp32Contents: []float32{1}})}, RawInputContents: [][]byte{{0, 0, 0, 0}}},
		"too few": {Inputs: []*inferencepb.ModelInferRequest_InferInputTensor{in(nil), in(nil)}, RawInputContents: [][]byte{{0, 0, 0, 0}}},
		"no data": {Inputs: []*inferencepb.ModelInferRequest_InferInputTensor{in(nil)}},
	} {
		if _, err := decodeRequest(req); err == nil {
			t.Errorf("%s: decoded", what)
		}
	}
	ok := &inferencepb.ModelInferRequest{Id: "r", Inputs: []*inferencepb.ModelInferRequest_InferInputTensor{in(&inferencepb.InferTensorContents{Fp32Contents: []float32{1}})},
		Parameters: map[string]*inferencepb.InferParameter{"binary_data_output": {ParameterChoice: &inferencepb.InferParameter_BoolParam{BoolParam: true}}}}
	r, err := decodeRequest(ok)
	if err != nil || r.ID != "r" || len(r.Inputs) != 1 || r.Parameters["binary_data_output"] != true {
		t.Errorf("decodeRequest = %+v, %v", r, err)
	}
}
