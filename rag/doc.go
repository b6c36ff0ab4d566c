// Package rag is retrieval on a Shoal peer (design §5): the embedder that
// turns text into vectors with an ONNX export and its tokenizer, one
// approximate-nearest-neighbour index per collection, and the manager that
// keeps those indexes in step with the replicated documents
// (crdt/collections) and answers queries.
//
// Documents replicate with their vectors, so a peer embeds only what it
// ingests and the queries it is asked; every peer answers from its own
// index, and the answer says how fresh that index is.
package rag
