package serving

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/inference"
	"github.com/shoal-mesh/shoal/inference/onnxmodel"
	"github.com/shoal-mesh/shoal/inference/resultcache"
	"github.com/shoal-mesh/shoal/internal/poll"
)

func repoPath(parts ...string) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(append([]string{filepath.Dir(file), ".."}, parts...)...)
}

// loadModel loads model bytes (or, when model is nil, the repo model
// file) as name@v1 into a pool.
func loadModel(t testing.TB, name string, model []byte, file string) *inference.Pool {
	t.Helper()
	e, err := inference.Open(inference.Config{Library: repoPath(inference.DefaultLibraryPath), Device: inference.DeviceCPU})
	if err != nil {
		t.Fatalf("onnxruntime (run `make setup`): %v", err)
	}
	t.Cleanup(func() { e.Close() })
	ref := inference.Ref{Model: name, Version: "v1", CID: "bafy-" + name}
	var s *inference.Session
	if model != nil {
		s, err = e.Load(context.Background(), ref, model, nil)
	} else {
		s, err = e.LoadFile(context.Background(), ref, repoPath("deps", "models", file), nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	pool := inference.NewPool()
	t.Cleanup(pool.Close)
	pool.Swap(s)
	return pool
}

// servers returns a server that batches up to maxRows rows of the
// pool's model with delay, and one that serves the same session unbatched
// (the reference answers).
func servers(t testing.TB, pool *inference.Pool, name string, cfg Config, maxRows int, delay time.Duration) (batched, alone *Server) {
	t.Helper()
	m := models.Manifest{Model: name, Version: "v1", CID: "bafy-" + name}
	alone = New(Config{Sessions: &poolSessions{pool: pool, manifest: m}})
	t.Cleanup(alone.Close)
	m.MaxBatchSize, m.MaxQueueDelayUS = maxRows, int(delay/time.Microsecond)
	cfg.Sessions = &poolSessions{pool: pool, manifest: m}
	batched = New(cfg)
	t.Cleanup(batched.Close)
	return batched, alone
}

// rowsCall is a request for model of shape [rows, cols...] whose values
// follow seed; it asks for the decoded answer.
func rowsCall(model string, seed, rows int, cols []int64, outputs ...string) Call {
	shape := append([]int64{int64(rows)}, cols...)
	n := 1
	for _, d := range shape {
		n *= int(d)
	}
	data := make([]float32, n)
	for i := range data {
		data[i] = float32(math.Sin(float64(i)*0.01+float64(seed))) * 0.5
	}
	raw, _ := json.Marshal(data)
	req := &inference.InferRequest{ID: fmt.Sprint(seed), Inputs: []inference.RequestInput{{Name: "x", Shape: shape, Datatype: "FP32", Data: raw}}}
	for _, o := range outputs {
		req.Outputs = append(req.Outputs, inference.RequestOutput{Name: o})
	}
	return Call{Model: model, Request: req, Decoded: true}
}

// sameAnswer compares two decoded answers element for element.
func sameAnswer(got, want Answer) error {
	g, w := got.Response.Outputs, want.Response.Outputs
	if len(g) != len(w) {
		return fmt.Errorf("%d outputs, want %d", len(g), len(w))
	}
	for i := range g {
		if g[i].Name != w[i].Name || fmt.Sprint(g[i].Shape) != fmt.Sprint(w[i].Shape) {
			return fmt.Errorf("output %s%v, want %s%v", g[i].Name, g[i].Shape, w[i].Name, w[i].Shape)
		}
		gf, ok1 := g[i].Data.([]float32)
		wf, ok2 := w[i].Data.([]float32)
		if !ok1 || !ok2 || len(gf) != len(wf) {
			return fmt.Errorf("output %s: data %T(%d), want %T(%d)", g[i].Name, g[i].Data, len(gf), w[i].Data, len(wf))
		}
		for j := range gf {
			if math.Float32bits(gf[j]) != math.Float32bits(wf[j]) {
				return fmt.Errorf("output %s element %d: %v, alone %v", g[i].Name, j, gf[j], wf[j])
			}
		}
	}
	return nil
}

// queued counts the queues and the requests waiting in them.
func queued(s *Server) (queues, requests int) {
	s.bmu.Lock()
	defer s.bmu.Unlock()
	for _, q := range s.queues {
		q.mu.Lock()
		requests += len(q.pending)
		q.mu.Unlock()
	}
	return len(s.queues), requests
}

func waitQueued(t *testing.T, s *Server, n int) {
	t.Helper()
	poll.Until(t, 20*time.Second, fmt.Sprintf("%d requests queued", n), func() error {
		if _, got := queued(s); got != n {
			return fmt.Errorf("%d queued", got)
		}
		return nil
	})
}

// waitSettled waits for srv's runners to finish after the last answer
// (they release their slot and queue just after answering).
func waitSettled(t *testing.T, srv *Server) {
	t.Helper()
	poll.Until(t, 20*time.Second, "the queues to settle", func() error {
		if n, _ := queued(srv); n != 0 || srv.Running() != 0 || len(srv.slots) != 0 {
			return fmt.Errorf("%d queues, %d running, %d slots held", n, srv.Running(), len(srv.slots))
		}
		return nil
	})
}

// batchLog records the batches a server runs: each as its members' rows.
type batchLog struct {
	mu      sync.Mutex
	batches [][]int
}

func (l *batchLog) hook(b *batch) {
	rows := make([]int, len(b.members))
	for i, m := range b.members {
		rows[i] = m.rows
	}
	l.mu.Lock()
	l.batches = append(l.batches, rows)
	l.mu.Unlock()
}

func (l *batchLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fmt.Sprint(l.batches)
}

// inferAll sends calls, one at a time, each once the one before is
// queued (so the queue's order is the calls' order), while the test
// holds srv's only inference slot; then frees it and returns the answers.
func inferAll(t *testing.T, srv *Server, ctxs []context.Context, calls []Call) ([]Answer, []error) {
	t.Helper()
	answers, errs := make([]Answer, len(calls)), make([]error, len(calls))
	var wg sync.WaitGroup
	_, before := queued(srv)
	for i, c := range calls {
		ctx := context.Background()
		if ctxs != nil && ctxs[i] != nil {
			ctx = ctxs[i]
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i], errs[i] = srv.Infer(ctx, c)
		}()
		waitQueued(t, srv, before+i+1)
	}
	<-srv.slots
	wg.Wait()
	return answers, errs
}

// TestBatchedAnswersEqualAloneAnswers: requests of 1 to 4 rows for the
// real classifier, joined into one run, each get element for element the
// answer the same request gets alone.
func TestBatchedAnswersEqualAloneAnswers(t *testing.T) {
	pool := loadModel(t, "cls", nil, "ocr-cls.onnx")
	srv, alone := servers(t, pool, "cls", Config{MaxInflight: 1}, 16, 0)
	var log batchLog
	srv.batchHook = log.hook
	rows := []int{1, 3, 2, 1, 4}
	var calls []Call
	for i, r := range rows {
		calls = append(calls, rowsCall("cls", i, r, []int64{3, 48, 192}))
	}
	srv.slots <- struct{}{} // every request queues until the test frees the slot
	answers, errs := inferAll(t, srv, nil, calls)
	if got := log.String(); got != fmt.Sprint([][]int{rows}) {
		t.Fatalf("batches %s, want one of %v", got, rows)
	}
	for i, c := range calls {
		want, err := alone.Infer(context.Background(), c)
		if errs[i] != nil || err != nil {
			t.Fatalf("request %d: batched %v, alone %v", i, errs[i], err)
		}
		if err := sameAnswer(answers[i], want); err != nil {
			t.Errorf("request %d (%d rows): %v", i, rows[i], err)
		}
		if answers[i].Response.ID != fmt.Sprint(i) {
			t.Errorf("request %d answered as %q", i, answers[i].Response.ID)
		}
	}
	const want = `
# HELP shoal_inference_batch_size Rows per onnxruntime run of a model with dynamic batching (max_batch_size), by model.
# TYPE shoal_inference_batch_size histogram
shoal_inference_batch_size_bucket{model="cls",le="1"} 0
shoal_inference_batch_size_bucket{model="cls",le="2"} 0
shoal_inference_batch_size_bucket{model="cls",le="4"} 0
shoal_inference_batch_size_bucket{model="cls",le="8"} 0
shoal_inference_batch_size_bucket{model="cls",le="16"} 1
shoal_inference_batch_size_bucket{model="cls",le="32"} 1
shoal_inference_batch_size_bucket{model="cls",le="64"} 1
shoal_inference_batch_size_bucket{model="cls",le="128"} 1
shoal_inference_batch_size_bucket{model="cls",le="256"} 1
shoal_inference_batch_size_bucket{model="cls",le="512"} 1
shoal_inference_batch_size_bucket{model="cls",le="1024"} 1
shoal_inference_batch_size_bucket{model="cls",le="+Inf"} 1
shoal_inference_batch_size_sum{model="cls"} 11
shoal_inference_batch_size_count{model="cls"} 1
`
	if err := testutil.CollectAndCompare(srv.m.batchRows, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(srv.m.queueSeconds); n != 1 {
		t.Errorf("queue delay series: %d", n)
	}
	waitSettled(t, srv)
}

// TestBatchesRespectMaxBatchSize: batches take requests in arrival order
// up to max_batch_size rows; a request of that many rows runs alone.
func TestBatchesRespectMaxBatchSize(t *testing.T) {
	pool := loadModel(t, "id", onnxmodel.Identity(onnxmodel.Float, []int64{-1, 4}), "")
	srv, alone := servers(t, pool, "id", Config{MaxInflight: 1}, 4, 0)
	var log batchLog
	srv.batchHook = log.hook
	rows := []int{1, 1, 3, 2, 1, 1}
	var calls []Call
	for i, r := range rows {
		calls = append(calls, rowsCall("id", i, r, []int64{4}))
	}
	srv.slots <- struct{}{}
	answers, errs := inferAll(t, srv, nil, calls)
	// The first request leads: it runs with whatever queued while it
	// waited for the slot, up to 4 rows; the rest follow in order.
	if got, want := log.String(), "[[1 1] [3] [2 1 1]]"; got != want {
		t.Errorf("batches %s, want %s", got, want)
	}
	for i, c := range calls {
		want, _ := alone.Infer(context.Background(), c)
		if errs[i] != nil {
			t.Fatalf("request %d: %v", i, errs[i])
		}
		if err := sameAnswer(answers[i], want); err != nil {
			t.Errorf("request %d: %v", i, err)
		}
	}
	big := rowsCall("id", 9, 4, []int64{4})
	a, err := srv.Infer(context.Background(), big)
	want, _ := alone.Infer(context.Background(), big)
	if err != nil || sameAnswer(a, want) != nil {
		t.Fatalf("4 rows: %v", err)
	}
	if got := log.String(); strings.Count(got, "[") != 4 {
		t.Errorf("a request of max_batch_size rows went through a queue: %s", got)
	}
}

// TestCancelledRequestsDoNotFailTheirBatch: requests that give up while
// queued (the queue's first request among them) leave without the others
// noticing; one that gives up while its batch runs does not stop it.
func TestCancelledRequestsDoNotFailTheirBatch(t *testing.T) {
	pool := loadModel(t, "id", onnxmodel.Identity(onnxmodel.Float, []int64{-1, 4}), "")
	srv, alone := servers(t, pool, "id", Config{MaxInflight: 1}, 8, 0)
	var log batchLog
	ctxs := make([]context.Context, 5)
	cancels := make([]context.CancelFunc, 5)
	for i := range ctxs {
		ctxs[i], cancels[i] = context.WithCancel(context.Background())
		defer cancels[i]()
	}
	// Request 3 gives up once its batch is about to run.
	srv.batchHook = func(b *batch) {
		log.hook(b)
		cancels[3]()
	}
	var calls []Call
	for i := range ctxs {
		calls = append(calls, rowsCall("id", i, 1+i%2, []int64{4}))
	}
	srv.slots <- struct{}{}
	answers, errs := make([]Answer, 5), make([]error, 5)
	done := make([]chan struct{}, 5)
	for i, c := range calls {
		done[i] = make(chan struct{})
		go func() {
			defer close(done[i])
			answers[i], errs[i] = srv.Infer(ctxs[i], c)
		}()
		waitQueued(t, srv, i+1)
	}
	// Request 0 leads the queue, waiting for the slot; 2 waits behind it
	// (once 0 left, behind the loop that took the queue over).
	for _, i := range []int{0, 2} {
		poll.Until(t, 20*time.Second, "the queue waits for a slot", func() error {
			srv.bmu.Lock()
			defer srv.bmu.Unlock()
			for _, q := range srv.queues {
				q.mu.Lock()
				defer q.mu.Unlock()
				if q.slotWait > 0 {
					return nil
				}
			}
			return errors.New("not waiting")
		})
		cancels[i]()
		<-done[i]
		if !errors.Is(errs[i], ErrBusy) {
			t.Errorf("request %d cancelled while queued for a slot: %v, want ErrBusy", i, errs[i])
		}
	}
	waitQueued(t, srv, 3)
	<-srv.slots
	for _, d := range done {
		<-d
	}
	if got := log.String(); got != "[[2 2 1]]" {
		t.Errorf("batches %s, want requests 1, 3 and 4 in one", got)
	}
	for _, i := range []int{1, 3, 4} {
		want, _ := alone.Infer(context.Background(), calls[i])
		if errs[i] != nil {
			t.Errorf("request %d: %v", i, errs[i])
		} else if err := sameAnswer(answers[i], want); err != nil {
			t.Errorf("request %d: %v", i, err)
		}
	}
	if got := testutil.ToFloat64(srv.m.saturated.WithLabelValues("refused")); got != 2 {
		t.Errorf("refused %v, want 2", got)
	}
	waitSettled(t, srv)
}

// TestDifferentShapesAndOutputsAreNotMixed: requests with other non-batch
// dimensions, or asking for other outputs, go to batches of their own.
func TestDifferentShapesAndOutputsAreNotMixed(t *testing.T) {
	t.Run("shapes", func(t *testing.T) {
		pool := loadModel(t, "idn", onnxmodel.Identity(onnxmodel.Float, []int64{-1, -1}), "")
		srv, alone := servers(t, pool, "idn", Config{MaxInflight: 1}, 8, 0)
		var log batchLog
		srv.batchHook = log.hook
		calls := []Call{
			rowsCall("idn", 0, 1, []int64{4}), rowsCall("idn", 1, 1, []int64{3}),
			rowsCall("idn", 2, 2, []int64{4}), rowsCall("idn", 3, 3, []int64{3}),
		}
		srv.slots <- struct{}{}
		answers, errs := inferAll(t, srv, nil, calls)
		if got := log.String(); got != "[[1 2] [1 3]]" && got != "[[1 3] [1 2]]" {
			t.Errorf("batches %s, want [1 2] (…×4) and [1 3] (…×3)", got)
		}
		for i, c := range calls {
			want, _ := alone.Infer(context.Background(), c)
			if errs[i] != nil || sameAnswer(answers[i], want) != nil {
				t.Errorf("request %d: %v %v", i, errs[i], sameAnswer(answers[i], want))
			}
		}
	})
	t.Run("outputs", func(t *testing.T) {
		pool := loadModel(t, "two", onnxmodel.IdentityNeg(3), "")
		srv, alone := servers(t, pool, "two", Config{MaxInflight: 1}, 8, 0)
		var log batchLog
		srv.batchHook = log.hook
		calls := []Call{
			rowsCall("two", 0, 1, []int64{3}, "y"), rowsCall("two", 1, 2, []int64{3}, "neg"),
			rowsCall("two", 2, 1, []int64{3}), rowsCall("two", 3, 3, []int64{3}, "y"),
			rowsCall("two", 4, 1, []int64{3}, "neg", "y"),
		}
		srv.slots <- struct{}{}
		answers, errs := inferAll(t, srv, nil, calls)
		if got := strings.Count(log.String(), "["); got != 1+4 {
			t.Errorf("batches %s, want 4: y, neg, all outputs, neg and y", log.String())
		}
		for i, c := range calls {
			want, _ := alone.Infer(context.Background(), c)
			if errs[i] != nil || sameAnswer(answers[i], want) != nil {
				t.Errorf("request %d: %v %v", i, errs[i], sameAnswer(answers[i], want))
			}
		}
	})
}

// TestUnsplittableModelRunsAlone: a model whose outputs do not keep the
// rows (dynamic in its metadata, transposed in fact) answers each request
// as alone, and is not batched again.
func TestUnsplittableModelRunsAlone(t *testing.T) {
	pool := loadModel(t, "tr", onnxmodel.Transpose(), "")
	srv, alone := servers(t, pool, "tr", Config{MaxInflight: 1}, 8, 0)
	var log batchLog
	srv.batchHook = log.hook
	calls := []Call{rowsCall("tr", 0, 1, []int64{4}), rowsCall("tr", 1, 2, []int64{4})}
	srv.slots <- struct{}{}
	answers, errs := inferAll(t, srv, nil, calls)
	for i, c := range calls {
		want, _ := alone.Infer(context.Background(), c)
		if errs[i] != nil || sameAnswer(answers[i], want) != nil {
			t.Errorf("request %d: %v %v", i, errs[i], sameAnswer(answers[i], want))
		}
	}
	if got := testutil.ToFloat64(srv.m.batchFallbacks.WithLabelValues("tr", "not_splittable")); got != 1 {
		t.Errorf("fallbacks %v", got)
	}
	srv.bmu.Lock()
	off := srv.noBatch["bafy-tr"]
	srv.bmu.Unlock()
	if !off {
		t.Error("the model is still batched")
	}
	if _, err := srv.Infer(context.Background(), calls[0]); err != nil || log.String() != "[[1 2]]" {
		t.Errorf("after the fallback: %v, batches %s", err, log.String())
	}
}

// TestLoneRequestsDoNotWait: a request that finds its queue idle runs at
// once, whatever the queue delay (see batch.go).
func TestLoneRequestsDoNotWait(t *testing.T) {
	pool := loadModel(t, "id", onnxmodel.Identity(onnxmodel.Float, []int64{-1, 4}), "")
	srv, _ := servers(t, pool, "id", Config{}, 8, time.Second)
	start := time.Now()
	for i := range 3 {
		if _, err := srv.Infer(context.Background(), rowsCall("id", i, 1, []int64{4})); err != nil {
			t.Fatal(err)
		}
	}
	if el := time.Since(start); el > 900*time.Millisecond {
		t.Errorf("3 sequential requests took %v with a 1 s queue delay: a lone request waited", el)
	}
}

// TestBatchedCallAdmission: with every slot taken, a forwarded call that
// would start a queue is refused at once (as unbatched ones are); one
// whose queue is at work joins it.
func TestBatchedCallAdmission(t *testing.T) {
	pool := loadModel(t, "id", onnxmodel.Identity(onnxmodel.Float, []int64{-1, 4}), "")
	srv, _ := servers(t, pool, "id", Config{MaxInflight: 1}, 8, 0)
	srv.slots <- struct{}{}
	fwd := rowsCall("id", 0, 1, []int64{4})
	fwd.Forwarded = true
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := srv.Infer(ctx, fwd); !errors.Is(err, ErrBusy) || ctx.Err() != nil {
		t.Fatalf("forwarded call to an idle queue: %v, want ErrBusy at once", err)
	}
	_, errs := inferAll(t, srv, nil, []Call{rowsCall("id", 1, 1, []int64{4}), fwd})
	if errs[0] != nil || errs[1] != nil {
		t.Fatalf("queued calls: %v", errs)
	}
}

// TestResultCacheStaysPerRequest: batched requests are cached one by one
// and hit one by one.
func TestResultCacheStaysPerRequest(t *testing.T) {
	pool := loadModel(t, "id", onnxmodel.Identity(onnxmodel.Float, []int64{-1, 4}), "")
	srv, _ := servers(t, pool, "id", Config{MaxInflight: 1, Cache: resultcache.New(resultcache.Config{MaxBytes: 1 << 20, TTL: time.Minute})}, 8, 0)
	calls := []Call{rowsCall("id", 0, 1, []int64{4}), rowsCall("id", 1, 2, []int64{4}), rowsCall("id", 2, 1, []int64{4})}
	srv.slots <- struct{}{}
	first, errs := inferAll(t, srv, nil, calls)
	for i, c := range calls {
		again, err := srv.Infer(context.Background(), c)
		if errs[i] != nil || err != nil || first[i].Cache != api.CacheMiss || again.Cache != api.CacheHit {
			t.Fatalf("request %d: %v %v, cache %s then %s", i, errs[i], err, first[i].Cache, again.Cache)
		}
		if got, _ := json.Marshal(again.Response.Outputs); string(got) != string(must(json.Marshal(first[i].Response.Outputs))) {
			t.Errorf("request %d: hit %s, computed %s", i, got, must(json.Marshal(first[i].Response.Outputs)))
		}
	}
}

func must[T any](v T, _ error) T { return v }

// TestBatchingUnderConcurrentLoad: many clients, some giving up early,
// two slots: every answer that comes is the client's own (run with -race).
func TestBatchingUnderConcurrentLoad(t *testing.T) {
	pool := loadModel(t, "id", onnxmodel.Identity(onnxmodel.Float, []int64{-1, 4}), "")
	srv, _ := servers(t, pool, "id", Config{MaxInflight: 2}, 6, 200*time.Microsecond)
	var wg sync.WaitGroup
	for c := range 24 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 30 {
				seed, rows := c*100+i, 1+(c+i)%3
				ctx, cancel := context.WithCancel(context.Background())
				if i%7 == 3 {
					cancel() // gives up at once: wherever it is, it must not disturb the others
				}
				call := rowsCall("id", seed, rows, []int64{4})
				a, err := srv.Infer(ctx, call)
				cancel()
				if err != nil {
					if i%7 != 3 {
						t.Errorf("client %d request %d: %v", c, i, err)
					}
					continue
				}
				in := make([]float32, rows*4)
				json.Unmarshal(call.Request.Inputs[0].Data, &in)
				if got := a.Response.Outputs[0].Data.([]float32); fmt.Sprint(got) != fmt.Sprint(in) || a.Response.ID != fmt.Sprint(seed) {
					t.Errorf("client %d request %d: got %v, sent %v", c, i, got, in)
				}
			}
		}()
	}
	wg.Wait()
	waitSettled(t, srv)
}

// TestBatchRunnersBoundConcurrentBatches: a queue runs up to
// BatchRunners batches at once; past that, requests wait for the next.
func TestBatchRunnersBoundConcurrentBatches(t *testing.T) {
	pool := loadModel(t, "id", onnxmodel.Identity(onnxmodel.Float, []int64{-1, 4}), "")
	for _, runners := range []int{1, 2} {
		srv, _ := servers(t, pool, "id", Config{BatchRunners: runners}, 8, 0)
		started := make(chan int, 4)
		release := make(chan struct{})
		srv.batchHook = func(b *batch) {
			started <- b.rows
			<-release
		}
		errs := make(chan error, 3)
		infer := func(seed int) {
			_, err := srv.Infer(context.Background(), rowsCall("id", seed, 1, []int64{4}))
			errs <- err
		}
		go infer(0)
		<-started // the first batch runs, held by the hook
		go infer(1)
		if runners == 2 {
			<-started // a second batch runs beside it
			go infer(2)
			waitQueued(t, srv, 1) // no third
		} else {
			waitQueued(t, srv, 1)
		}
		close(release)
		n := map[int]int{1: 2, 2: 3}[runners]
		for range n {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
	}
}
