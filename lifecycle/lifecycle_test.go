package lifecycle

import (
	"slices"
	"testing"

	cid "github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/store/artifacts"
)

func cidOf(t *testing.T, s string) cid.Cid {
	t.Helper()
	h, err := mh.Sum([]byte(s), mh.SHA2_256, -1)
	if err != nil {
		t.Fatal(err)
	}
	return cid.NewCidV1(cid.Raw, h)
}

// TestGCKeepsServedNewerAndKeepMinusOneOlder: of versions v1…v5 (oldest
// first) with v3 served and keep 2, GC keeps v3, everything newer (the
// next switch's candidates) and one older (the rollback target), and
// drops the rest; versions not local here are left alone.
func TestGCKeepsServedNewerAndKeepMinusOneOlder(t *testing.T) {
	st := models.ModelState{Name: "m", Current: &models.Activation{Model: "m", Version: "v3"}}
	local := map[string]artifacts.Status{}
	byVersion := map[string]cid.Cid{}
	for _, v := range []string{"v1", "v2", "v3", "v4", "v5"} {
		c := cidOf(t, v)
		byVersion[v] = c
		st.Versions = append(st.Versions, models.VersionState{Manifest: models.Manifest{Model: "m", Version: v, CID: c.String()}})
		if v != "v4" { // v4 is known but not fetched here
			local["m@"+v] = artifacts.Status{Ref: "m@" + v, CID: c.String(), State: artifacts.StateVerified}
		}
	}
	for _, tc := range []struct {
		name      string
		keep      int
		served    string
		wantKeep  []string
		wantDrops []string
	}{
		{"keep 2", 2, "v3", []string{"v5", "v3", "v2"}, []string{"v1"}},
		{"keep 1", 1, "v3", []string{"v5", "v3"}, []string{"v2", "v1"}},
		{"keep 3", 3, "v3", []string{"v5", "v3", "v2", "v1"}, nil},
		{"nothing served yet", 1, "", []string{"v5", "v3", "v2", "v1"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := New(Config{Keep: tc.keep})
			keep, drop := l.sortVersions(st, local, tc.served)
			var gotKeep, gotDrop []string
			for _, c := range keep {
				for v, vc := range byVersion {
					if vc.Equals(c) {
						gotKeep = append(gotKeep, v)
					}
				}
			}
			for _, d := range drop {
				gotDrop = append(gotDrop, d.Ref[len("m@"):])
				if !d.CID.Equals(byVersion[d.Ref[len("m@"):]]) {
					t.Errorf("drop %s names CID %s", d.Ref, d.CID)
				}
			}
			if !slices.Equal(gotKeep, tc.wantKeep) || !slices.Equal(gotDrop, tc.wantDrops) {
				t.Errorf("keep %v drop %v, want keep %v drop %v", gotKeep, gotDrop, tc.wantKeep, tc.wantDrops)
			}
		})
	}
}

func TestSummaryCountsLocalAndBadVersions(t *testing.T) {
	verified := &artifacts.Status{State: artifacts.StateVerified}
	bad := &artifacts.Status{State: artifacts.StateBad}
	mi := api.ModelInfo{Name: "m", Current: &models.Activation{Version: "v3"},
		Serving: &api.ServingInfo{Version: "v2", LagSeconds: 0.5},
		Versions: []api.VersionInfo{
			{Local: verified},                         // local
			{Local: verified, LoadError: "bad opset"}, // verified but does not load: bad
			{Local: bad},                              // failed verification: bad
			{},                                        // not here
			{Local: &artifacts.Status{State: artifacts.StateFetching}}, // under way: neither
		}}
	got := Summary(mi)
	want := api.ModelSummary{Name: "m", Current: "v3", Serving: "v2", LagSeconds: 0.5, Local: 1, Bad: 2}
	if got != want {
		t.Errorf("Summary = %+v, want %+v", got, want)
	}
}
