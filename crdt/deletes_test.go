package crdt

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	ds "github.com/ipfs/go-datastore"

	"github.com/shoal-mesh/shoal/crdt/sign"
	"github.com/shoal-mesh/shoal/internal/poll"
)

// shownBodies lists what prefix shows through List and ScanAdmitted, by
// key, failing the test when the two disagree about a state that held
// still while both read it (a replica still merging is read again).
func shownBodies(t *testing.T, r *Replica, prefix string) map[string]string {
	t.Helper()
	var listed map[string]string
	for range 20 {
		before := listedBodies(t, r, prefix)
		scanned := scannedBodies(t, r, prefix)
		listed = listedBodies(t, r, prefix)
		if fmt.Sprint(before) != fmt.Sprint(listed) {
			continue // the state moved under the reads
		}
		if fmt.Sprint(listed) != fmt.Sprint(scanned) {
			t.Errorf("List shows %v, ScanAdmitted %v", listed, scanned)
		}
		return listed
	}
	return listed
}

func listedBodies(t *testing.T, r *Replica, prefix string) map[string]string {
	t.Helper()
	listed := map[string]string{}
	entries, err := r.List(context.Background(), prefix)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		var s string
		if err := e.Record.DecodeBody(&s); err != nil {
			t.Fatal(err)
		}
		listed[e.Key] = s
	}
	return listed
}

func scannedBodies(t *testing.T, r *Replica, prefix string) map[string]string {
	t.Helper()
	scanned := map[string]string{}
	if err := r.ScanAdmitted(context.Background(), prefix, func(k string, rec Record, _ []byte) error {
		var s string
		if err := rec.DecodeBody(&s); err != nil {
			return err
		}
		scanned[k] = s
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return scanned
}

// TestUnsignedDeleteChangesNothing: go-ds-crdt's own delete — what a peer
// of an earlier release, or anyone who can reach the mesh, publishes —
// tombstones elements without a signature. It must delete nothing, on the
// peer that made it or any other, before or after a restart, and be
// counted as unsigned.
func TestUnsignedDeleteChangesNothing(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := openNode(t, ctx, t.TempDir(), nodeOpts{})
	defer a.close()
	bDir := t.TempDir()
	b := openNode(t, ctx, bDir, nodeOpts{})
	connect(t, ctx, a, b)
	for _, w := range [][2]string{{"/unit/one", "only"}, {"/unit/two", "first"}, {"/unit/two", "second"}} {
		if _, err := a.r.Put(ctx, w[0], "unit.kv", w[1]); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]string{"/unit/one": "only", "/unit/two": "second"}
	poll.Until(t, 30*time.Second, "b has a's records", func() error {
		if got := shownBodies(t, b.r, "/unit/"); fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("b shows %v", got)
		}
		return nil
	})
	sub := b.r.Subscribe("/unit/", 16)
	defer sub.Close()

	for _, k := range []string{"/unit/one", "/unit/two"} {
		if err := a.r.ds.Delete(ctx, ds.NewKey(k)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.r.getRaw(ctx, "/unit/one"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("go-ds-crdt still shows /unit/one after its own delete (%v): the test proves nothing", err)
	}
	poll.Until(t, 30*time.Second, "b has merged the unsigned deletes", func() error {
		if n := b.r.Counters().Rejected.Unsigned; n != 2 {
			return fmt.Errorf("unsigned = %d", n)
		}
		return nil
	})
	for name, r := range map[string]*Replica{"a": a.r, "b": b.r} {
		if got := shownBodies(t, r, "/unit/"); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s shows %v after unsigned deletes, want %v", name, got, want)
		}
		for k, v := range want {
			if got := bodyOf(t, r, k); got != v {
				t.Errorf("%s: %s = %q, want %q", name, k, got, v)
			}
		}
	}
	for range 2 {
		select {
		case ev := <-sub.C():
			if ev.Type != EventPut || !strings.Contains(string(ev.Value), want[ev.Key]) {
				t.Errorf("b delivered %v %s %s for an unsigned delete, want a put of what still shows", ev.Type, ev.Key, ev.Value)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no event for an unsigned delete")
		}
	}

	b.close()
	b = openNode(t, ctx, bDir, nodeOpts{})
	defer b.close()
	if got := shownBodies(t, b.r, "/unit/"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("b shows %v after a restart, want %v", got, want)
	}
}

// TestSignedDeleteIsAdmittedLikeARecord: a delete is the deleter's signed
// tombstone. A trusted peer's delete replicates (not found, not listed, a
// delete event); an untrusted peer's delete shows only where it is
// trusted and is counted as untrusted elsewhere.
func TestSignedDeleteIsAdmittedLikeARecord(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := openNode(t, ctx, t.TempDir(), nodeOpts{})
	defer a.close()
	b := openNode(t, ctx, t.TempDir(), nodeOpts{config: func(c *Config) {
		c.Signer, c.Trust = sign.NewKey(), sign.NewTrustSet(testKey.ID()) // b trusts a; a does not trust b
	}})
	defer b.close()
	connect(t, ctx, a, b)
	for _, k := range []string{"/unit/doc", "/unit/gone"} {
		if _, err := a.r.Put(ctx, k, "unit.kv", "v"); err != nil {
			t.Fatal(err)
		}
	}
	poll.Until(t, 30*time.Second, "b has a's records", func() error {
		if got := shownBodies(t, b.r, "/unit/"); len(got) != 2 {
			return fmt.Errorf("b shows %v", got)
		}
		return nil
	})
	sub := b.r.Subscribe("/unit/", 16)
	defer sub.Close()

	if _, err := b.r.Delete(ctx, "/unit/doc"); err != nil { // untrusted by a
		t.Fatal(err)
	}
	if _, err := a.r.Delete(ctx, "/unit/gone"); err != nil {
		t.Fatal(err)
	}
	raw, err := DecodeRecord(rawValue(t, a.r, "/unit/gone"))
	if err != nil || !raw.Deleted() || raw.V != TombstoneVersion || raw.Signer != testKey.ID() || len(raw.Body) != 0 {
		t.Fatalf("a delete wrote %+v, %v; want a tombstone signed by a", raw, err)
	}
	poll.Until(t, 30*time.Second, "each has merged the other's delete", func() error {
		if _, err := b.r.Get(ctx, "/unit/gone"); !errors.Is(err, ErrDeleted) {
			return fmt.Errorf("b: /unit/gone: %v", err)
		}
		if n := a.r.Counters().Rejected.Untrusted; n != 1 {
			return fmt.Errorf("a counted %d untrusted", n)
		}
		return nil
	})
	if got := shownBodies(t, a.r, "/unit/"); fmt.Sprint(got) != "map[/unit/doc:v]" {
		t.Errorf("a shows %v: an untrusted delete took effect, or a trusted one did not", got)
	}
	if got := shownBodies(t, b.r, "/unit/"); len(got) != 0 {
		t.Errorf("b, which trusts both deleters, shows %v", got)
	}
	refused(t, b.r, "/unit/doc", ErrDeleted)
	deleted := map[string]bool{}
	for len(deleted) < 2 {
		select {
		case ev := <-sub.C():
			if ev.Type != EventDelete {
				t.Fatalf("b delivered %v %s %s, want deletes", ev.Type, ev.Key, ev.Value)
			}
			deleted[ev.Key] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("b delivered deletes for %v only", deleted)
		}
	}
	if got := b.r.Counters().Rejected; got != (Rejections{}) {
		t.Errorf("b refused %+v", got)
	}
}

// TestDeletesOfAnEarlierReleaseStayDeleted: a store written by a release
// that deleted with go-ds-crdt's tombstones has them signed as tombstones
// at its first start, once; a tombstone that arrives after that is
// unsigned like any other.
func TestDeletesOfAnEarlierReleaseStayDeleted(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	r, closeR := openReplicaAt(t, ctx, dir, false)
	for _, k := range []string{"/unit/gone", "/unit/kept"} {
		if _, err := r.Put(ctx, k, "unit.kv", "v"); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.ds.Delete(ctx, ds.NewKey("/unit/gone")); err != nil { // as the earlier release deleted
		t.Fatal(err)
	}
	if err := r.cfg.Datastore.Delete(ctx, signedDeletesKey); err != nil { // a store of that release
		t.Fatal(err)
	}
	closeR()

	r, closeR = openReplicaAt(t, ctx, dir, false)
	refused(t, r, "/unit/gone", ErrDeleted)
	rec, err := DecodeRecord(rawValue(t, r, "/unit/gone"))
	if err != nil || !rec.Deleted() || rec.Signer != testKey.ID() {
		t.Fatalf("/unit/gone holds %+v, %v; want this peer's tombstone", rec, err)
	}
	if got := bodyOf(t, r, "/unit/kept"); got != "v" {
		t.Errorf("/unit/kept = %q", got)
	}
	if err := r.ds.Delete(ctx, ds.NewKey("/unit/kept")); err != nil { // after the upgrade
		t.Fatal(err)
	}
	closeR()

	r, closeR = openReplicaAt(t, ctx, dir, false)
	defer closeR()
	if got := bodyOf(t, r, "/unit/kept"); got != "v" {
		t.Errorf("/unit/kept = %q after an unsigned delete and a restart", got)
	}
}
