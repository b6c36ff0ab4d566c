package httpapi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/internal/poll"
	"github.com/shoal-mesh/shoal/lifecycle"
)

// watched is a model the watch tests change under a running stream: it
// answers the harness's Models.Model and Models.Watch, and counts reads
// and stops (the stream's handler runs on the server's goroutine).
type watched struct {
	mu   sync.Mutex
	info api.ModelInfo
	err  error

	ch      chan struct{}
	reads   atomic.Int32
	watches atomic.Int32
	stops   atomic.Int32
}

func newWatched(h *harness) *watched {
	m := &watched{ch: make(chan struct{}, 1)}
	h.models.ModelFn = func(ctx context.Context, name string) (api.ModelInfo, error) {
		defer m.reads.Add(1)
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.err != nil {
			return api.ModelInfo{}, m.err
		}
		mi := m.info
		mi.Name = name
		return mi, nil
	}
	h.models.WatchFn = func() (<-chan struct{}, func()) {
		m.watches.Add(1)
		var once sync.Once
		return m.ch, func() { once.Do(func() { m.stops.Add(1) }) }
	}
	return m
}

// set makes current and serving the model's versions ("": none) and
// signals the watcher.
func (m *watched) set(current, serving string) {
	m.mu.Lock()
	m.info, m.err = api.ModelInfo{}, nil
	if current != "" {
		m.info.Current = &models.Activation{Version: current, HLC: crdt.HLC{Wall: 1700000000000000000, Logical: 2, Peer: "pub"}}
	}
	if serving != "" {
		m.info.Serving = &api.ServingInfo{Version: serving}
	}
	m.mu.Unlock()
	m.signal()
}

// fail makes reads fail with err and signals the watcher.
func (m *watched) fail(err error) {
	m.mu.Lock()
	m.err = err
	m.mu.Unlock()
	m.signal()
}

// signal wakes the watcher as the lifecycle does: without blocking.
func (m *watched) signal() {
	select {
	case m.ch <- struct{}{}:
	default:
	}
}

// frame is one Server-Sent Events frame: an event, or a comment.
type frame struct {
	event, id, data string
	comment         string
}

// stream is an open watch stream.
type stream struct {
	resp   *http.Response
	rd     *bufio.Reader
	cancel context.CancelFunc
}

// openWatch opens GET path on srv as a client would, and closes it when
// the test ends (before the server, which waits for its requests). A
// stream that stops answering fails the test within 20 s.
func openWatch(t *testing.T, srv *httptest.Server, path string, hdr ...string) *stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	s := &stream{resp: resp, rd: bufio.NewReader(resp.Body), cancel: cancel}
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	return s
}

// next reads the next frame; io.EOF when the server ended the stream.
func (s *stream) next() (frame, error) {
	var f frame
	started := false
	for {
		line, err := s.rd.ReadString('\n')
		if err != nil {
			if err == io.EOF && started {
				err = io.ErrUnexpectedEOF
			}
			return f, err
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			if started {
				return f, nil
			}
			continue
		}
		started = true
		k, v, _ := strings.Cut(line, ":")
		v = strings.TrimPrefix(v, " ")
		switch k {
		case "":
			f.comment = v
		case "event":
			f.event = v
		case "id":
			f.id = v
		case "data":
			f.data += v
		}
	}
}

// nextEvent reads frames up to the next event (skipping keep-alives).
func (s *stream) nextEvent(t *testing.T) frame {
	t.Helper()
	for {
		f, err := s.next()
		if err != nil {
			t.Fatalf("reading the stream: %v", err)
		}
		if f.event != "" {
			return f
		}
	}
}

// nextModel reads the next event, which must be a model event with id.
func (s *stream) nextModel(t *testing.T, id int) api.ModelWatchEvent {
	t.Helper()
	f := s.nextEvent(t)
	if f.event != "model" || f.id != fmt.Sprint(id) {
		t.Fatalf("event %q id %q (data %s), want a model event with id %d", f.event, f.id, f.data, id)
	}
	var ev api.ModelWatchEvent
	if err := json.Unmarshal([]byte(f.data), &ev); err != nil {
		t.Fatalf("event data is not a ModelWatchEvent (%v): %s", err, f.data)
	}
	return ev
}

// wantEnd checks the server ended the stream.
func (s *stream) wantEnd(t *testing.T) {
	t.Helper()
	if f, err := s.next(); err != io.EOF {
		t.Fatalf("stream goes on (%+v, %v), want its end", f, err)
	}
}

func serve(t *testing.T, h *harness) *httptest.Server {
	srv := httptest.NewServer(h.api.Handler())
	t.Cleanup(srv.Close)
	return srv
}

// wantStopped waits until the handler has stopped watching.
func (m *watched) wantStopped(t *testing.T) {
	t.Helper()
	poll.Until(t, 10*time.Second, "the handler stops watching", poll.True(func() bool { return m.stops.Load() == 1 },
		func() string { return fmt.Sprintf("%d of %d watches stopped", m.stops.Load(), m.watches.Load()) }))
}

func TestWatchStreamsCurrentThenServing(t *testing.T) {
	h := newHarness(t)
	h.cons.Stale = 0.25
	h.token = "secret" // a watch is a read: no token needed
	m := newWatched(h)
	m.set("v1", "v1")
	<-m.ch // the initial state needs no signal
	srv := serve(t, h)

	s := openWatch(t, srv, "/v1/models/resnet/watch")
	if s.resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(s.resp.Body)
		t.Fatalf("status %d: %s", s.resp.StatusCode, b)
	}
	for k, want := range map[string]string{"Content-Type": "text/event-stream", "Cache-Control": "no-cache", api.HeaderStaleness: "0.250s"} {
		if got := s.resp.Header.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	want := api.ModelWatchEvent{Model: "resnet", Current: "v1", Serving: "v1", CurrentHLC: "1700000000000000000.2@pub", StalenessSeconds: 0.25}
	if ev := s.nextModel(t, 1); ev != want {
		t.Errorf("initial event %+v, want %+v", ev, want)
	}

	// The current version changes before this peer serves it…
	m.set("v2", "v1")
	want.Current = "v2"
	if ev := s.nextModel(t, 2); ev != want {
		t.Errorf("after activation: %+v, want %+v", ev, want)
	}
	// …then the switch.
	m.set("v2", "v2")
	want.Serving = "v2"
	if ev := s.nextModel(t, 3); ev != want {
		t.Errorf("after the switch: %+v, want %+v", ev, want)
	}
}

// TestWatchSkipsSignalsWithoutChange: a signal after which neither
// version differs sends nothing; the next change is the next event.
func TestWatchSkipsSignalsWithoutChange(t *testing.T) {
	h := newHarness(t)
	m := newWatched(h)
	m.set("v1", "")
	<-m.ch
	s := openWatch(t, serve(t, h), "/v1/models/resnet/watch")
	s.nextModel(t, 1)

	for i := range 3 {
		reads := m.reads.Load()
		m.signal()
		poll.Until(t, 10*time.Second, fmt.Sprintf("signal %d is read", i), poll.True(func() bool { return m.reads.Load() > reads },
			func() string { return "no read since the signal" }))
	}
	m.set("v1", "v1")
	if ev := s.nextModel(t, 2); ev.Current != "v1" || ev.Serving != "v1" {
		t.Errorf("event %+v, want current and serving v1", ev)
	}
}

// TestWatchUnknownModelThenPublished: a model nobody published yet is
// watchable; its first publication and activation follow as events.
func TestWatchUnknownModelThenPublished(t *testing.T) {
	h := newHarness(t)
	m := newWatched(h)
	m.fail(fmt.Errorf("%w: later", models.ErrUnknownModel))
	<-m.ch
	s := openWatch(t, serve(t, h), "/v1/models/later/watch")
	if s.resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200 for a model not published yet", s.resp.StatusCode)
	}
	if ev := s.nextModel(t, 1); ev != (api.ModelWatchEvent{Model: "later"}) {
		t.Errorf("initial event %+v, want no versions", ev)
	}
	m.set("v1", "")
	if ev := s.nextModel(t, 2); ev.Model != "later" || ev.Current != "v1" || ev.Serving != "" || ev.CurrentHLC == "" {
		t.Errorf("after the publication: %+v", ev)
	}
	m.set("v1", "v1")
	if ev := s.nextModel(t, 3); ev.Serving != "v1" {
		t.Errorf("after the switch: %+v", ev)
	}
}

func TestWatchBadName(t *testing.T) {
	h := newHarness(t)
	for _, path := range []string{
		"/v1/models/-m/watch",
		"/v1/models/.m/watch",
		"/v1/models/m%20x/watch",
		"/v1/models/m@v1/watch",
		"/v1/models/" + strings.Repeat("m", 129) + "/watch",
	} {
		wantError(t, h.do(t, "GET", path, nil), api.CodeNameInvalid)
	}
	wantCalls(t, h.models.calls, map[string]int{"Watch": 0, "Model": 0})
}

// TestWatchConnectErrors: what fails before the stream starts is an
// ordinary error answer, and the watch is stopped.
func TestWatchConnectErrors(t *testing.T) {
	t.Run("read", func(t *testing.T) {
		h := newHarness(t)
		m := newWatched(h)
		m.fail(fmt.Errorf("reading: %w", lifecycle.ErrShuttingDown))
		wantError(t, h.do(t, "GET", "/v1/models/resnet/watch", nil), api.CodeShuttingDown)
		if m.watches.Load() != 1 || m.stops.Load() != 1 {
			t.Errorf("%d watches, %d stopped; want 1 and 1", m.watches.Load(), m.stops.Load())
		}
	})
	t.Run("staleness", func(t *testing.T) {
		h := newHarness(t)
		h.cons.Stale = 3
		m := newWatched(h)
		wantError(t, h.do(t, "GET", "/v1/models/resnet/watch", nil, api.HeaderMaxStaleness, "1s"), api.CodeStalenessExceeded)
		if m.reads.Load() != 0 || m.stops.Load() != m.watches.Load() {
			t.Errorf("%d reads, %d of %d watches stopped", m.reads.Load(), m.stops.Load(), m.watches.Load())
		}
	})
}

// TestWatchReadErrorEndsStream: a read that fails after the stream began
// ends it with an error event carrying the API's error body.
func TestWatchReadErrorEndsStream(t *testing.T) {
	h := newHarness(t)
	m := newWatched(h)
	m.set("v1", "v1")
	<-m.ch
	s := openWatch(t, serve(t, h), "/v1/models/resnet/watch")
	s.nextModel(t, 1)
	m.fail(errors.New("the disk is on fire"))
	f := s.nextEvent(t)
	var e api.Error
	if err := json.Unmarshal([]byte(f.data), &e); f.event != "error" || err != nil || e.Code != api.CodeInternal || !strings.Contains(e.Message, "on fire") {
		t.Fatalf("frame %+v (%v), want an error event with code %s", f, err, api.CodeInternal)
	}
	s.wantEnd(t)
	m.wantStopped(t)
}

// TestWatchStopsWhenClientLeaves: the handler stops watching once the
// client disconnects.
func TestWatchStopsWhenClientLeaves(t *testing.T) {
	h := newHarness(t)
	m := newWatched(h)
	s := openWatch(t, serve(t, h), "/v1/models/resnet/watch")
	s.nextModel(t, 1)
	if m.stops.Load() != 0 {
		t.Fatal("watch stopped while the client listens")
	}
	s.cancel()
	m.wantStopped(t)
	wantCalls(t, h.models.calls, map[string]int{"Watch": 1})
}

// TestWatchEndStreams: EndStreams (the server's shutdown) ends open
// streams, which would otherwise hold Shutdown until its deadline.
func TestWatchEndStreams(t *testing.T) {
	h := newHarness(t)
	m := newWatched(h)
	s := openWatch(t, serve(t, h), "/v1/models/resnet/watch")
	s.nextModel(t, 1)
	h.api.EndStreams()
	h.api.EndStreams()
	s.wantEnd(t)
	m.wantStopped(t)
}

// TestWatchOutlivesServerTimeouts: a server whose read and write
// timeouts are far shorter than the stream keeps it open — keep-alives
// flow past both deadlines, and a change after them still arrives.
func TestWatchOutlivesServerTimeouts(t *testing.T) {
	h := newHarness(t)
	h.api.keepalive = 20 * time.Millisecond
	m := newWatched(h)
	srv := httptest.NewUnstartedServer(h.api.Handler())
	const timeout = 200 * time.Millisecond
	srv.Config.ReadTimeout, srv.Config.WriteTimeout = timeout, timeout
	srv.Start()
	t.Cleanup(srv.Close)

	s := openWatch(t, srv, "/v1/models/resnet/watch")
	s.nextModel(t, 1)
	start, keepalives := time.Now(), 0
	for time.Since(start) < 5*timeout {
		f, err := s.next()
		if err != nil {
			t.Fatalf("the stream ended after %s and %d keep-alives: %v", time.Since(start), keepalives, err)
		}
		if f.comment != "keepalive" || f.event != "" {
			t.Fatalf("frame %+v, want a keep-alive", f)
		}
		keepalives++
	}
	m.set("v9", "")
	if ev := s.nextModel(t, 2); ev.Current != "v9" {
		t.Errorf("event %+v, want current v9", ev)
	}
}
