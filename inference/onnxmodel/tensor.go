package onnxmodel

import (
	"encoding/binary"
	"fmt"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// Tensor is a decoded TensorProto: the format of initializers and of the
// input and output files of the ONNX project's backend test cases.
type Tensor struct {
	Name     string
	Dims     []int64
	DataType int
	// Raw holds the elements little-endian, whatever field the file used
	// (raw_data or the typed repeated fields); BOOL is one byte each.
	Raw []byte
	// Strings holds STRING elements.
	Strings []string
}

// ElemSize is the byte size of one element of an ONNX data type, or 0
// for types this package does not decode.
func ElemSize(dataType int) int {
	switch dataType {
	case Uint8, Int8, Bool:
		return 1
	case Uint16, Int16, Float16:
		return 2
	case Float, Int32, Uint32:
		return 4
	case Int64, Double, Uint64:
		return 8
	}
	return 0
}

// ParseTensor decodes a serialized TensorProto.
func ParseTensor(b []byte) (Tensor, error) {
	var t Tensor
	var typed []uint64 // int32_data, int64_data, uint64_data elements
	var floats []float32
	var doubles []float64
	var raw []byte
	hasRaw := false
	err := walkAll(b, func(num protowire.Number, typ protowire.Type, val []byte, scalar uint64) error {
		switch num {
		case 1: // dims
			if typ == protowire.BytesType {
				return packedVarints(val, func(v uint64) { t.Dims = append(t.Dims, int64(v)) })
			}
			t.Dims = append(t.Dims, int64(scalar))
		case 2:
			t.DataType = int(scalar)
		case 4: // float_data
			if typ == protowire.BytesType {
				for i := 0; i+4 <= len(val); i += 4 {
					floats = append(floats, math.Float32frombits(binary.LittleEndian.Uint32(val[i:])))
				}
			} else {
				floats = append(floats, math.Float32frombits(uint32(scalar)))
			}
		case 5, 7, 11: // int32_data, int64_data, uint64_data
			if typ == protowire.BytesType {
				return packedVarints(val, func(v uint64) { typed = append(typed, v) })
			}
			typed = append(typed, scalar)
		case 6:
			t.Strings = append(t.Strings, string(val))
		case 8:
			t.Name = string(val)
		case 9:
			raw, hasRaw = val, true
		case 10: // double_data
			if typ == protowire.BytesType {
				for i := 0; i+8 <= len(val); i += 8 {
					doubles = append(doubles, math.Float64frombits(binary.LittleEndian.Uint64(val[i:])))
				}
			} else {
				doubles = append(doubles, math.Float64frombits(scalar))
			}
		case 14: // data_location
			if scalar == 1 {
				return fmt.Errorf("onnxmodel: tensor %q has external data", t.Name)
			}
		}
		return nil
	})
	if err != nil {
		return t, err
	}
	if t.DataType == String {
		return t, nil
	}
	size := ElemSize(t.DataType)
	if size == 0 {
		return t, fmt.Errorf("onnxmodel: tensor %q has data type %d, which is not decoded here", t.Name, t.DataType)
	}
	switch {
	case hasRaw:
		t.Raw = append([]byte(nil), raw...)
	case len(floats) > 0:
		for _, f := range floats {
			t.Raw = binary.LittleEndian.AppendUint32(t.Raw, math.Float32bits(f))
		}
	case len(doubles) > 0:
		for _, f := range doubles {
			t.Raw = binary.LittleEndian.AppendUint64(t.Raw, math.Float64bits(f))
		}
	default:
		for _, v := range typed {
			switch size {
			case 1:
				t.Raw = append(t.Raw, byte(v))
			case 2:
				t.Raw = binary.LittleEndian.AppendUint16(t.Raw, uint16(v))
			case 4:
				t.Raw = binary.LittleEndian.AppendUint32(t.Raw, uint32(v))
			default:
				t.Raw = binary.LittleEndian.AppendUint64(t.Raw, v)
			}
		}
	}
	n := int64(1)
	for _, d := range t.Dims {
		n *= d
	}
	if int64(len(t.Raw)) != n*int64(size) {
		return t, fmt.Errorf("onnxmodel: tensor %q: %d bytes for dims %v of type %d", t.Name, len(t.Raw), t.Dims, t.DataType)
	}
	return t, nil
}

func packedVarints(b []byte, f func(uint64)) error {
	for len(b) > 0 {
		v, n := protowire.ConsumeVarint(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		f(v)
		b = b[n:]
	}
	return nil
}

// walkAll is walk with fixed32/fixed64 scalars too.
func walkAll(b []byte, f func(num protowire.Number, typ protowire.Type, val []byte, scalar uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("onnxmodel: bad tag: %w", protowire.ParseError(n))
		}
		b = b[n:]
		var m int
		var err error
		switch typ {
		case protowire.BytesType:
			var v []byte
			v, m = protowire.ConsumeBytes(b)
			if m >= 0 {
				err = f(num, typ, v, 0)
			}
		case protowire.VarintType:
			var v uint64
			v, m = protowire.ConsumeVarint(b)
			if m >= 0 {
				err = f(num, typ, nil, v)
			}
		case protowire.Fixed32Type:
			var v uint32
			v, m = protowire.ConsumeFixed32(b)
			if m >= 0 {
				err = f(num, typ, nil, uint64(v))
			}
		case protowire.Fixed64Type:
			var v uint64
			v, m = protowire.ConsumeFixed64(b)
			if m >= 0 {
				err = f(num, typ, nil, v)
			}
		default:
			m = protowire.ConsumeFieldValue(num, typ, b)
		}
		if m < 0 {
			return fmt.Errorf("onnxmodel: bad field %d: %w", num, protowire.ParseError(m))
		}
		if err != nil {
			return err
		}
		b = b[m:]
	}
	return nil
}

// OIPType names each ONNX tensor element type as the Open Inference
// Protocol does (its datatype strings), for callers that turn ONNX test
// tensors into inference requests.
var OIPType = map[int]string{
	Float: "FP32", Uint8: "UINT8", Int8: "INT8", Uint16: "UINT16",
	Int16: "INT16", Int32: "INT32", Int64: "INT64", String: "BYTES",
	Bool: "BOOL", Float16: "FP16", Double: "FP64", Uint32: "UINT32",
	Uint64: "UINT64",
}
