package e2e

import (
	"context"
	"fmt"
	"github.com/shoal-mesh/shoal/api"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/peer"
	"github.com/shoal-mesh/shoal/store/artifacts"
)

func modelInfo(t *testing.T, n *peer.Node, model string) api.ModelInfo {
	t.Helper()
	res := do(t, http.MethodGet, baseURL(n)+"/v1/models/"+model, nil)
	var mi api.ModelInfo
	if res.code == 200 {
		res.json(t, &mi)
	}
	return mi
}

func servingVersion(t *testing.T, n *peer.Node, model string) string {
	mi := modelInfo(t, n, model)
	if mi.Serving == nil {
		return ""
	}
	return mi.Serving.Version
}

func TestConcurrentActivationsSettleOnOneWinner(t *testing.T) {
	m := startMesh(t, 3, nil)
	push(t, m.Node(0), "seg", "a", randomBytes(t, 32<<10), "")
	push(t, m.Node(0), "seg", "b", randomBytes(t, 32<<10), "")
	push(t, m.Node(0), "seg", "c", randomBytes(t, 32<<10), "")
	eventually(t, "every peer knows the three versions", func() error {
		for i, n := range m.Nodes() {
			if v := len(modelInfo(t, n, "seg").Versions); v != 3 {
				return fmt.Errorf("peer %d knows %d versions", i, v)
			}
		}
		return nil
	})
	// Three publishers activate three versions at once.
	var wg sync.WaitGroup
	for i, v := range []string{"a", "b", "c"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, _, err := m.Node(i).Registry().Activate(context.Background(), "seg", v); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	var winner models.Activation
	eventually(t, "all peers agree on the winner and serve it", func() error {
		var cur []string
		for _, n := range m.Nodes() {
			mi := modelInfo(t, n, "seg")
			if mi.Current == nil || len(mi.Activations) != 3 {
				return fmt.Errorf("a peer sees %d activations", len(mi.Activations))
			}
			cur = append(cur, mi.Current.Version)
			winner = *mi.Current
			if servingVersion(t, n, "seg") != mi.Current.Version {
				return fmt.Errorf("peer serves %q, current %q", servingVersion(t, n, "seg"), mi.Current.Version)
			}
		}
		if cur[0] != cur[1] || cur[1] != cur[2] {
			return fmt.Errorf("winners differ: %v", cur)
		}
		return nil
	})
	// The winner is the design's: the largest (HLC, publisher).
	mi := modelInfo(t, m.Node(1), "seg")
	for _, a := range mi.Activations {
		if a.HLC.Compare(winner.HLC) > 0 || (a.HLC == winner.HLC && a.Publisher > winner.Publisher) {
			t.Errorf("activation %s@%s beats the winner %s", a.Version, a.HLC, winner.Version)
		}
	}
	if !strings.Contains(mi.Why, "largest (HLC, publisher) of 3") {
		t.Errorf("why = %q", mi.Why)
	}
}

func TestForgedAndCorruptPublicationsAreRejected(t *testing.T) {
	m := startMesh(t, 2, nil)
	good := randomBytes(t, 64<<10)
	push(t, m.Node(0), "ocr", "v1", good, "activate=true")
	eventually(t, "peer 1 serves v1", func() error {
		if v := servingVersion(t, m.Node(1), "ocr"); v != "v1" {
			return fmt.Errorf("serving %q", v)
		}
		return nil
	})
	ctx := context.Background()
	v1 := modelInfo(t, m.Node(0), "ocr").Versions[0].Manifest
	r0 := m.Node(0).Replica()

	// 1. A manifest and an activation signed by a key nobody trusts.
	stranger, err := models.NewPublisherKey(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	forged := models.Manifest{Model: "ocr", Version: "evil", CID: v1.CID, SHA256: v1.SHA256, Size: v1.Size, HLC: r0.Clock().Now()}
	forged.Sign(stranger)
	if _, err := r0.Put(ctx, models.VersionKey("ocr", "evil", forged.Publisher), models.KindVersion, forged); err != nil {
		t.Fatal(err)
	}
	act := models.Activation{Model: "ocr", Version: "evil", HLC: r0.Clock().Now()}
	act.Sign(stranger)
	if _, err := r0.Put(ctx, models.CurrentKey("ocr", act.Publisher, act.HLC), models.KindCurrent, act); err != nil {
		t.Fatal(err)
	}
	// 2. A trusted publisher's manifest altered after signing.
	tampered := models.Manifest{Model: "ocr", Version: "v1-tampered", CID: v1.CID, SHA256: v1.SHA256, Size: v1.Size, HLC: r0.Clock().Now()}
	tampered.Sign(m.Node(0).Registry().Publisher())
	tampered.Size++
	if _, err := r0.Put(ctx, models.VersionKey("ocr", "v1-tampered", tampered.Publisher), models.KindVersion, tampered); err != nil {
		t.Fatal(err)
	}
	eventually(t, "peer 1 counts both rejections by reason", func() error {
		modelInfo(t, m.Node(1), "ocr") // evaluating the model counts what it rejects
		rej := m.Node(1).Registry().Rejected()
		if rej[models.ReasonUntrusted] < 2 || rej[models.ReasonBadSignature] < 1 {
			return fmt.Errorf("rejected %v", rej)
		}
		return nil
	})
	mi := modelInfo(t, m.Node(1), "ocr")
	if mi.Current == nil || mi.Current.Version != "v1" || len(mi.Versions) != 1 {
		t.Errorf("forged records entered the state: current %+v, %d versions", mi.Current, len(mi.Versions))
	}

	// 3. A trusted, well-signed manifest whose sha256 does not match its
	// bytes: peers fetch it, find the mismatch, mark it bad and keep v1.
	other := randomBytes(t, 64<<10)
	c, _, size, err := m.Node(0).Artifacts().Import(ctx, strings.NewReader(string(other)))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.Node(0).Registry().Publish(ctx, models.Manifest{Model: "ocr", Version: "v2", CID: c.String(), SHA256: sha(good), Size: size}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := m.Node(0).Registry().Activate(ctx, "ocr", "v2"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "peer 1 marks v2 bad with the reason", func() error {
		for _, v := range modelInfo(t, m.Node(1), "ocr").Versions {
			if v.Version == "v2" && v.Local != nil && v.Local.State == artifacts.StateBad {
				if !strings.Contains(v.Local.Reason, "sha256") {
					t.Errorf("reason %q does not name the sha256", v.Local.Reason)
				}
				return nil
			}
		}
		return fmt.Errorf("v2 not marked bad yet")
	})
	if v := servingVersion(t, m.Node(1), "ocr"); v != "v1" {
		t.Errorf("peer 1 serves %q after a bad activation, want the last verified v1", v)
	}
	res := do(t, http.MethodGet, baseURL(m.Node(1))+"/v1/models/ocr/versions/v2/artifact", nil)
	if res.code != http.StatusConflict || res.errCode() != api.CodeArtifactBad {
		t.Errorf("pinned fetch of the bad version: %d %s", res.code, res.body)
	}
	res = do(t, http.MethodGet, baseURL(m.Node(1))+"/v1/models/ocr/artifact", nil)
	if res.code != 200 || res.header.Get(api.HeaderModelVersion) != "v1" || sha(res.body) != sha(good) {
		t.Errorf("unpinned fetch: %d version %q", res.code, res.header.Get(api.HeaderModelVersion))
	}
}

// TestReplayedAndFutureActivationsChangeNothing: a trusted publisher's old
// activation broadcast again (under its own key, or under the single
// per-publisher key of earlier releases) and an activation stamped a year
// ahead leave the effective version alone and are counted.
func TestReplayedAndFutureActivationsChangeNothing(t *testing.T) {
	m := startMesh(t, 2, nil)
	ctx := context.Background()
	push(t, m.Node(0), "det", "v1", randomBytes(t, 16<<10), "activate=true")
	old := modelInfo(t, m.Node(0), "det").Current
	push(t, m.Node(0), "det", "v2", randomBytes(t, 16<<10), "activate=true")
	eventually(t, "peer 1 serves v2", func() error {
		if v := servingVersion(t, m.Node(1), "det"); v != "v2" {
			return fmt.Errorf("serving %q", v)
		}
		return nil
	})
	r0 := m.Node(0).Replica()
	// Replays, as an attacker on the mesh would broadcast them.
	if _, err := r0.Put(ctx, models.CurrentKey("det", old.Publisher, old.HLC), models.KindCurrent, old); err != nil {
		t.Fatal(err)
	}
	if _, err := r0.Put(ctx, models.Prefix+"det/current/"+string(old.Publisher), models.KindCurrent, old); err != nil {
		t.Fatal(err)
	}
	// A well-signed activation of v1 stamped a year ahead.
	future := models.Activation{Model: "det", Version: "v1", HLC: r0.Clock().Now()}
	future.HLC.Wall += int64(365 * 24 * time.Hour)
	future.Sign(m.Node(0).Registry().Publisher())
	w, err := r0.Put(ctx, models.CurrentKey("det", future.Publisher, future.HLC), models.KindCurrent, future)
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "peer 1 has the hostile records and counts the future one", func() error {
		if err := m.Node(1).Replica().WaitFor(ctx, w.Heads); err != nil {
			return err
		}
		modelInfo(t, m.Node(1), "det")
		if rej := m.Node(1).Registry().Rejected(); rej[models.ReasonClockSkew] < 1 {
			return fmt.Errorf("rejected %v", rej)
		}
		return nil
	})
	for i := 0; i < 2; i++ {
		mi := modelInfo(t, m.Node(i), "det")
		if mi.Current == nil || mi.Current.Version != "v2" {
			t.Errorf("peer %d: current %+v after replays and a future stamp, want v2", i, mi.Current)
		}
		if len(mi.Activations) != 1 {
			t.Errorf("peer %d lists %d activations for one publisher, want its newest only", i, len(mi.Activations))
		}
	}
	if v := servingVersion(t, m.Node(1), "det"); v != "v2" {
		t.Errorf("peer 1 serves %q, want v2", v)
	}
}

func TestRollbackGarbageCollectionAndRestart(t *testing.T) {
	m := startMesh(t, 2, nil)
	blobs := map[string][]byte{}
	for _, v := range []string{"v1", "v2", "v3"} {
		blobs[v] = randomBytes(t, 600<<10)
		push(t, m.Node(0), "det", v, blobs[v], "activate=true")
		eventually(t, "peer 1 serves "+v, func() error {
			if got := servingVersion(t, m.Node(1), "det"); got != v {
				return fmt.Errorf("serving %q", got)
			}
			return nil
		})
	}
	// keep-versions 2: v1 is gone from peer 1's disk, v2 and v3 stay.
	local := func(v string) string {
		for _, vi := range modelInfo(t, m.Node(1), "det").Versions {
			if vi.Version == v && vi.Local != nil {
				return vi.Local.State
			}
		}
		return ""
	}
	eventually(t, "v1 garbage-collected on peer 1", func() error {
		if l1, l2, l3 := local("v1"), local("v2"), local("v3"); l1 != "" || l2 != "verified" || l3 != "verified" {
			return fmt.Errorf("local states v1=%q v2=%q v3=%q", l1, l2, l3)
		}
		return nil
	})

	res := do(t, http.MethodPost, baseURL(m.Node(0))+"/v1/models/det/rollback", nil)
	if res.code != 200 {
		t.Fatalf("rollback: %d %s", res.code, res.body)
	}
	eventually(t, "peer 1 serves v2 after rollback", func() error {
		if got := servingVersion(t, m.Node(1), "det"); got != "v2" {
			return fmt.Errorf("serving %q", got)
		}
		return nil
	})

	// Restart peer 1: it serves v2 again without fetching anything.
	if err := m.Stop(1); err != nil {
		t.Fatal(err)
	}
	if err := m.Restart(context.Background(), 1); err != nil {
		t.Fatal(err)
	}
	eventually(t, "restarted peer 1 serves v2", func() error {
		if got := servingVersion(t, m.Node(1), "det"); got != "v2" {
			return fmt.Errorf("serving %q", got)
		}
		return nil
	})
	if got := m.Node(1).Artifacts().BytesFetched() + m.Node(1).Artifacts().SwarmStats().BytesReceived; got != 0 {
		t.Errorf("restarted peer fetched %d artifact bytes; verified versions must not be fetched again", got)
	}
	res = do(t, http.MethodGet, baseURL(m.Node(1))+"/v1/models/det/artifact", nil)
	if res.code != 200 || sha(res.body) != sha(blobs["v2"]) {
		t.Errorf("after restart: %d", res.code)
	}
}

func TestPrefetchAndVersionConflicts(t *testing.T) {
	m := startMesh(t, 3, nil)
	ctx := context.Background()
	// Published with prefetch, not activated: every peer fetches and
	// verifies it ahead of the switch.
	push(t, m.Node(0), "asr", "v1", randomBytes(t, 300<<10), "prefetch=true")
	eventually(t, "peers prefetch asr@v1", func() error {
		for i, n := range m.Nodes() {
			mi := modelInfo(t, n, "asr")
			if len(mi.Versions) != 1 || mi.Versions[0].Local == nil || mi.Versions[0].Local.State != artifacts.StateVerified {
				return fmt.Errorf("peer %d: %+v", i, mi.Versions)
			}
			if mi.Serving != nil {
				t.Errorf("peer %d serves %s before any activation", i, mi.Serving.Version)
			}
		}
		return nil
	})

	// Two publishers publish asr@v2 with different bytes before either
	// has seen the other's: one manifest wins everywhere, the other is a
	// visible conflict.
	m.Isolate(2)
	var wg sync.WaitGroup
	for _, i := range []int{0, 2} {
		data := randomBytes(t, 16<<10)
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := m.Node(i)
			c, sum, size, err := n.Artifacts().Import(ctx, strings.NewReader(string(data)))
			if err != nil {
				t.Error(err)
				return
			}
			if _, _, err := n.Registry().Publish(ctx, models.Manifest{Model: "asr", Version: "v2", CID: c.String(), SHA256: sum, Size: size}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if err := m.Heal(ctx, 2); err != nil {
		t.Fatal(err)
	}
	eventually(t, "every peer shows the same winner and the conflict", func() error {
		var seen []string
		for i, n := range m.Nodes() {
			var v2 *api.VersionInfo
			mi := modelInfo(t, n, "asr")
			for j := range mi.Versions {
				if mi.Versions[j].Version == "v2" {
					v2 = &mi.Versions[j]
				}
			}
			if v2 == nil || len(v2.Conflicts) != 1 {
				return fmt.Errorf("peer %d: v2 %+v", i, v2)
			}
			seen = append(seen, v2.CID)
			if v2.HLC.Compare(v2.Conflicts[0].HLC) > 0 {
				t.Errorf("peer %d: the later publication won", i)
			}
		}
		if seen[0] != seen[1] || seen[1] != seen[2] {
			return fmt.Errorf("winners differ: %v", seen)
		}
		return nil
	})
	res := do(t, http.MethodGet, baseURL(m.Node(1))+"/metrics", nil)
	for _, want := range []string{`shoal_model_conflicts{model="asr"} 1`, "shoal_models_local ", "shoal_artifact_fetch_seconds_count", `shoal_artifact_bytes_total{direction="in",source="bitswap"}`} {
		if !strings.Contains(string(res.body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
