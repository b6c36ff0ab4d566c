package grpcapi

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/shoal-mesh/shoal/grpcapi/inferencepb"
	"github.com/shoal-mesh/shoal/httpapi"
	"github.com/shoal-mesh/shoal/inference"
	"github.com/shoal-mesh/shoal/internal/errs"
	"github.com/shoal-mesh/shoal/serving"
)

var describe = httpapi.Describe

// errBadInput marks a request whose tensors this API cannot decode; the
// serving path's ErrBadInput, so it answers CodeInferenceInput.
func errBadInput(format string, args ...any) error {
	return errs.Mark(serving.ErrBadInput, fmt.Errorf(format, args...))
}

// decodeRequest turns a gRPC inference request into the serving path's
// form. Tensor data comes either all as raw_input_contents (what Triton's
// clients send) or as each input's typed contents, which are rendered as
// the same raw little-endian bytes; either way the model's session checks
// the byte count against shape and datatype.
func decodeRequest(req *inferencepb.ModelInferRequest) (*inference.InferRequest, error) {
	raw := req.RawInputContents
	if len(raw) > 0 && len(raw) != len(req.Inputs) {
		return nil, errBadInput("%d raw_input_contents for %d inputs: give one per input, or none and contents", len(raw), len(req.Inputs))
	}
	ir := &inference.InferRequest{ID: req.Id, Parameters: params(req.Parameters)}
	for i, in := range req.Inputs {
		var data []byte
		switch {
		case len(raw) > 0 && in.Contents != nil:
			return nil, errBadInput("input %q has contents while raw_input_contents are given", in.Name)
		case len(raw) > 0:
			data = raw[i]
		default:
			var err error
			if data, err = contentsBytes(in.Datatype, in.Contents); err != nil {
				return nil, errBadInput("input %q: %w", in.Name, err)
			}
		}
		ir.Inputs = append(ir.Inputs, inference.RawInput(in.Name, in.Datatype, in.Shape, data))
	}
	for _, o := range req.Outputs {
		ir.Outputs = append(ir.Outputs, inference.RequestOutput{Name: o.Name, Parameters: params(o.Parameters)})
	}
	return ir, nil
}

// params renders gRPC parameters as the REST API's JSON values.
func params(ps map[string]*inferencepb.InferParameter) map[string]any {
	if len(ps) == 0 {
		return nil
	}
	out := make(map[string]any, len(ps))
	for k, p := range ps {
		switch v := p.GetParameterChoice().(type) {
		case *inferencepb.InferParameter_BoolParam:
			out[k] = v.BoolParam
		case *inferencepb.InferParameter_Int64Param:
			out[k] = float64(v.Int64Param) // as JSON would decode it
		case *inferencepb.InferParameter_StringParam:
			out[k] = v.StringParam
		case *inferencepb.InferParameter_DoubleParam:
			out[k] = v.DoubleParam
		case *inferencepb.InferParameter_Uint64Param:
			out[k] = float64(v.Uint64Param)
		}
	}
	return out
}

var errNoContents = errors.New("no data: neither contents nor raw_input_contents")

// contentsBytes renders typed contents as raw little-endian elements of
// datatype. An element out of the datatype's range is refused, not
// wrapped.
func contentsBytes(datatype string, c *inferencepb.InferTensorContents) ([]byte, error) {
	if c == nil {
		return nil, errNoContents
	}
	var b []byte
	ints := func(vs []int32, bits int) error {
		lo, hi := int32(-1)<<(bits-1), int32(1)<<(bits-1)-1
		if bits == 32 {
			lo, hi = math.MinInt32, math.MaxInt32
		}
		for _, v := range vs {
			if v < lo || v > hi {
				return fmt.Errorf("%d is out of range for %s", v, datatype)
			}
			n := len(b)
			b = binary.LittleEndian.AppendUint32(b, uint32(v))[:n+bits/8]
		}
		return nil
	}
	uints := func(vs []uint32, bits int) error {
		for _, v := range vs {
			if bits < 32 && v >= 1<<bits {
				return fmt.Errorf("%d is out of range for %s", v, datatype)
			}
			n := len(b)
			b = binary.LittleEndian.AppendUint32(b, v)[:n+bits/8]
		}
		return nil
	}
	var err error
	switch datatype {
	case "BOOL":
		for _, v := range c.BoolContents {
			if v {
				b = append(b, 1)
			} else {
				b = append(b, 0)
			}
		}
	case "INT8":
		err = ints(c.IntContents, 8)
	case "INT16":
		err = ints(c.IntContents, 16)
	case "INT32":
		err = ints(c.IntContents, 32)
	case "INT64":
		for _, v := range c.Int64Contents {
			b = binary.LittleEndian.AppendUint64(b, uint64(v))
		}
	case "UINT8":
		err = uints(c.UintContents, 8)
	case "UINT16":
		err = uints(c.UintContents, 16)
	case "UINT32":
		err = uints(c.UintContents, 32)
	case "UINT64":
		for _, v := range c.Uint64Contents {
			b = binary.LittleEndian.AppendUint64(b, v)
		}
	case "FP32":
		for _, v := range c.Fp32Contents {
			b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
		}
	case "FP64":
		for _, v := range c.Fp64Contents {
			b = binary.LittleEndian.AppendUint64(b, math.Float64bits(v))
		}
	case "BYTES":
		for _, v := range c.BytesContents {
			b = binary.LittleEndian.AppendUint32(b, uint32(len(v)))
			b = append(b, v...)
		}
	default:
		return nil, fmt.Errorf("datatype %q has no typed contents; send it in raw_input_contents", datatype)
	}
	if b == nil {
		b = []byte{}
	}
	return b, err
}

// encodeResponse renders the serving path's answer, every output as raw
// bytes (Triton's clients read raw_output_contents first).
func encodeResponse(r *inference.InferResponse) (*inferencepb.ModelInferResponse, error) {
	resp := &inferencepb.ModelInferResponse{ModelName: r.ModelName, ModelVersion: r.ModelVersion, Id: r.ID}
	for _, o := range r.Outputs {
		raw, err := o.Raw()
		if err != nil {
			return nil, fmt.Errorf("output %q: %w", o.Name, err)
		}
		resp.Outputs = append(resp.Outputs, &inferencepb.ModelInferResponse_InferOutputTensor{Name: o.Name, Datatype: o.Datatype, Shape: o.Shape})
		resp.RawOutputContents = append(resp.RawOutputContents, raw)
	}
	return resp, nil
}
