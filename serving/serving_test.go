package serving

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/inference"
	"github.com/shoal-mesh/shoal/inference/onnxmodel"
	"github.com/shoal-mesh/shoal/inference/resultcache"
)

// poolSessions serves the sessions of a real inference.Pool: the unit
// under test is the serving path, run on real onnxruntime sessions.
type poolSessions struct {
	pool     *inference.Pool
	manifest models.Manifest
	err      error // returned instead, when set
}

func (p *poolSessions) Session(ctx context.Context, model, version string) (*inference.Session, models.Manifest, error) {
	if p.err != nil {
		return nil, models.Manifest{}, p.err
	}
	s, err := p.pool.Acquire(model, version)
	return s, p.manifest, err
}

func (p *poolSessions) Loaded(model, version string) bool { return p.pool.Has(model, version) }

// identityServer serves model "id" v1, y = x over float32 [1, 4].
func identityServer(t *testing.T, cfg Config) (*Server, *poolSessions) {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	e, err := inference.Open(inference.Config{Library: filepath.Join(filepath.Dir(file), "..", inference.DefaultLibraryPath), Device: inference.DeviceCPU})
	if err != nil {
		t.Fatalf("onnxruntime (run `make setup`): %v", err)
	}
	t.Cleanup(func() { e.Close() })
	s, err := e.Load(context.Background(), inference.Ref{Model: "id", Version: "v1", CID: "bafy-id-v1"}, onnxmodel.Identity(onnxmodel.Float, []int64{1, 4}), nil)
	if err != nil {
		t.Fatal(err)
	}
	pool := inference.NewPool()
	t.Cleanup(pool.Close)
	pool.Swap(s)
	ps := &poolSessions{pool: pool, manifest: models.Manifest{Model: "id", Version: "v1", CID: "bafy-id-v1"}}
	cfg.Sessions = ps
	srv := New(cfg)
	t.Cleanup(srv.Close)
	return srv, ps
}

func call(x float32) Call {
	body := fmt.Sprintf(`{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[%g,2,3,4]}]}`, x)
	return Call{Model: "id", Body: []byte(body), HeaderLen: -1}
}

func outputs(t *testing.T, a Answer) []float64 {
	t.Helper()
	var resp struct {
		Outputs []struct{ Data []float64 } `json:"outputs"`
	}
	if err := json.Unmarshal(a.Body, &resp); err != nil || len(resp.Outputs) != 1 {
		t.Fatalf("answer %s: %v", a.Body, err)
	}
	return resp.Outputs[0].Data
}

func TestInferAnswersThenHitsTheCache(t *testing.T) {
	srv, _ := identityServer(t, Config{Cache: resultcache.New(resultcache.Config{MaxBytes: 1 << 20, TTL: time.Minute})})
	ctx := context.Background()
	first, err := srv.Infer(ctx, call(1))
	if err != nil {
		t.Fatal(err)
	}
	if got := outputs(t, first); fmt.Sprint(got) != "[1 2 3 4]" || first.Status != 200 || first.Version != "v1" || first.Cache != api.CacheMiss {
		t.Fatalf("first answer: %v %+v", got, first)
	}
	second, err := srv.Infer(ctx, call(1))
	if err != nil || second.Cache != api.CacheHit || string(second.Body) != string(first.Body) {
		t.Fatalf("second answer: %+v, %v; want a hit with the same body", second, err)
	}
	other, err := srv.Infer(ctx, call(5))
	if err != nil || other.Cache != api.CacheMiss || fmt.Sprint(outputs(t, other)) != "[5 2 3 4]" {
		t.Fatalf("other input: %+v %v", other, err)
	}
	for result, want := range map[string]float64{"hit": 1, "cold_miss": 1, "miss": 1} {
		if got := testutil.ToFloat64(srv.m.cache.WithLabelValues("id", "v1", result)); got != want {
			t.Errorf("cache lookups %s = %v, want %v", result, got, want)
		}
	}
	if got := testutil.ToFloat64(srv.m.requests.WithLabelValues("id", "v1", OutcomeOK)); got != 3 {
		t.Errorf("ok requests = %v, want 3", got)
	}
}

func TestNoCacheManifestBypassesTheCache(t *testing.T) {
	srv, ps := identityServer(t, Config{Cache: resultcache.New(resultcache.Config{MaxBytes: 1 << 20, TTL: time.Minute})})
	ps.manifest.NoCache = true
	for range 2 {
		a, err := srv.Infer(context.Background(), call(1))
		if err != nil || a.Cache != api.CacheBypass {
			t.Fatalf("%+v %v, want bypass", a, err)
		}
	}
}

func TestBadInputIsTheCallersAndCounted(t *testing.T) {
	srv, _ := identityServer(t, Config{})
	for name, body := range map[string]string{
		"not JSON":   `{inputs`,
		"wrong name": `{"inputs":[{"name":"image","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}`,
		"wrong type": `{"inputs":[{"name":"x","shape":[1,4],"datatype":"INT32","data":[1,2,3,4]}]}`,
	} {
		_, err := srv.Infer(context.Background(), Call{Model: "id", Body: []byte(body), HeaderLen: -1})
		if !errors.Is(err, ErrBadInput) {
			t.Errorf("%s: err %v, want ErrBadInput", name, err)
		}
	}
	bad := testutil.ToFloat64(srv.m.requests.WithLabelValues("id", "-", OutcomeBadRequest)) +
		testutil.ToFloat64(srv.m.requests.WithLabelValues("id", "v1", OutcomeBadRequest))
	if bad != 3 {
		t.Errorf("bad_request outcomes = %v, want 3", bad)
	}
}

func TestSessionErrorsPassThrough(t *testing.T) {
	srv, ps := identityServer(t, Config{})
	notLoaded := errors.New("no version loaded")
	ps.err = fmt.Errorf("%w: id", notLoaded)
	if _, err := srv.Infer(context.Background(), call(1)); !errors.Is(err, notLoaded) {
		t.Fatalf("err %v", err)
	}
	if got := testutil.ToFloat64(srv.m.requests.WithLabelValues("id", "-", OutcomeError)); got != 1 {
		t.Errorf("error outcomes = %v", got)
	}
}

// TestAdmission: with every slot taken, a call waits within its deadline
// and is refused past it; a forwarded call is refused at once (its origin
// serves it); a call that finds a slot freed while waiting runs.
func TestAdmission(t *testing.T) {
	srv, _ := identityServer(t, Config{MaxInflight: 1})
	srv.slots <- struct{}{} // the one slot is taken

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := srv.Infer(ctx, call(1)); !errors.Is(err, ErrBusy) || ctx.Err() == nil {
		t.Fatalf("err %v (deadline passed: %v), want ErrBusy at the deadline", err, ctx.Err() != nil)
	}
	fwd := call(1)
	fwd.Forwarded = true
	fctx, fcancel := context.WithTimeout(context.Background(), time.Minute)
	defer fcancel()
	if _, err := srv.Infer(fctx, fwd); !errors.Is(err, ErrBusy) || fctx.Err() != nil {
		t.Fatalf("forwarded call: err %v, want ErrBusy before its deadline", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := srv.Infer(context.Background(), call(1))
		done <- err
	}()
	// It waits, and runs once the slot is free.
	select {
	case err := <-done:
		t.Fatalf("ran with every slot taken: %v", err)
	case <-time.After(50 * time.Millisecond): // a window in which it must not run
	}
	<-srv.slots
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for outcome, want := range map[string]float64{"refused": 2, "waited": 1} {
		if got := testutil.ToFloat64(srv.m.saturated.WithLabelValues(outcome)); got != want {
			t.Errorf("saturated %s = %v, want %v", outcome, got, want)
		}
	}
	if srv.Running() != 0 || len(srv.slots) != 0 {
		t.Errorf("running %d, slots held %d after every call ended", srv.Running(), len(srv.slots))
	}
}

func TestOutcomeOf(t *testing.T) {
	for _, tc := range []struct {
		a    Answer
		err  error
		want string
	}{
		{Answer{}, nil, OutcomeOK},
		{Answer{RoutedTo: "12D3"}, nil, OutcomeForwarded},
		{Answer{}, fmt.Errorf("x: %w", ErrBusy), OutcomeBusy},
		{Answer{}, ErrTimeout, OutcomeTimeout},
		{Answer{}, fmt.Errorf("%w: y", ErrBadInput), OutcomeBadRequest},
		{Answer{}, errors.New("disk"), OutcomeError},
	} {
		if got := outcome(tc.a, tc.err); got != tc.want {
			t.Errorf("outcome(%+v, %v) = %s, want %s", tc.a, tc.err, got, tc.want)
		}
	}
}
