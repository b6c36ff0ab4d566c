package inference

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/shoal-mesh/shoal/inference/onnxmodel"
)

func TestBinaryExtensionRoundTripsEveryKind(t *testing.T) {
	e := openEngine(t)
	for _, tc := range []struct {
		elem int
		dt   string
		raw  []byte
		want string
	}{
		{onnxmodel.Int64, "INT64", binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, 7), 1<<62), "[7 4611686018427387904]"},
		{onnxmodel.Bool, "BOOL", []byte{1, 0}, "[true false]"},
		{onnxmodel.String, "BYTES", append(append(binary.LittleEndian.AppendUint32(nil, 3), "abc"...), binary.LittleEndian.AppendUint32(nil, 0)...), "[abc ]"},
	} {
		s, err := e.Load(context.Background(), Ref{Model: "id", Version: tc.dt}, onnxmodel.Identity(tc.elem, []int64{2}), nil)
		if err != nil {
			t.Fatal(err)
		}
		header := fmt.Sprintf(`{"inputs":[{"name":"x","shape":[2],"datatype":%q,"parameters":{"binary_data_size":%d}}],"parameters":{"binary_data_output":true}}`, tc.dt, len(tc.raw))
		req, err := ParseRequest(append([]byte(header), tc.raw...), len(header))
		if err != nil {
			t.Fatal(err)
		}
		out := infer(t, s, req)
		if fmt.Sprint(out[0].Data) != tc.want {
			t.Errorf("%s: %v, want %s", tc.dt, out[0].Data, tc.want)
		}
		body, hl, err := EncodeResponse(InferResponse{ModelName: "id", Outputs: out}, req)
		if err != nil || hl < 0 || string(body[hl:]) != string(tc.raw) {
			t.Errorf("%s: binary response %q (header %d, %v), want the input bytes back", tc.dt, body, hl, err)
		}
		s.Retire()
	}
	for _, tc := range []struct {
		body string
		hl   int
		msg  string
	}{
		{`{"inputs":[{"name":"x","parameters":{"binary_data_size":8}}]}1234`, 61, "only 4 binary bytes remain"},
		{`{"inputs":[{"name":"x","parameters":{"binary_data_size":-1}}]}`, 62, "not a byte count"},
		{`{"inputs":[]}extra`, 13, "5 binary bytes after"},
		{`{"inputs":[]}`, 99, "body has 13 bytes"},
	} {
		if _, err := ParseRequest([]byte(tc.body), tc.hl); !errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: %v, want %q", tc.body, err, tc.msg)
		}
	}
}
