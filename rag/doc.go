// Package rag will hold retrieval: the embedder, the per-collection vector
// index and query execution over replicated document sets (design §5).
// It is empty until that work lands; the package exists so the layout of
// the design card is visible from the first commit.
package rag
