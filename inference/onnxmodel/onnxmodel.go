// Package onnxmodel writes and edits ONNX model files at the protobuf wire
// level, without the ONNX schema as generated code.
//
// Shoal needs two things from it: tiny one-operator models it can build at
// run time (probing whether an execution provider really works, exercising
// every tensor datatype through the real onnxruntime in tests), and a way to
// derive a second, different version of a real model (tests and benchmarks
// of hot swap need two versions with the same interface and different
// outputs). Both are a few dozen lines over protowire; the full ONNX schema
// would be thousands.
package onnxmodel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// ONNX TensorProto.DataType values.
const (
	Float   = 1
	Uint8   = 2
	Int8    = 3
	Uint16  = 4
	Int16   = 5
	Int32   = 6
	Int64   = 7
	String  = 8
	Bool    = 9
	Float16 = 10
	Double  = 11
	Uint32  = 12
	Uint64  = 13
)

// Identity returns a model with one input "x" and one output "y" of the
// given ONNX element type, y = Identity(x). dims uses -1 for a dynamic
// dimension. Opset 13, where Identity accepts every tensor type.
func Identity(elemType int, dims []int64) []byte {
	return unary("Identity", elemType, dims)
}

func unary(op string, elemType int, dims []int64) []byte {
	params := make([]string, len(dims))
	for i := range dims {
		params[i] = fmt.Sprintf("d%d", i)
	}
	var graph []byte
	graph = appendMsg(graph, 1, node(op, []string{"x"}, "y"))
	graph = protowire.AppendTag(graph, 2, protowire.BytesType)
	graph = protowire.AppendString(graph, "g")
	graph = appendMsg(graph, 11, valueInfoNamed("x", elemType, params, dims))
	graph = appendMsg(graph, 12, valueInfoNamed("y", elemType, params, dims))
	return modelProto(graph)
}

// modelProto wraps a graph in a ModelProto: IR version 8, opset 13.
func modelProto(graph []byte) []byte {
	var opset []byte
	opset = protowire.AppendTag(opset, 1, protowire.BytesType)
	opset = protowire.AppendString(opset, "")
	opset = protowire.AppendTag(opset, 2, protowire.VarintType)
	opset = protowire.AppendVarint(opset, 13)

	var model []byte
	model = protowire.AppendTag(model, 1, protowire.VarintType)
	model = protowire.AppendVarint(model, 8) // IR version
	model = protowire.AppendTag(model, 2, protowire.BytesType)
	model = protowire.AppendString(model, "shoal")
	model = appendMsg(model, 7, graph)
	model = appendMsg(model, 8, opset)
	return model
}

// ErrNoWeights means ScaleWeights found no float initializer stored as
// raw data.
var ErrNoWeights = errors.New("onnxmodel: no float weights stored as raw data")

// ScaleWeights returns a copy of model with every float32 tensor held in
// raw_data multiplied by factor: graph initializers and the values of
// Constant nodes (exporters use either). The byte length does not change,
// so the edit is done in place on the copy; the result is a valid model
// with the same inputs and outputs and different numbers.
func ScaleWeights(model []byte, factor float32) ([]byte, error) {
	out := append([]byte(nil), model...)
	n := 0
	scaleTensor := func(val []byte) error {
		var dataType uint64
		var raw []byte
		if err := walk(val, func(num protowire.Number, typ protowire.Type, v []byte, scalar int) error {
			switch {
			case num == 2 && typ == protowire.VarintType: // TensorProto.data_type
				dataType = uint64(scalar)
			case num == 9 && typ == protowire.BytesType: // TensorProto.raw_data
				raw = v
			}
			return nil
		}); err != nil {
			return err
		}
		if dataType != Float || len(raw)%4 != 0 || len(raw) < 8 {
			return nil // leave scalars alone: they are often shapes or axes
		}
		for i := 0; i < len(raw); i += 4 {
			f := math.Float32frombits(binary.LittleEndian.Uint32(raw[i:]))
			binary.LittleEndian.PutUint32(raw[i:], math.Float32bits(f*factor))
		}
		n++
		return nil
	}
	err := walk(out, func(num protowire.Number, typ protowire.Type, val []byte, _ int) error {
		if num != 7 || typ != protowire.BytesType { // ModelProto.graph
			return nil
		}
		return walk(val, func(num protowire.Number, typ protowire.Type, val []byte, _ int) error {
			switch {
			case num == 5 && typ == protowire.BytesType: // GraphProto.initializer
				return scaleTensor(val)
			case num == 1 && typ == protowire.BytesType: // GraphProto.node
				return walk(val, func(num protowire.Number, typ protowire.Type, val []byte, _ int) error {
					if num != 5 || typ != protowire.BytesType { // NodeProto.attribute
						return nil
					}
					return walk(val, func(num protowire.Number, typ protowire.Type, val []byte, _ int) error {
						if num == 5 && typ == protowire.BytesType { // AttributeProto.t
							return scaleTensor(val)
						}
						return nil
					})
				})
			}
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, ErrNoWeights
	}
	return out, nil
}

// walk calls f for every field of one message. val aliases b, so callers
// may edit bytes in place; scalar holds varint values.
func walk(b []byte, f func(num protowire.Number, typ protowire.Type, val []byte, scalar int) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("onnxmodel: bad tag: %w", protowire.ParseError(n))
		}
		b = b[n:]
		switch typ {
		case protowire.BytesType:
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return fmt.Errorf("onnxmodel: bad field %d: %w", num, protowire.ParseError(m))
			}
			if err := f(num, typ, v, 0); err != nil {
				return err
			}
			b = b[m:]
		case protowire.VarintType:
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return fmt.Errorf("onnxmodel: bad field %d: %w", num, protowire.ParseError(m))
			}
			if err := f(num, typ, nil, int(v)); err != nil {
				return err
			}
			b = b[m:]
		default:
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return fmt.Errorf("onnxmodel: bad field %d: %w", num, protowire.ParseError(m))
			}
			b = b[m:]
		}
	}
	return nil
}

// MatMulChain returns a model whose cost the request picks: inputs "x"
// (float32 [1,1]) and "n" (int64 [2], the matrix shape), output "y"
// (float32 [1,1]) = the sum of E^(rounds+1), where E is x expanded to an
// n[0]×n[1] square. Work grows with rounds·n³ while the request stays a
// few bytes, so tests can keep an inference running for as long as they
// need (x = 0 keeps every value finite).
func MatMulChain(rounds int) []byte {
	var graph []byte
	graph = appendMsg(graph, 1, node("Expand", []string{"x", "n"}, "e"))
	prev := "e"
	for i := range rounds {
		out := fmt.Sprintf("m%d", i)
		graph = appendMsg(graph, 1, node("MatMul", []string{prev, "e"}, out))
		prev = out
	}
	graph = appendMsg(graph, 1, node("ReduceSum", []string{prev}, "y"))
	graph = protowire.AppendTag(graph, 2, protowire.BytesType)
	graph = protowire.AppendString(graph, "matmul_chain")
	graph = appendMsg(graph, 11, valueInfoNamed("x", Float, []string{"", ""}, []int64{1, 1}))
	graph = appendMsg(graph, 11, valueInfoNamed("n", Int64, []string{""}, []int64{2}))
	graph = appendMsg(graph, 12, valueInfoNamed("y", Float, []string{"", ""}, []int64{1, 1}))
	return modelProto(graph)
}
