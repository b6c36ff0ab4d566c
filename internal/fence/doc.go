// Package fence holds no code: its test keeps Shoal's package graph the
// shape docs/architecture.md draws. Dependencies point one way —
//
//	cmd/shoal → peer → httpapi → {serving, lifecycle, rag} → {inference, crdt/…, api} → store/…
//
// — and the replicated-state packages (crdt/…, store/…) and the wire types
// (api) never link onnxruntime's cgo binding, so a Go client of the API
// and the replication core build without it. A change that breaks either
// fails `go test ./internal/fence/` with the offending import named.
package fence
