package crdt

import (
	"testing"

	cid "github.com/ipfs/go-cid"
	crdtpb "github.com/ipfs/go-ds-crdt/pb"
	mh "github.com/multiformats/go-multihash"
)

// A read that began before a prune forgot the cache may have found a
// block the prune deleted since: what it read must not be cached.
func TestDeltaCacheKeepsNothingReadBeforeAPrune(t *testing.T) {
	h, err := mh.Sum([]byte("block"), mh.SHA2_256, -1)
	if err != nil {
		t.Fatal(err)
	}
	c := cid.NewCidV1(cid.DagProtobuf, h)
	dc := newDeltaCache()
	d := &crdtpb.Delta{Priority: 7}

	_, before, ok := dc.get(c)
	if ok {
		t.Fatal("an empty cache answered")
	}
	dc.forget() // a prune deleted blocks meanwhile
	dc.add(before, c, d)
	if _, _, ok := dc.get(c); ok {
		t.Fatal("a delta read before a prune was cached")
	}

	_, now, _ := dc.get(c)
	dc.add(now, c, d)
	if got, _, ok := dc.get(c); !ok || got.GetPriority() != 7 {
		t.Fatalf("a delta read after the prune: cached %v, %v", got, ok)
	}
	dc.forget()
	if _, _, ok := dc.get(c); ok {
		t.Fatal("forget left a delta cached")
	}
}
