package crdt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	ds "github.com/ipfs/go-datastore"

	"github.com/shoal-mesh/shoal/crdt/sign"
	"github.com/shoal-mesh/shoal/internal/poll"
)

// testKey signs the records of every test replica, and testTrust trusts
// it, so tests of everything else see each other's writes; the admission
// tests below give a replica keys of its own (nodeOpts.config).
var (
	testKey   = sign.NewKey()
	testTrust = sign.NewTrustSet(testKey.ID())
)

// signedValue is what a replica of mesh "unit" signing with key writes
// for rec under key: how a test makes the record an attacker holds.
func signedValue(t *testing.T, key *sign.Key, k string, rec Record) []byte {
	t.Helper()
	rec.Signer = key.ID()
	rec.Sig = key.Sign(rec.SigningBytes("unit", k))
	b, err := rec.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// publish writes raw bytes under k through go-ds-crdt itself, as a new
// delta block at the top of the DAG: what a peer that crafts its own
// blocks (an attacker) can put in front of every replica.
func publish(t *testing.T, r *Replica, k string, value []byte) {
	t.Helper()
	if err := r.ds.Put(context.Background(), ds.NewKey(k), value); err != nil {
		t.Fatal(err)
	}
}

func rawValue(t *testing.T, r *Replica, k string) []byte {
	t.Helper()
	b, err := r.getRaw(context.Background(), k)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func bodyOf(t *testing.T, r *Replica, k string) string {
	t.Helper()
	rec, err := r.Get(context.Background(), k)
	if err != nil {
		t.Fatalf("Get(%s): %v", k, err)
	}
	var s string
	if err := rec.DecodeBody(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// refused asserts that k reads as not found, for the reason want, and is
// not listed.
func refused(t *testing.T, r *Replica, k string, want error) {
	t.Helper()
	_, err := r.Get(context.Background(), k)
	if !errors.Is(err, ErrNotFound) || !errors.Is(err, want) {
		t.Errorf("Get(%s): err = %v, want ErrNotFound wrapping %v", k, err, want)
	}
	entries, err := r.List(context.Background(), k)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Key == k {
			t.Errorf("List shows refused %s: %+v", k, e.Record)
		}
	}
}

func rejected(t *testing.T, r *Replica, want Rejections) {
	t.Helper()
	poll.Until(t, 10*time.Second, fmt.Sprintf("rejections %+v", want), func() error {
		if got := r.Counters().Rejected; got != want {
			return fmt.Errorf("rejections %+v", got)
		}
		return nil
	})
}

// TestRecordsAreSignedAndBoundToTheirKey: what Put writes carries the
// signer and a signature; the same bytes under another key, or with a
// byte of the body changed, are forged — and a forged overwrite does not
// hide the record it tried to replace.
func TestRecordsAreSignedAndBoundToTheirKey(t *testing.T) {
	r := openReplica(t)
	ctx := context.Background()
	if _, err := r.Put(ctx, "/unit/a", "unit.kv", "genuine"); err != nil {
		t.Fatal(err)
	}
	raw := rawValue(t, r, "/unit/a")
	rec, err := DecodeRecord(raw)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Signer != testKey.ID() || len(rec.Sig) == 0 {
		t.Fatalf("Put wrote signer %q, %d signature bytes", rec.Signer, len(rec.Sig))
	}

	publish(t, r, "/unit/moved", raw) // a signature moved to another key
	refused(t, r, "/unit/moved", ErrForged)

	tampered := []byte(strings.Replace(string(raw), `"genuine"`, `"tampered"`, 1))
	publish(t, r, "/unit/a", tampered)
	if !strings.Contains(string(rawValue(t, r, "/unit/a")), "tampered") {
		t.Fatal("go-ds-crdt does not hold the tampered value: the test proves nothing")
	}
	if got := bodyOf(t, r, "/unit/a"); got != "genuine" {
		t.Errorf("after a tampered overwrite, Get = %q, want the genuine record", got)
	}
	rejected(t, r, Rejections{Forged: 2})
}

// TestUnsignedRecordIsInvisible: a record without a signature (what a
// peer of an earlier release, or one that crafts its own blocks, writes)
// is not found, not listed, and subscribers are told the key is gone.
func TestUnsignedRecordIsInvisible(t *testing.T) {
	r := openReplica(t)
	sub := r.Subscribe("/unit/", 16)
	defer sub.Close()
	rec := Record{V: RecordVersion, Kind: "unit.kv", HLC: r.Clock().Now(), Writer: r.Self().String(), Body: json.RawMessage(`"unsigned"`)}
	raw, err := rec.Encode()
	if err != nil {
		t.Fatal(err)
	}
	publish(t, r, "/unit/u", raw)
	select {
	case ev := <-sub.C():
		if ev.Type != EventDelete || ev.Key != "/unit/u" {
			t.Errorf("event for an unsigned record: %v %s %+v", ev.Type, ev.Key, ev.Record)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no event for the unsigned record")
	}
	refused(t, r, "/unit/u", ErrUnsigned)
	rejected(t, r, Rejections{Unsigned: 1})
}

// TestFutureRecordIsRefused: a trusted writer's record stamped an hour
// ahead is refused (and does not drag this peer's clock along).
func TestFutureRecordIsRefused(t *testing.T) {
	r := openReplica(t)
	h := r.Clock().Now()
	h.Wall += int64(time.Hour)
	publish(t, r, "/unit/f", signedValue(t, testKey, "/unit/f", Record{V: RecordVersion, Kind: "unit.kv", HLC: h, Writer: "p", Body: json.RawMessage(`"later"`)}))
	refused(t, r, "/unit/f", ErrFuture)
	rejected(t, r, Rejections{Future: 1})
	if now := r.Clock().Now(); now.Wall >= h.Wall {
		t.Errorf("the clock followed a refused future record to %v", now)
	}
}

// TestReplayedRecordDoesNotWin: an old signed record published again on
// top of the DAG (where go-ds-crdt would make it win) is refused as
// replayed; the newer record stays visible to Get, List and subscribers,
// also after a restart, and a deleted record cannot be brought back.
func TestReplayedRecordDoesNotWin(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	r, closeR := openReplicaAt(t, ctx, dir, false)
	if _, err := r.Put(ctx, "/unit/x", "unit.kv", "old"); err != nil {
		t.Fatal(err)
	}
	old := rawValue(t, r, "/unit/x")
	if _, err := r.Put(ctx, "/unit/x", "unit.kv", "new"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Put(ctx, "/unit/y", "unit.kv", "deleted"); err != nil {
		t.Fatal(err)
	}
	deleted := rawValue(t, r, "/unit/y")
	if _, err := r.Delete(ctx, "/unit/y"); err != nil {
		t.Fatal(err)
	}

	poll.Until(t, 10*time.Second, "the writes so far dispatched", func() error {
		if d, q := r.Dispatched(), r.EventSeq(); d < q {
			return fmt.Errorf("dispatched %d of %d", d, q)
		}
		return nil
	})
	sub := r.Subscribe("/unit/", 16) // sees the replays only
	defer sub.Close()
	publish(t, r, "/unit/x", old)
	publish(t, r, "/unit/y", deleted)
	if string(rawValue(t, r, "/unit/x")) != string(old) {
		t.Fatal("go-ds-crdt does not show the replayed value: the test proves nothing")
	}
	for _, want := range []string{"/unit/x", "/unit/y"} {
		select {
		case ev := <-sub.C():
			switch {
			case ev.Key != want:
				t.Errorf("event for %s, want %s", ev.Key, want)
			case want == "/unit/x" && (ev.Type != EventPut || !strings.Contains(string(ev.Value), `"new"`)):
				t.Errorf("replay of /unit/x delivered %v %s, want the newer record again", ev.Type, ev.Value)
			case want == "/unit/y" && ev.Type != EventDelete:
				t.Errorf("replay of deleted /unit/y delivered %v %s", ev.Type, ev.Value)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no event for the replay of %s", want)
		}
	}
	check := func() {
		t.Helper()
		if got := bodyOf(t, r, "/unit/x"); got != "new" {
			t.Errorf("/unit/x after its replay = %q, want new", got)
		}
		entries, err := r.List(ctx, "/unit/")
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 1 || entries[0].Key != "/unit/x" || !strings.Contains(string(entries[0].Record.Body), "new") {
			t.Errorf("List after the replays = %+v", entries)
		}
		refused(t, r, "/unit/y", ErrDeleted) // its replay counted as replayed
		scanned := map[string]string{}
		if err := r.ScanAdmitted(ctx, "/unit/", func(k string, rec Record, value []byte) error {
			scanned[k] = string(value)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if len(scanned) != 1 || !strings.Contains(scanned["/unit/x"], `"new"`) {
			t.Errorf("ScanAdmitted after the replays = %v", scanned)
		}
	}
	check()
	rejected(t, r, Rejections{Replayed: 2})

	closeR()
	r, closeR = openReplicaAt(t, ctx, dir, false)
	defer closeR()
	check() // the rule reads the DAG, not what this peer saw before
}

// TestUntrustedPeerIsInvisible: a replica whose key this one does not
// trust writes a new record and overwrites a trusted one; here the first
// is never shown and the second does not displace the trusted record.
func TestUntrustedPeerIsInvisible(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := openNode(t, ctx, t.TempDir(), nodeOpts{})
	defer a.close()
	stranger := sign.NewKey()
	b := openNode(t, ctx, t.TempDir(), nodeOpts{config: func(c *Config) {
		c.Signer, c.Trust = stranger, sign.NewTrustSet(testKey.ID()) // b trusts a; a does not trust b
	}})
	defer b.close()
	connect(t, ctx, a, b)
	sub := a.r.Subscribe("/unit/", 16)
	defer sub.Close()

	if _, err := a.r.Put(ctx, "/unit/doc", "unit.kv", "trusted"); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, "b has a's record", func() error {
		_, err := b.r.Get(ctx, "/unit/doc")
		return err
	})
	if _, err := b.r.Put(ctx, "/unit/doc", "unit.kv", "overwritten"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.r.Put(ctx, "/unit/new", "unit.kv", "planted"); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, "a has merged b's records", func() error {
		if _, err := a.r.getRaw(ctx, "/unit/new"); err != nil {
			return err
		}
		if v := a.r.Counters().Rejected.Untrusted; v != 2 {
			return fmt.Errorf("untrusted = %d", v)
		}
		return nil
	})
	refused(t, a.r, "/unit/new", ErrUntrusted)
	if got := bodyOf(t, a.r, "/unit/doc"); got != "trusted" {
		t.Errorf("a shows /unit/doc = %q after an untrusted overwrite", got)
	}
	if got := bodyOf(t, b.r, "/unit/doc"); got != "overwritten" {
		t.Errorf("b, which trusts both, shows /unit/doc = %q", got) // the CRDT still converges underneath
	}
	for {
		select {
		case ev := <-sub.C():
			if ev.Type == EventPut && ev.Record.Signer != testKey.ID() {
				t.Errorf("a delivered an untrusted record: %s %s", ev.Key, ev.Value)
			}
			continue
		default:
		}
		break
	}
	rejected(t, a.r, Rejections{Untrusted: 2})
}

// TestElementsLayout guards the go-ds-crdt layout admission reads: a key
// written twice has two elements, each block's identity is readable, and
// go-ds-crdt's own delete tombstones them where rawDeletes looks.
func TestElementsLayout(t *testing.T) {
	r := openReplica(t)
	ctx := context.Background()
	var ids []identity
	for _, v := range []string{"one", "two"} {
		w, err := r.Put(ctx, "/unit/l", "unit.kv", v)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, identity{w.HLC, string(testKey.ID())})
	}
	if _, err := r.Put(ctx, "/unit/l/child", "unit.kv", "descendant"); err != nil {
		t.Fatal(err)
	}
	els, err := r.elements(ctx, "/unit/l")
	if err != nil || len(els) != 2 {
		t.Fatalf("elements = %v, %v; go-ds-crdt's element layout changed?", els, err)
	}
	seen := map[identity]bool{}
	for _, e := range els {
		got, err := r.identitiesOf(ctx, "/unit/l", e)
		if err != nil || len(got) != 1 {
			t.Fatalf("identities of %s = %v, %v", e.block, got, err)
		}
		seen[got[0].identity] = true
	}
	if !seen[ids[0]] || !seen[ids[1]] {
		t.Errorf("identities %v, want %v", seen, ids)
	}
	if err := r.ds.Delete(ctx, ds.NewKey("/unit/l")); err != nil {
		t.Fatal(err)
	}
	for _, e := range els {
		if dead, err := r.cfg.Datastore.Has(ctx, ds.NewKey(tombsNamespace.String()+"/unit/l").ChildString(e.block)); err != nil || !dead {
			t.Errorf("element %s after a delete: tombstoned = %v, %v", e.block, dead, err)
		}
	}
	var loaded rawDeletes
	if err := loaded.load(ctx, r.cfg.Datastore); err != nil {
		t.Fatal(err)
	}
	if !loaded.has("/unit/l") || loaded.has("/unit/l/child") || len(loaded.keys) != 1 {
		t.Errorf("keys with tombstones read from the store: %v, want /unit/l", loaded.keys)
	}
}

// TestVerifiedRecordsAreRememberedByTheirBytes: a record verified once is
// not decoded again, and nothing but the same mesh, key and bytes finds
// it: a byte changed, another key or another mesh is checked afresh (and
// refused as forged).
func TestVerifiedRecordsAreRememberedByTheirBytes(t *testing.T) {
	r := openReplica(t)
	good := signedValue(t, testKey, "/unit/m", Record{V: RecordVersion, Kind: "unit.kv", HLC: r.Clock().Now(), Writer: "p", Body: json.RawMessage(`"kept"`)})
	if _, err := r.verified("/unit/m", good); err != nil {
		t.Fatal(err)
	}
	if _, ok := decodedRecords.Get("unit", "/unit/m", good); !ok {
		t.Fatal("a verified record was not remembered")
	}
	changed := []byte(strings.Replace(string(good), "kept", "kEpt", 1))
	for _, c := range []struct {
		mesh, key string
		value     []byte
	}{{"unit", "/unit/m", changed}, {"unit", "/unit/other", good}, {"other", "/unit/m", good}} {
		// (A colliding hash is package memo's test.)
		if _, ok := decodedRecords.Get(c.mesh, c.key, c.value); ok {
			t.Errorf("the memo answers for %s %s %q", c.mesh, c.key, c.value)
		}
	}
	if _, err := r.verified("/unit/m", changed); !errors.Is(err, ErrForged) {
		t.Errorf("a changed byte: %v, want ErrForged", err)
	}
	if _, err := r.verified("/unit/other", good); !errors.Is(err, ErrForged) {
		t.Errorf("another key: %v, want ErrForged", err)
	}
}
