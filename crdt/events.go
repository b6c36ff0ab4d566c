package crdt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	ds "github.com/ipfs/go-datastore"
)

// Event delivery runs from go-ds-crdt's hooks to each subscriber:
//
//	hook ─push─▶ eventQueue ─pop─▶ dispatcher ─offer─▶ backlog ─pump─▶ Subscription.C
//	                                               (one backlog and one pump per subscription)
//
// The hooks run under go-ds-crdt's merge lock, so they only append to the
// unbounded eventQueue; they never wait for anything. One dispatcher
// goroutine takes the events in order, holds each put until the write it
// reports has landed (commitTracker), decodes it and offers it to the
// subscriptions whose prefix matches. Offering never blocks either:
// an event goes straight onto the subscription's channel when that has
// room and nothing is queued before it, else into the subscription's own
// bounded backlog, which its pump goroutine feeds to the channel. So a
// subscriber that stops reading delays no one else; once it is more than
// its SubscriberLimits behind, it is ended with ErrSlowSubscriber (as NATS
// treats a slow consumer) rather than silently losing events.
//
// Callback contract. The hooks (putHook, deleteHook) run under the merge
// lock: they copy their arguments, take commitTracker.mu and eventQueue.mu
// (one after the other, each briefly) and return; they never read the
// datastore or wait. A subscriber reads C promptly, selects on Done as
// well, and when Err wraps ErrSlowSubscriber subscribes again before it
// reads the state again.
//
// Lock order: Replica.subMu before Subscription.mu; eventQueue.mu and
// commitTracker.mu are leaves. No lock is held while an event is sent on a
// channel, except Subscription.mu around a send that cannot block (select
// with default).

// Sentinels a subscriber tests Subscription.Err against with errors.Is.
var (
	// ErrSlowSubscriber: the subscription fell further behind than its
	// SubscriberLimits allow and was ended, so events were lost. The
	// subscriber subscribes again, then reads the state (List, Scan) to
	// catch up, as it did when it started.
	ErrSlowSubscriber = errors.New("subscriber fell behind")
	// ErrSubscriptionClosed: the subscription or its replica was closed.
	ErrSubscriptionClosed = errors.New("subscription closed")
)

// SubscriberLimits bound how far one subscription may fall behind.
type SubscriberLimits struct {
	// Events waiting for the reader: on its channel and behind it.
	// Default DefaultSubscriberEvents.
	Events int
	// Bytes of the events waiting behind the channel (their keys and
	// record bytes; the channel itself holds at most its buffer, each
	// record at most MaxRecordSize). Default DefaultSubscriberBytes.
	Bytes int64
}

// Default SubscriberLimits: room for a bulk ingest of tens of thousands
// of small records while a subscriber works through them, and a ceiling
// on what one stuck subscriber can make this peer hold in memory.
const (
	DefaultSubscriberEvents       = 1 << 16
	DefaultSubscriberBytes  int64 = 64 << 20
)

func (l SubscriberLimits) withDefaults() SubscriberLimits {
	if l.Events <= 0 {
		l.Events = DefaultSubscriberEvents
	}
	if l.Bytes <= 0 {
		l.Bytes = DefaultSubscriberBytes
	}
	return l
}

// SetSubscriberLimits sets the limits of subscriptions made after the
// call; zero fields take the defaults.
func (r *Replica) SetSubscriberLimits(l SubscriberLimits) {
	l = l.withDefaults()
	r.delivery.limits.Store(&l)
}

// delivery is the replica's event-delivery state besides the queue and
// the subscription set.
type delivery struct {
	limits  atomic.Pointer[SubscriberLimits] // nil: the defaults
	commits commitTracker
}

func (d *delivery) subscriberLimits() SubscriberLimits {
	if l := d.limits.Load(); l != nil {
		return *l
	}
	return SubscriberLimits{}.withDefaults()
}

// rawEvent is what a hook enqueues: nothing is decoded or read under the
// CRDT's merge lock.
type rawEvent struct {
	typ   EventType
	key   string
	value []byte
	seq   uint64
	// barrier (puts): the newest batch opened when the hook fired; the
	// event waits until no batch up to it is open (commitTracker.await).
	barrier uint64
	// unsigned (deletes): an unsigned go-ds-crdt tombstone caused it,
	// not a rebuild that no longer holds the key.
	unsigned bool
}

// Puts are held until their batch commits. go-ds-crdt calls the put hook
// inside set.putElems, right after putting the value into a batch of the
// datastore and before committing that batch (a delete hook fires after
// its commit). A subscriber that read the key back on a put event could
// see the value before it, or none.
//
// The replica hands go-ds-crdt its datastore wrapped (commitTracker.wrap),
// so that every batch go-ds-crdt opens is numbered when opened and struck
// off when its Commit returns, at which point Badger serves its writes.
// The put hook records the newest number opened so far; the batch the put
// was written to is among those (it was opened earlier, in the same
// goroutine), so once no batch numbered up to it is open, that batch has
// committed and the value is readable. Batches opened later do not hold
// the event up; other batches open at the time (a concurrent merge's
// tombstones, a heads update) may, briefly. So a put is never released
// early (short of the abandonment below), without knowing which batch
// holds which key; the other candidate — waiting until Get shows the
// event's value — could wait forever when a later write replaced the
// value first.
//
// go-datastore batches have no Discard, and go-ds-crdt abandons a batch
// when a write into it fails. A batch still open abandonBatchAfter after
// it was opened therefore no longer holds anything up (it is logged): the
// events waiting for it are delivered (if it never commits, their writes
// did not land, as after any failed merge, which go-ds-crdt retries or
// marks dirty). A batch that commits with an error is struck off too.
//
// A consequence subscribers rely on (rag's resync): an event is dispatched
// only once its write is in the datastore, so a reader that subscribes
// and then reads the state misses nothing.

// abandonBatchAfter is how long an open batch may hold up put events: far
// beyond a commit of go-ds-crdt's largest delta (1 MiB) into Badger.
const abandonBatchAfter = 5 * time.Second

// commitTracker numbers the batches go-ds-crdt opens on the datastore and
// knows which are still open. Its zero value is ready.
type commitTracker struct {
	// abandonAfter replaces abandonBatchAfter when set (tests).
	abandonAfter time.Duration

	mu      sync.Mutex
	opened  uint64               // batches ever opened: the newest one's number
	open    map[uint64]time.Time // numbers of batches not yet committed → when opened
	changed chan struct{}        // closed (and cleared) when a batch commits
}

// wrap returns d with its batches tracked; everything else passes through.
func (t *commitTracker) wrap(d ds.Batching) ds.Batching { return trackedStore{d, t} }

type trackedStore struct {
	ds.Batching
	t *commitTracker
}

func (s trackedStore) Batch(ctx context.Context) (ds.Batch, error) {
	b, err := s.Batching.Batch(ctx)
	if err != nil {
		return nil, err
	}
	return &trackedBatch{Batch: b, t: s.t, n: s.t.begin()}, nil
}

type trackedBatch struct {
	ds.Batch
	t *commitTracker
	n uint64
}

// Commit commits, then strikes the batch off: its writes are readable
// (or, on error, will not be).
func (b *trackedBatch) Commit(ctx context.Context) error {
	err := b.Batch.Commit(ctx)
	b.t.end(b.n)
	return err
}

func (t *commitTracker) begin() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.open == nil {
		t.open = map[uint64]time.Time{}
	}
	t.opened++
	t.open[t.opened] = time.Now()
	return t.opened
}

func (t *commitTracker) end(n uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.open, n)
	if t.changed != nil {
		close(t.changed)
		t.changed = nil
	}
}

// newest is the number of the newest batch opened so far.
func (t *commitTracker) newest() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.opened
}

// await returns once no batch numbered up to barrier is open, striking
// off (and returning the count of) those open for abandonBatchAfter; ok
// is false if ctx ended first.
func (t *commitTracker) await(ctx context.Context, barrier uint64) (abandoned int, ok bool) {
	after := abandonBatchAfter
	if t.abandonAfter > 0 {
		after = t.abandonAfter
	}
	for {
		t.mu.Lock()
		now := time.Now()
		wait := time.Duration(-1)
		for n, at := range t.open {
			if n > barrier {
				continue
			}
			if left := after - now.Sub(at); left <= 0 {
				delete(t.open, n)
				abandoned++
			} else if wait < 0 || left < wait {
				wait = left
			}
		}
		if wait < 0 {
			t.mu.Unlock()
			return abandoned, true
		}
		if t.changed == nil {
			t.changed = make(chan struct{})
		}
		changed := t.changed
		t.mu.Unlock()
		timer := time.NewTimer(wait)
		select {
		case <-changed:
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return abandoned, false
		}
		timer.Stop()
	}
}

// eventQueue is an unbounded FIFO between the CRDT hooks (which must never
// block) and the dispatcher goroutine. The dispatcher never waits for a
// subscriber, so it stays short.
type eventQueue struct {
	mu     sync.Mutex
	cond   *sync.Cond
	items  []rawEvent
	closed bool
	seq    uint64 // events ever pushed; each event carries its number
}

func newEventQueue() *eventQueue {
	q := &eventQueue{}
	q.cond = sync.NewCond(&q.mu)
	return q
}

func (q *eventQueue) push(e rawEvent) {
	q.mu.Lock()
	if !q.closed {
		q.seq++
		e.seq = q.seq
		q.items = append(q.items, e)
		q.cond.Signal()
	}
	q.mu.Unlock()
}

// pop blocks until an event is available; ok is false once closed.
func (q *eventQueue) pop() (rawEvent, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.items) == 0 && !q.closed {
		q.cond.Wait()
	}
	if q.closed {
		return rawEvent{}, false
	}
	e := q.items[0]
	q.items[0] = rawEvent{}
	q.items = q.items[1:]
	return e, true
}

func (q *eventQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.cond.Broadcast()
	q.mu.Unlock()
}

// Subscription delivers the events under one key prefix.
type Subscription struct {
	r      *Replica
	prefix string
	ch     chan Event
	done   chan struct{}
	limits SubscriberLimits

	mu   sync.Mutex
	wake *sync.Cond // on mu: the backlog grew, or the subscription ended
	// backlog holds the events offered while ch was full (or while older
	// ones still waited), oldest first; bytes is their eventSize sum.
	backlog []Event
	bytes   int64
	// sending: the pump has taken sendingSeq off the backlog and is
	// blocked sending it on ch.
	sending    bool
	sendingSeq uint64
	// err is why the subscription ended (nil while open); final is what
	// Dispatched reported then.
	err   error
	final uint64

	// delivered is the Seq of the last event sent on ch.
	delivered atomic.Uint64
}

// Delivered is the Seq of the last event this subscription was sent (put
// on C; the reader may not have taken it yet).
func (s *Subscription) Delivered() uint64 { return s.delivered.Load() }

// Dispatched is the Seq up to which every event under the subscription's
// prefix has been sent on C: when nothing waits behind C, the replica's
// Dispatched. A subscriber that has handled every event up to Delivered
// has seen every change up to Dispatched. It stops moving when the
// subscription ends.
func (s *Subscription) Dispatched() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dispatchedLocked()
}

func (s *Subscription) dispatchedLocked() uint64 {
	switch {
	case s.err != nil:
		return s.final
	case s.sending:
		return s.sendingSeq - 1
	case len(s.backlog) > 0:
		return s.backlog[0].Seq - 1
	}
	// The dispatcher offers an event (under mu) before it counts it as
	// dispatched, so every event up to this value that concerns s has
	// been offered, and, with nothing queued, sent.
	return s.r.dispatched.Load()
}

// C returns the channel events arrive on. It is never closed: select on
// Done (or your own context) as well.
func (s *Subscription) C() <-chan Event { return s.ch }

// Done is closed when the subscription ends: closed by Close or by the
// replica's Close, or ended because it fell behind. Err says which.
func (s *Subscription) Done() <-chan struct{} { return s.done }

// Err is nil while the subscription is open. Once it has ended it wraps
// ErrSlowSubscriber if the subscriber fell behind (events were lost: read
// the state again), else it is ErrSubscriptionClosed.
func (s *Subscription) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Close ends the subscription.
func (s *Subscription) Close() {
	s.r.subMu.Lock()
	delete(s.r.subs, s)
	s.r.subMu.Unlock()
	s.closeDone()
}

// closeDone ends the subscription as closed (the replica's teardown calls
// it for every subscription left).
func (s *Subscription) closeDone() { s.end(ErrSubscriptionClosed) }

// end ends the subscription with err, once: the backlog is dropped and the
// pump stops.
func (s *Subscription) end(err error) {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return
	}
	s.final = s.dispatchedLocked()
	s.err = err
	s.backlog, s.bytes = nil, 0
	s.wake.Broadcast()
	s.mu.Unlock()
	close(s.done)
}

// eventSize is what an event waiting in a backlog is charged: its bytes
// and a fixed allowance for the Event itself.
func eventSize(ev Event) int64 {
	return int64(len(ev.Key)+len(ev.Value)+len(ev.Record.Body)+len(ev.Record.Kind)+len(ev.Record.Writer)) + 128
}

// offer hands ev to the subscription without blocking: onto C if it has
// room and nothing is queued before ev, else into the backlog. It returns
// an error wrapping ErrSlowSubscriber when that would exceed the
// subscription's limits; the caller then ends it.
func (s *Subscription) offer(ev Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return nil
	}
	waiting := len(s.ch) + len(s.backlog)
	if s.sending {
		waiting++
	}
	size := eventSize(ev)
	if waiting >= s.limits.Events || (len(s.backlog) > 0 && s.bytes+size > s.limits.Bytes) {
		return fmt.Errorf("%w: %d events waiting under %q (limit %d; %d bytes behind the channel, limit %d)",
			ErrSlowSubscriber, waiting, s.prefix, s.limits.Events, s.bytes, s.limits.Bytes)
	}
	if len(s.backlog) == 0 && !s.sending {
		select {
		case s.ch <- ev:
			s.delivered.Store(ev.Seq)
			return nil
		default:
		}
	}
	s.backlog = append(s.backlog, ev)
	s.bytes += size
	s.wake.Signal()
	return nil
}

// pump feeds the backlog to C, in order, until the subscription ends. It
// is the only goroutine that blocks on the subscriber.
func (s *Subscription) pump() {
	for {
		s.mu.Lock()
		for len(s.backlog) == 0 && s.err == nil {
			s.wake.Wait()
		}
		if s.err != nil {
			s.mu.Unlock()
			return
		}
		ev := s.backlog[0]
		s.backlog[0] = Event{}
		s.backlog = s.backlog[1:]
		s.bytes -= eventSize(ev)
		s.sending, s.sendingSeq = true, ev.Seq
		s.mu.Unlock()
		select {
		case s.ch <- ev:
			s.delivered.Store(ev.Seq)
		case <-s.done:
			return
		}
		s.mu.Lock()
		s.sending = false
		s.mu.Unlock()
	}
}

// Subscribe delivers every later event whose key starts with prefix, in
// the order the replica applied them, on a channel of the given buffer.
// Hooks are not replayed on restart: a subscriber builds its initial state
// from List (or Scan) and then follows events. A subscriber that falls
// more than SubscriberLimits behind is ended with ErrSlowSubscriber (see
// Err); it never delays other subscribers. Subscribe before reading the
// state, so that no change falls between the two.
func (r *Replica) Subscribe(prefix string, buffer int) *Subscription {
	if buffer <= 0 {
		buffer = 64
	}
	s := &Subscription{r: r, prefix: prefix, ch: make(chan Event, buffer), done: make(chan struct{}), limits: r.delivery.subscriberLimits()}
	s.wake = sync.NewCond(&s.mu)
	r.subMu.Lock()
	// The teardown cancels ctx before it ends the subscriptions it holds
	// (under subMu): one added after that would never be ended.
	closed := r.ctx.Err() != nil
	if !closed {
		r.subs[s] = struct{}{}
	}
	r.subMu.Unlock()
	if closed {
		s.closeDone()
		return s
	}
	go s.pump()
	return s
}

// putHook runs under go-ds-crdt's merge lock, before the batch holding
// the value commits: only enqueue, with the batch barrier.
func (r *Replica) putHook(k ds.Key, v []byte) {
	r.folds.counted(v)
	r.queue.push(rawEvent{typ: EventPut, key: k.String(), value: append([]byte(nil), v...), barrier: r.delivery.commits.newest()})
}

// deleteHook runs under go-ds-crdt's merge lock, after its batch
// committed: only note the key and enqueue. Shoal deletes by writing
// signed tombstones, so this fires only for go-ds-crdt's own, unsigned
// tombstones, which admission ignores (deletes.go).
func (r *Replica) deleteHook(k ds.Key) {
	r.rawDel.add(k.String())
	r.queue.push(rawEvent{typ: EventDelete, key: k.String(), unsigned: true})
}

// vanished reports a key that a rebuild of the state no longer holds (no
// hook fires for it).
func (r *Replica) vanished(key string) {
	r.queue.push(rawEvent{typ: EventDelete, key: key})
}

// dispatch turns raw hook calls into Events. A delete hook (an unsigned
// tombstone) leaves what admission shows as it was, and a put hook may
// carry a tombstone or a refused value: the dispatcher admits what the key
// holds once the batch has landed and reports what the state really is.
func (r *Replica) dispatch() {
	defer r.wg.Done()
	for {
		raw, ok := r.queue.pop()
		if !ok {
			return
		}
		if raw.typ == EventPut {
			// Until its write has landed: see commitTracker. Later events
			// wait behind it, so order is kept.
			abandoned, ok := r.delivery.commits.await(r.ctx, raw.barrier)
			if !ok {
				return
			}
			if abandoned > 0 {
				r.log.Warn("datastore batches open too long, taken as abandoned: events no longer wait for them", "batches", abandoned, "after", abandonBatchAfter)
			}
		}
		stored, readErr := r.observeState(raw)
		ev := Event{Type: raw.typ, Key: raw.key, Seq: raw.seq}
		switch raw.typ {
		case EventPut:
			rec, val, err := r.admitted(r.ctx, raw.key, raw.value)
			if err != nil && !errors.Is(err, ErrNotFound) {
				r.log.Warn("record not admitted", "key", raw.key, "err", err)
				r.dispatched.Store(raw.seq)
				continue
			}
			if mayBeFold(raw.value) && r.foldChangesNothing(raw, val, err) {
				r.dispatched.Store(raw.seq)
				continue
			}
			if err != nil {
				// A tombstone, or refused (admit counted why) with
				// nothing else under the key admitted: Get now answers
				// not found, so subscribers drop what they held under
				// the key.
				ev.Type = EventDelete
				r.count(func(c *Counters) { c.Deletes++ })
				break
			}
			r.clock.Observe(rec.HLC, r.cfg.MaxClockSkew)
			// val is the admitted record's bytes: raw.value's, or those of
			// the record that stays when raw.value is a replay.
			ev.Record, ev.Value = rec, val
			r.count(func(c *Counters) { c.Puts++ })
		case EventDelete:
			if raw.unsigned {
				// Counted; it changes nothing admission shows (signed
				// deletes arrive as puts of tombstones).
				r.refuse(raw.key, nil, errUnsignedDelete)
			}
			var rec Record
			var b []byte
			err := readErr
			if errors.Is(err, ErrNotFound) {
				stored, err = nil, nil // every element tombstoned: admission reads them
			}
			if err == nil {
				rec, b, err = r.admitted(r.ctx, raw.key, stored)
			}
			if err == nil {
				// Still the same change, so the same Seq: Delivered and
				// Dispatched must not fall back to zero (rag's CaughtUp
				// compares them with EventSeq).
				ev.Type, ev.Record, ev.Value = EventPut, rec, b
				r.count(func(c *Counters) { c.Puts++ })
			} else {
				r.count(func(c *Counters) { c.Deletes++ })
			}
		}
		r.deliver(ev)
	}
}

// foldChangesNothing reports whether the fold record a put carries leaves
// what the key shows as it was: what admission shows now (val, or
// nothing when err) equals what it shows without that fold's element.
// A fold carries what its writer already showed, so on a peer that
// showed it too subscribers hear nothing of it (a cache flush applied
// again, a document indexed again, on every fold); a peer that lacked
// the record — it joined after the history was pruned — hears a put.
func (r *Replica) foldChangesNothing(raw rawEvent, val []byte, err error) bool {
	els, lerr := r.elements(r.ctx, raw.key)
	if lerr != nil {
		return false
	}
	before, beforeVal, found, rerr := r.resolve(r.ctx, raw.key, els, raw.value)
	switch {
	case rerr != nil:
		return false
	case err != nil:
		return !found || before.Deleted()
	default:
		return found && bytes.Equal(beforeVal, val)
	}
}

// deliver offers ev to every subscription under whose prefix it falls,
// ending those that have fallen too far behind, then counts it as
// dispatched. It never waits for a subscriber.
func (r *Replica) deliver(ev Event) {
	r.subMu.Lock()
	var targets []*Subscription
	for s := range r.subs {
		if strings.HasPrefix(ev.Key, s.prefix) {
			targets = append(targets, s)
		}
	}
	r.subMu.Unlock()
	for _, s := range targets {
		if err := s.offer(ev); err != nil {
			r.endSlow(s, err)
		}
	}
	r.dispatched.Store(ev.Seq)
}

// endSlow ends a subscription that fell behind: counted, logged, and its
// subscriber told through Err.
func (r *Replica) endSlow(s *Subscription, err error) {
	r.subMu.Lock()
	delete(r.subs, s)
	r.subMu.Unlock()
	s.end(err)
	r.count(func(c *Counters) { c.SlowSubscribers++ })
	r.log.Warn("subscriber fell behind: subscription ended; it must read the state again", "prefix", s.prefix, "err", err)
}

// EventSeq is the number of state changes queued so far: every change
// a caller has observed (a local write, a WaitFor that returned) has a Seq
// at most this.
func (r *Replica) EventSeq() uint64 {
	r.queue.mu.Lock()
	defer r.queue.mu.Unlock()
	return r.queue.seq
}

// Dispatched is the Seq of the last event the dispatcher has finished
// with: offered to every subscription it concerned (each has sent it on
// its channel or holds it in its backlog), or dropped as undecodable. A
// subscriber's own progress is Subscription.Dispatched.
func (r *Replica) Dispatched() uint64 { return r.dispatched.Load() }
