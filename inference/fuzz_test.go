package inference

import (
	"errors"
	"testing"
)

// FuzzParseRequest feeds arbitrary bodies (JSON or binary-extension
// framed) through request parsing and validation against a model with
// inputs of several datatypes: every outcome is a request or ErrBadRequest,
// never a panic.
func FuzzParseRequest(f *testing.F) {
	f.Add([]byte(`{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}`), -1)
	f.Add([]byte(`{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[[1],[2]]}],"outputs":[{"name":"y"}]}`), -1)
	f.Add([]byte(`{"inputs":[{"name":"s","shape":[2],"datatype":"BYTES","data":["a","b"]}]}`), -1)
	f.Add([]byte(`{"inputs":[{"name":"b","shape":[],"datatype":"BOOL","data":true}]}`), -1)
	f.Add([]byte(`{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}12345678`), 87)
	f.Add([]byte(`{"inputs":[{"name":"h","shape":[2],"datatype":"FP16","data":[1e9,-0.0]}]}`), -1)
	s := &Session{Ref: Ref{Model: "m", Version: "v"}, inputs: []TensorMetadata{
		{Name: "x", Datatype: "FP32", Shape: []int64{-1, 2}},
		{Name: "s", Datatype: "BYTES", Shape: []int64{-1}},
		{Name: "b", Datatype: "BOOL", Shape: []int64{}},
		{Name: "h", Datatype: "FP16", Shape: []int64{2}},
		{Name: "i", Datatype: "INT64", Shape: []int64{-1}},
	}, outputs: []TensorMetadata{{Name: "y", Datatype: "FP32", Shape: []int64{-1}}}}
	f.Fuzz(func(t *testing.T, body []byte, headerLen int) {
		req, err := ParseRequest(body, headerLen)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("ParseRequest error not ErrBadRequest: %v", err)
			}
			return
		}
		p, err := s.Prepare(req)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("Prepare error not ErrBadRequest: %v", err)
			}
			return
		}
		_ = p.Canonical()
		for _, in := range p.inputs {
			n, _ := checkShape(in.shape)
			if in.dt.Name != "BYTES" && int64(len(in.raw)) != n*int64(in.dt.Size) {
				t.Fatalf("input %s: %d bytes for shape %v", in.name, len(in.raw), in.shape)
			}
		}
	})
}
