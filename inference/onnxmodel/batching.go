package onnxmodel

import "google.golang.org/protobuf/encoding/protowire"

// Models for tests of dynamic batching: one with two outputs, so that
// requests can ask for different ones, and one whose first output
// dimension is not its rows, which batching must detect.

// IdentityNeg returns a model with one input "x" (float32 [-1, n]) and two
// outputs, "y" = x and "neg" = -x, all with a dynamic first dimension.
func IdentityNeg(n int64) []byte {
	rows := []string{"rows", ""}
	dims := []int64{-1, n}
	var graph []byte
	graph = appendMsg(graph, 1, node("Identity", []string{"x"}, "y"))
	graph = appendMsg(graph, 1, node("Neg", []string{"x"}, "neg"))
	graph = protowire.AppendTag(graph, 2, protowire.BytesType)
	graph = protowire.AppendString(graph, "identity_neg")
	graph = appendMsg(graph, 11, valueInfoNamed("x", Float, rows, dims))
	graph = appendMsg(graph, 12, valueInfoNamed("y", Float, rows, dims))
	graph = appendMsg(graph, 12, valueInfoNamed("neg", Float, rows, dims))
	return modelProto(graph)
}

// Transpose returns a model with input "x" (float32, two dynamic
// dimensions) and output "y" = xᵀ: its metadata looks batchable (dynamic
// first dimensions), but a run of r rows of n answers n rows of r.
func Transpose() []byte {
	var graph []byte
	graph = appendMsg(graph, 1, node("Transpose", []string{"x"}, "y"))
	graph = protowire.AppendTag(graph, 2, protowire.BytesType)
	graph = protowire.AppendString(graph, "transpose")
	graph = appendMsg(graph, 11, valueInfoNamed("x", Float, []string{"rows", "cols"}, nil))
	graph = appendMsg(graph, 12, valueInfoNamed("y", Float, []string{"cols", "rows"}, nil))
	return modelProto(graph)
}
