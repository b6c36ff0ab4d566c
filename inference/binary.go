package inference

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
)

// The binary tensor data extension (Triton's "binary_data", which KServe
// clients speak too): the HTTP body is a JSON header of
// Inference-Header-Content-Length bytes followed by raw tensor bytes, in
// the order of the inputs that declare parameters.binary_data_size. It
// saves the JSON cost of large tensors: row-major little-endian elements,
// BOOL one byte each, BYTES as 4-byte little-endian length + bytes.

// HeaderInferenceHeaderLength is the extension's HTTP header.
const HeaderInferenceHeaderLength = "Inference-Header-Content-Length"

// ParseRequest decodes an inference request body. headerLen is the value
// of Inference-Header-Content-Length, or -1 when the body is all JSON.
func ParseRequest(body []byte, headerLen int) (*InferRequest, error) {
	jsonPart, bin := body, []byte(nil)
	if headerLen >= 0 {
		if headerLen > len(body) {
			return nil, badRequest("%s is %d but the body has %d bytes", HeaderInferenceHeaderLength, headerLen, len(body))
		}
		jsonPart, bin = body[:headerLen], body[headerLen:]
	}
	var req InferRequest
	dec := json.NewDecoder(bytes.NewReader(jsonPart))
	if err := dec.Decode(&req); err != nil {
		return nil, badRequest("the body is not an OIP v2 inference request: %v", err)
	}
	for i := range req.Inputs {
		in := &req.Inputs[i]
		v, ok := in.Parameters["binary_data_size"]
		if !ok {
			continue
		}
		size, ok := asInt(v)
		if !ok || size < 0 {
			return nil, badRequest("input %q: binary_data_size %v is not a byte count", in.Name, v)
		}
		if size > len(bin) {
			return nil, badRequest("input %q: binary_data_size %d, but only %d binary bytes remain in the body", in.Name, size, len(bin))
		}
		in.binary, bin = bin[:size:size], bin[size:]
		in.hasBinary = true
	}
	if len(bin) > 0 {
		return nil, badRequest("%d binary bytes after the last input's binary_data_size", len(bin))
	}
	return &req, nil
}

func asInt(v any) (int, bool) {
	switch x := v.(type) {
	case float64:
		if x == math.Trunc(x) && x >= 0 && x <= math.MaxInt32*16 {
			return int(x), true
		}
	case json.Number:
		n, err := strconv.Atoi(string(x))
		return n, err == nil
	}
	return 0, false
}

// decodeBinary fills t from raw extension bytes.
func decodeBinary(t *tensor, raw []byte, n int64) error {
	if t.dt.Name == "BYTES" {
		var out []string
		for len(raw) > 0 {
			if len(raw) < 4 {
				return fmt.Errorf("truncated BYTES element length")
			}
			l := binary.LittleEndian.Uint32(raw)
			raw = raw[4:]
			if uint64(l) > uint64(len(raw)) {
				return fmt.Errorf("BYTES element of %d bytes overruns the data", l)
			}
			out = append(out, string(raw[:l]))
			raw = raw[l:]
		}
		if int64(len(out)) != n {
			return fmt.Errorf("%d elements for shape %v, which needs %d", len(out), t.shape, n)
		}
		t.strings = out
		return nil
	}
	if want := n * int64(t.dt.Size); int64(len(raw)) != want {
		return fmt.Errorf("%d bytes of binary data for shape %v of %s, which needs %d", len(raw), t.shape, t.dt.Name, want)
	}
	t.raw = raw
	return nil
}

// WantsBinary reports whether output name is to be returned as binary
// data: requested per output, or for all outputs with the request
// parameter binary_data_output.
func (r *InferRequest) WantsBinary(name string) bool {
	for _, o := range r.Outputs {
		if o.Name == name {
			if b, ok := o.Parameters["binary_data"].(bool); ok {
				return b
			}
		}
	}
	b, _ := r.Parameters["binary_data_output"].(bool)
	return b
}

// EncodeResponse renders a response, moving the outputs the request asks
// for as binary into a binary section after the JSON. headerLen is -1 when
// the body is plain JSON (no binary outputs).
func EncodeResponse(resp InferResponse, req *InferRequest) (body []byte, headerLen int, err error) {
	var bin []byte
	outs := make([]ResponseOutput, len(resp.Outputs))
	copy(outs, resp.Outputs)
	for i := range outs {
		o := &outs[i]
		if !req.WantsBinary(o.Name) {
			continue
		}
		raw, err := rawBytes(o.Datatype, o.Data)
		if err != nil {
			return nil, 0, fmt.Errorf("output %q: %w", o.Name, err)
		}
		params := map[string]any{"binary_data_size": len(raw)}
		for k, v := range o.Parameters {
			params[k] = v
		}
		o.Parameters, o.Data = params, nil
		bin = append(bin, raw...)
	}
	resp.Outputs = outs
	js, err := json.Marshal(resp)
	if err != nil {
		return nil, 0, err
	}
	if bin == nil {
		return js, -1, nil
	}
	return append(js, bin...), len(js), nil
}

// rawBytes renders decoded output data (as encodeOutput or a JSON
// round trip left it) as little-endian element bytes.
func rawBytes(datatype string, data any) ([]byte, error) {
	dt, ok := datatypeByName(datatype)
	if !ok {
		return nil, fmt.Errorf("unknown datatype %s", datatype)
	}
	// A cached response has been through JSON: normalise to []any.
	var elems []any
	switch d := data.(type) {
	case []float32:
		b := make([]byte, 0, len(d)*dt.Size)
		for _, f := range d {
			b = appendFloat(b, dt, float64(f))
		}
		return b, nil
	case []string:
		var b []byte
		for _, s := range d {
			b = binary.LittleEndian.AppendUint32(b, uint32(len(s)))
			b = append(b, s...)
		}
		return b, nil
	case []any:
		elems = d
	default:
		js, err := json.Marshal(d)
		if err != nil {
			return nil, err
		}
		dec := json.NewDecoder(bytes.NewReader(js))
		dec.UseNumber()
		if err := dec.Decode(&elems); err != nil {
			return nil, err
		}
	}
	var b []byte
	for _, e := range elems {
		switch x := e.(type) {
		case nil:
			b = appendFloat(b, dt, math.NaN())
		case bool:
			if x {
				b = append(b, 1)
			} else {
				b = append(b, 0)
			}
		case string:
			b = binary.LittleEndian.AppendUint32(b, uint32(len(x)))
			b = append(b, x...)
		case float64:
			b = appendNumber(b, dt, json.Number(strconv.FormatFloat(x, 'g', -1, 64)))
		case json.Number:
			b = appendNumber(b, dt, x)
		default:
			return nil, fmt.Errorf("element %v of %s", e, datatype)
		}
	}
	return b, nil
}

func appendFloat(b []byte, dt Datatype, f float64) []byte {
	switch dt.Name {
	case "FP16":
		return binary.LittleEndian.AppendUint16(b, float32ToHalf(float32(f)))
	case "FP64":
		return binary.LittleEndian.AppendUint64(b, math.Float64bits(f))
	}
	return binary.LittleEndian.AppendUint32(b, math.Float32bits(float32(f)))
}

func appendNumber(b []byte, dt Datatype, n json.Number) []byte {
	start := len(b)
	b = append(b, make([]byte, dt.Size)...)
	if err := putElement(b[start:], dt, n); err != nil {
		// Integers that came back through float64 JSON decoding.
		if f, ferr := n.Float64(); ferr == nil {
			putUint(b[start:], dt.Size, uint64(int64(f)))
		}
	}
	return b
}

// RawInput is an input whose data is given as raw little-endian element
// bytes, as the binary extension and gRPC's raw_input_contents carry it
// (BYTES elements: a 4-byte little-endian length, then the bytes).
// Prepare checks the byte count against the shape and datatype.
func RawInput(name, datatype string, shape []int64, raw []byte) RequestInput {
	return RequestInput{Name: name, Datatype: datatype, Shape: shape, binary: raw, hasBinary: true}
}

// Raw renders the output's data as raw little-endian element bytes, the
// form of the binary extension and of gRPC's raw_output_contents.
func (o ResponseOutput) Raw() ([]byte, error) { return rawBytes(o.Datatype, o.Data) }
