package onnxmodel

import (
	"encoding/binary"
	"math"
	"math/rand"

	"google.golang.org/protobuf/encoding/protowire"
)

// HashEmbedder builds a lexical text-embedding model with the interface
// of a BERT-style sentence-transformers export: inputs input_ids,
// attention_mask and token_type_ids (int64 [batch, sequence]), output
// last_hidden_state (float32 [batch, sequence, dim]), to be mean-pooled
// over the attention mask.
//
// Each token id is hashed into one of buckets rows of a fixed random table
// (seeded, so every peer builds the same bytes and the same CID): a
// random-projection bag of word pieces. Texts that share word pieces get
// close vectors; it knows nothing of meaning. It exists because no
// sentence-embedding weights are reachable from these machines (see
// docs/retrieval.md); any real export with the same interface replaces it.
func HashEmbedder(buckets, dim int, seed int64) []byte {
	r := rand.New(rand.NewSource(seed))
	table := make([]byte, 4*buckets*dim)
	scale := 1 / math.Sqrt(float64(dim))
	for i := 0; i < buckets*dim; i++ {
		binary.LittleEndian.PutUint32(table[4*i:], math.Float32bits(float32(r.NormFloat64()*scale)))
	}
	var graph []byte
	graph = appendMsg(graph, 1, node("Mod", []string{"input_ids", "buckets"}, "bucket_ids"))
	graph = appendMsg(graph, 1, node("Gather", []string{"table", "bucket_ids"}, "last_hidden_state"))
	graph = protowire.AppendTag(graph, 2, protowire.BytesType)
	graph = protowire.AppendString(graph, "shoal_hash_embedder")
	graph = appendMsg(graph, 5, initializer("table", Float, []int64{int64(buckets), int64(dim)}, table))
	graph = appendMsg(graph, 5, initializer("buckets", Int64, nil, binary.LittleEndian.AppendUint64(nil, uint64(buckets))))
	for _, in := range []string{"input_ids", "attention_mask", "token_type_ids"} {
		graph = appendMsg(graph, 11, valueInfoNamed(in, Int64, []string{"batch", "sequence"}, nil))
	}
	graph = appendMsg(graph, 12, valueInfoNamed("last_hidden_state", Float, []string{"batch", "sequence", ""}, []int64{-1, -1, int64(dim)}))

	return modelProto(graph)
}

func appendMsg(b []byte, num protowire.Number, msg []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, msg)
}

func node(op string, inputs []string, output string) []byte {
	var n []byte
	for _, in := range inputs {
		n = protowire.AppendTag(n, 1, protowire.BytesType)
		n = protowire.AppendString(n, in)
	}
	n = protowire.AppendTag(n, 2, protowire.BytesType)
	n = protowire.AppendString(n, output)
	n = protowire.AppendTag(n, 4, protowire.BytesType)
	n = protowire.AppendString(n, op)
	return n
}

func initializer(name string, dataType int, dims []int64, raw []byte) []byte {
	var t []byte
	for _, d := range dims {
		t = protowire.AppendTag(t, 1, protowire.VarintType)
		t = protowire.AppendVarint(t, uint64(d))
	}
	t = protowire.AppendTag(t, 2, protowire.VarintType)
	t = protowire.AppendVarint(t, uint64(dataType))
	t = protowire.AppendTag(t, 8, protowire.BytesType)
	t = protowire.AppendString(t, name)
	t = protowire.AppendTag(t, 9, protowire.BytesType)
	t = protowire.AppendBytes(t, raw)
	return t
}

// valueInfoNamed describes a tensor: dims[i] >= 0 is a fixed size,
// otherwise (or when dims is nil) the dimension is symbolic, named params[i].
func valueInfoNamed(name string, elemType int, params []string, dims []int64) []byte {
	var shape []byte
	for i, p := range params {
		var dim []byte
		if dims != nil && dims[i] >= 0 {
			dim = protowire.AppendTag(dim, 1, protowire.VarintType)
			dim = protowire.AppendVarint(dim, uint64(dims[i]))
		} else {
			dim = protowire.AppendTag(dim, 2, protowire.BytesType)
			dim = protowire.AppendString(dim, p)
		}
		shape = appendMsg(shape, 1, dim)
	}
	var tensor []byte
	tensor = protowire.AppendTag(tensor, 1, protowire.VarintType)
	tensor = protowire.AppendVarint(tensor, uint64(elemType))
	tensor = appendMsg(tensor, 2, shape)
	var typ []byte
	typ = appendMsg(typ, 1, tensor)
	var vi []byte
	vi = protowire.AppendTag(vi, 1, protowire.BytesType)
	vi = protowire.AppendString(vi, name)
	vi = appendMsg(vi, 2, typ)
	return vi
}
