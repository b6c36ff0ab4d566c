// Package crdttest opens replicas for the tests of the packages built on
// crdt (crdt/models, rag): a real libp2p host on loopback, real gossipsub,
// a real Badger in the test's temporary directory, all closed when the
// test ends. crdt's own tests cannot import it (it imports crdt) and keep
// their own helper with its fault-injection options (crdt/replica_test.go).
package crdttest

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"

	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/store"
)

// OpenReplica starts a lone replica of mesh, closed (and each close
// checked) when the test ends.
func OpenReplica(t testing.TB, mesh string) *crdt.Replica {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(store.Config{Dir: t.TempDir(), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	ps, err := pubsub.NewGossipSub(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	blocks := store.NewBlocks(ctx, h, st.Blockstore(), store.BlocksConfig{})
	r, err := crdt.Open(ctx, crdt.Config{
		Mesh: mesh, Self: h.ID(), PubSub: ps, Datastore: st.Datastore(),
		DAG: blocks.DAG(), Local: blocks.Local(), Adder: blocks.Service(),
		StartupGrace: time.Millisecond, Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("close replica: %v", err)
		}
		blocks.Close()
		if err := st.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
		h.Close()
	})
	return r
}
