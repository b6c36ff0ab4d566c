package serving

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/inference"
)

// Dynamic batching, after Triton's dynamic batcher. A version whose
// manifest sets max_batch_size gets one queue per session and batch key
// (inference.Prepared.BatchKey: equal non-batch dimensions, datatypes and
// requested outputs); requests in a queue are joined along dimension 0,
// run once, and each gets its own rows back (inference.RunBatch).
//
// When requests wait. A queue has up to Config.BatchRunners runners
// (default 4): goroutines that form a batch, take an inference slot for
// it (--max-inflight; requests waiting in a queue hold none), run it and
// answer its members. A request that finds a runner free and none forming
// a batch becomes a runner itself; any other joins the batch being formed
// or the next one. A runner takes its batch, in arrival order and up to
// max_batch_size rows, as soon as one of these holds:
//
//   - no batch of the queue is running: waiting would leave the queue's
//     cores idle. So a lone request never waits (a lone client sees the
//     unbatched latency), and the run in progress is the accumulation
//     window: requests arriving while it runs form the next batch;
//   - the pending rows reach max_batch_size;
//   - the oldest pending request has waited max_queue_delay_us (Triton's
//     max_queue_delay_microseconds).
//
// Triton waits up to the delay even for a lone request; that costs a lone
// client the delay on every request, which Shoal's batching must not.
// Several runners exist because one run at a time leaves cores idle: on
// CPU onnxruntime parallelises a run's operators only in part. On the
// 2-core reference machine, the classifier (3×32×64 images) runs about
// 6,200 rows/s as one batch of 64 at a time, 8,100 as two of 32 and 7,900
// as four of 16 (raw onnxruntime, medians); through the serving path
// with 64 clients, four runners did about 1.25× the requests per second
// of two. With a delay of a fraction of a run, the next batches fill
// while the first runs.
//
// defaultBatchRunners is Config.BatchRunners' default (see above).
const defaultBatchRunners = 4

// Cancellation. A request whose context ends while it waits leaves the
// queue (ErrBusy when its queue was waiting for a slot, else ErrTimeout)
// and its batch-mates never see it. Once in a batch, the run's context is
// one that ends only when every member's has ended, or at the latest
// member deadline: one member giving up does not terminate the others'
// run. That member still waits for the run (at most one batch's run
// time), because the session must stay acquired while onnxruntime uses
// it and the members' references are what keeps it.
//
// A batch that fails as a whole (an onnxruntime error that one member's
// data may cause, or outputs that do not split by rows) is run again
// request by request, so each gets the answer, or the error, it would get
// alone. A model whose outputs did not split is not batched again.
//
// Locks: Server.bmu (the queue map) is taken before a batchQueue's mu,
// never the other way round; neither is held while a run, a slot wait or
// a delay wait is in progress.

// batchKey names one queue: requests for one session (one loaded model
// version) that may be joined.
type batchKey struct {
	sess *inference.Session
	key  string
}

// batchSpec is how one request is batched.
type batchSpec struct {
	k       batchKey
	rows    int
	maxRows int
	delay   time.Duration
}

// batchFor returns how p is batched, or nil when it runs alone: the
// manifest does not ask for batching, the model's first dimensions are not
// all dynamic, p alone fills a batch, or the model's outputs were found
// not to split by rows.
func (s *Server) batchFor(sess *inference.Session, m models.Manifest, p *inference.Prepared) *batchSpec {
	maxRows, delay := m.Batching()
	if maxRows < 2 || !sess.Batchable() {
		return nil
	}
	rows, key, ok := p.BatchKey()
	if !ok || rows >= maxRows {
		return nil
	}
	s.bmu.Lock()
	off := s.noBatch[sess.CID]
	s.bmu.Unlock()
	if off {
		return nil
	}
	return &batchSpec{k: batchKey{sess, key}, rows: rows, maxRows: maxRows, delay: delay}
}

// member is one request in a queue.
type member struct {
	ctx    context.Context
	p      *inference.Prepared
	rows   int
	queued time.Time
	// inQueue is guarded by the queue's mu: whoever takes the member out
	// of pending (a batch, the member itself on cancellation, the runner
	// dropping a cancelled one) owns its answer.
	inQueue bool
	done    chan result // buffered: the runner never blocks on it
}

type result struct {
	outs []inference.ResponseOutput
	err  error
}

// batchQueue is the queue of one batchKey. It exists while it has work:
// the runner removes it from Server.queues once pending is empty.
type batchQueue struct {
	s          *Server
	k          batchKey
	maxRows    int
	delay      time.Duration
	maxRunners int

	mu sync.Mutex
	// changed is closed, and replaced, whenever pending or the running
	// batches change: a broadcast to every runner waiting for a delay or
	// a slot, which then looks again.
	changed  chan struct{}
	pending  []*member
	rows     int // rows in pending
	runners  int // leading requests and loops that serve the queue
	forming  int // runners forming a batch (waiting for a delay or slot)
	slotWait int // runners waiting for an inference slot
	inRun    int // batches running
}

// batch is a formed batch holding an inference slot.
type batch struct {
	members []*member
	rows    int
	release func()
}

// batched computes p's outputs in a batch: it joins its queue, runs a
// batch itself when enqueue says so, and waits for its answer.
func (s *Server) batched(ctx context.Context, c Call, p *inference.Prepared, spec *batchSpec) ([]inference.ResponseOutput, *Answer, error) {
	if fwd, err := s.admitBatched(ctx, c, spec.k); fwd != nil || err != nil {
		return nil, fwd, err
	}
	m := &member{ctx: ctx, p: p, rows: spec.rows, queued: time.Now(), done: make(chan result, 1)}
	q, lead := s.enqueue(spec, m)
	if lead {
		q.lead(m)
	}
	r := q.await(m)
	return r.outs, nil, r.err
}

// admitBatched applies admit's rules for a saturated peer (route the
// call to a warm peer, or refuse a call forwarded here) to a call that
// would start a queue while every slot is taken. A call whose queue is
// already at work joins it: its batch will run in the next slot the
// queue gets, and it takes none of its own.
func (s *Server) admitBatched(ctx context.Context, c Call, k batchKey) (*Answer, error) {
	if s.slots == nil || len(s.slots) < cap(s.slots) || !(s.mayRoute(c) || c.Forwarded) {
		return nil, nil
	}
	s.bmu.Lock()
	_, busy := s.queues[k]
	s.bmu.Unlock()
	switch {
	case busy:
	case s.mayRoute(c):
		if a, ok := s.cfg.Router.Forward(ctx, c); ok {
			s.m.saturated.WithLabelValues("forwarded").Inc()
			return &a, nil
		}
	case c.Forwarded:
		s.m.saturated.WithLabelValues("refused").Inc()
		return nil, fmt.Errorf("%w on this peer (%d in flight, --max-inflight)", ErrBusy, cap(s.slots))
	}
	return nil, nil
}

// enqueue adds m to its queue, creating the queue if there is none. lead
// reports that a runner was free and none was forming a batch: m's
// goroutine is now one of the queue's runners, counted as forming.
func (s *Server) enqueue(spec *batchSpec, m *member) (q *batchQueue, lead bool) {
	s.bmu.Lock()
	q = s.queues[spec.k]
	if q == nil {
		q = &batchQueue{s: s, k: spec.k, maxRows: spec.maxRows, delay: spec.delay, maxRunners: s.batchRunners, changed: make(chan struct{})}
		s.queues[spec.k] = q
	}
	q.mu.Lock()
	s.bmu.Unlock()
	defer q.mu.Unlock()
	q.pending = append(q.pending, m)
	q.rows += m.rows
	m.inQueue = true
	if q.runners >= q.maxRunners || q.forming > 0 {
		q.signal()
		return q, false
	}
	q.runners++
	q.forming++
	return q, true
}

// signal wakes the runners waiting on changed. The queue's mu is held.
func (q *batchQueue) signal() {
	close(q.changed)
	q.changed = make(chan struct{})
}

// lead forms a batch on m's goroutine (at once when no batch of the
// queue is running, see fill), runs it, then hands whatever queued
// meanwhile to a loop. A wait ends early when m's context does (m then
// leaves as any queued request).
func (q *batchQueue) lead(m *member) {
	b := q.next(m.ctx.Done())
	q.addForming(-1)
	if b != nil {
		q.run(b)
	}
	if !q.idle() {
		go q.loop()
	}
}

// loop runs batches of the queue until it is empty.
func (q *batchQueue) loop() {
	for {
		q.addForming(1)
		b := q.next(nil)
		q.addForming(-1)
		if b != nil {
			q.run(b)
		} else if q.idle() {
			return
		}
	}
}

// idle ends the calling runner when nothing is pending (reporting true);
// the last runner out removes the queue from Server.queues.
func (q *batchQueue) idle() bool {
	q.s.bmu.Lock()
	defer q.s.bmu.Unlock()
	q.mu.Lock()
	defer q.mu.Unlock()
	q.dropCancelled()
	if len(q.pending) > 0 {
		return false
	}
	if q.runners--; q.runners == 0 {
		delete(q.s.queues, q.k)
	}
	return true
}

// await returns m's answer. A member whose context ends while it waits in
// the queue leaves it; one already in a batch waits for the batch.
func (q *batchQueue) await(m *member) result {
	select {
	case r := <-m.done:
		return r
	case <-m.ctx.Done():
	}
	q.mu.Lock()
	if m.inQueue {
		q.remove(m)
		err := q.leaveError()
		q.mu.Unlock()
		return result{err: err}
	}
	q.mu.Unlock()
	return <-m.done
}

// remove takes m out of pending. The queue's mu is held.
func (q *batchQueue) remove(m *member) {
	if i := slices.Index(q.pending, m); i >= 0 {
		q.pending = slices.Delete(q.pending, i, i+1)
		q.rows -= m.rows
	}
	m.inQueue = false
	q.signal()
}

// leaveError is the error of a request that gave up in the queue: busy
// when the queue was waiting for a slot (as a request waiting in admit
// would be), else a timeout. The queue's mu is held.
func (q *batchQueue) leaveError() error {
	if q.slotWait > 0 {
		q.s.m.saturated.WithLabelValues("refused").Inc()
		return fmt.Errorf("%w within the request's deadline (%d in flight, --max-inflight; queued for a batch)", ErrBusy, cap(q.s.slots))
	}
	return ErrTimeout
}

// dropCancelled answers and removes the pending members whose context
// has ended, so that no batch carries them. The queue's mu is held.
func (q *batchQueue) dropCancelled() {
	kept := q.pending[:0]
	for _, m := range q.pending {
		if m.ctx.Err() == nil {
			kept = append(kept, m)
			continue
		}
		q.rows -= m.rows
		m.inQueue = false
		m.done <- result{err: q.leaveError()}
	}
	clear(q.pending[len(kept):])
	q.pending = kept
}

// next forms the next batch: it waits for the batch to fill (see fill),
// then for an inference slot, then takes requests in arrival order up to
// maxRows rows (the first always). It returns nil when no request is left
// or when stop ends a wait. The caller counts itself as forming meanwhile.
func (q *batchQueue) next(stop <-chan struct{}) *batch {
	if !q.fill(stop) {
		return nil
	}
	release, ok := q.slot(stop)
	if !ok {
		return nil
	}
	if b := q.take(); b != nil {
		b.release = release
		return b
	}
	release()
	return nil
}

// fill waits until the pending rows reach maxRows, or the oldest pending
// request has waited the queue delay, or no batch of the queue is running
// (waiting then would leave the cores the queue has idle: a lone request
// never waits). It reports false when nothing is pending (or stop ended
// the wait).
func (q *batchQueue) fill(stop <-chan struct{}) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for {
		q.dropCancelled()
		if len(q.pending) == 0 {
			return false
		}
		left := time.Until(q.pending[0].queued.Add(q.delay))
		if q.rows >= q.maxRows || left <= 0 || q.inRun == 0 {
			return true
		}
		changed := q.changed
		q.mu.Unlock()
		t := time.NewTimer(left)
		select {
		case <-changed:
		case <-t.C:
		case <-stop:
		}
		t.Stop()
		q.mu.Lock()
		select {
		case <-stop:
			return false
		default:
		}
	}
}

// slot takes an inference slot for the next batch; ok is false when the
// queue emptied (every request gave up) or stop ended the wait.
func (q *batchQueue) slot(stop <-chan struct{}) (release func(), ok bool) {
	slots := q.s.slots
	if slots == nil {
		return func() {}, true
	}
	release = func() { <-slots }
	select {
	case slots <- struct{}{}:
		return release, true
	default:
	}
	q.addSlotWait(1)
	defer q.addSlotWait(-1)
	for {
		q.mu.Lock()
		q.dropCancelled()
		empty, changed := len(q.pending) == 0, q.changed
		q.mu.Unlock()
		if empty {
			return nil, false
		}
		select {
		case slots <- struct{}{}:
			q.s.m.saturated.WithLabelValues("waited").Inc()
			return release, true
		case <-changed:
		case <-stop:
			// The stopped request leaves as one refused for want of a
			// slot, not as a timeout.
			q.mu.Lock()
			q.dropCancelled()
			q.mu.Unlock()
			return nil, false
		}
	}
}

func (q *batchQueue) addForming(n int) {
	q.mu.Lock()
	q.forming += n
	q.mu.Unlock()
}

// addInRun counts batches running; one ending wakes a forming runner
// (fill stops waiting when none runs).
func (q *batchQueue) addInRun(n int) {
	q.mu.Lock()
	q.inRun += n
	if n < 0 {
		q.signal()
	}
	q.mu.Unlock()
}

func (q *batchQueue) addSlotWait(n int) {
	q.mu.Lock()
	q.slotWait += n
	q.mu.Unlock()
}

// take moves the next batch's members out of pending.
func (q *batchQueue) take() *batch {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.dropCancelled()
	b := &batch{}
	n := 0
	for _, m := range q.pending {
		if n > 0 && b.rows+m.rows > q.maxRows {
			break
		}
		m.inQueue = false
		b.members = append(b.members, m)
		b.rows += m.rows
		n++
	}
	if n == 0 {
		return nil
	}
	q.rows -= b.rows
	q.pending = slices.Delete(q.pending, 0, n)
	return b
}

// run runs b in the slot it holds and answers its members.
func (q *batchQueue) run(b *batch) {
	defer b.release()
	q.addInRun(1)
	defer q.addInRun(-1)
	s, sess := q.s, q.k.sess
	s.running.Add(1)
	defer s.running.Add(-1)
	start := time.Now()
	for _, m := range b.members {
		s.m.queueSeconds.WithLabelValues(sess.Model).Observe(start.Sub(m.queued).Seconds())
	}
	s.m.batchRows.WithLabelValues(sess.Model).Observe(float64(b.rows))
	if len(b.members) == 1 {
		m := b.members[0]
		if s.batchHook != nil {
			s.batchHook(b)
		}
		outs, err := sess.Run(m.ctx, m.p)
		s.m.runSeconds.WithLabelValues(sess.Model).Observe(time.Since(start).Seconds())
		m.done <- result{outs, runError(m.ctx, err)}
		return
	}
	ctx, stop := batchContext(b.members)
	defer stop()
	ps := make([]*inference.Prepared, len(b.members))
	for i, m := range b.members {
		ps[i] = m.p
	}
	if s.batchHook != nil {
		s.batchHook(b)
	}
	outs, err := sess.RunBatch(ctx, ps)
	s.m.runSeconds.WithLabelValues(sess.Model).Observe(time.Since(start).Seconds())
	switch {
	case err == nil:
		for i, m := range b.members {
			m.done <- result{outs: outs[i]}
		}
	case ctx.Err() != nil:
		// Every member gave up, or the last deadline passed.
		for _, m := range b.members {
			m.done <- result{err: ErrTimeout}
		}
	default:
		q.alone(b, err)
	}
}

// alone runs a failed batch's members one by one, in the batch's slot,
// each under its own context.
func (q *batchQueue) alone(b *batch, cause error) {
	s, sess := q.s, q.k.sess
	reason := "error"
	if errors.Is(cause, inference.ErrNotSplittable) {
		reason = "not_splittable"
		s.bmu.Lock()
		s.noBatch[sess.CID] = true
		s.bmu.Unlock()
		s.log.Warn("model outputs do not split by rows: its requests run alone from now on", "model", sess.Model, "version", sess.Version, "err", cause)
	}
	s.m.batchFallbacks.WithLabelValues(sess.Model, reason).Inc()
	for _, m := range b.members {
		start := time.Now()
		outs, err := sess.Run(m.ctx, m.p)
		s.m.runSeconds.WithLabelValues(sess.Model).Observe(time.Since(start).Seconds())
		m.done <- result{outs, runError(m.ctx, err)}
	}
}

// batchContext returns the context of one batch's run: it ends when every
// member's context has ended, or at the latest member deadline (when all
// have one); stop releases it.
func batchContext(ms []*member) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var latest time.Time
	for _, m := range ms {
		d, ok := m.ctx.Deadline()
		if !ok {
			latest = time.Time{}
			break
		}
		if d.After(latest) {
			latest = d
		}
	}
	cancelDeadline := func() {}
	if !latest.IsZero() {
		ctx, cancelDeadline = context.WithDeadline(ctx, latest)
	}
	var live atomic.Int64
	live.Store(int64(len(ms)))
	stops := make([]func() bool, len(ms))
	for i, m := range ms {
		stops[i] = context.AfterFunc(m.ctx, func() {
			if live.Add(-1) == 0 {
				cancel()
			}
		})
	}
	return ctx, func() {
		for _, st := range stops {
			st()
		}
		cancelDeadline()
		cancel()
	}
}
