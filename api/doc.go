// Package api is the wire contract of a Shoal peer's HTTP API: the JSON
// bodies of requests and answers, the header names of the consistency
// promises, the server's limits, and the stable error codes a client
// branches on.
//
// It exists so that a Go client — the `shoal` CLI, a fleet tool, a test —
// can speak to a peer without linking the peer: it imports no cgo
// (onnxruntime stays in inference/ and the packages built on it), no
// libp2p host and no HTTP handler. A test in the fence package keeps it
// that way. The server side (httpapi) and every client import it; it
// imports only the replicated record types it carries (crdt, crdt/models,
// crdt/collections, store/artifacts).
package api
