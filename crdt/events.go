package crdt

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"

	ds "github.com/ipfs/go-datastore"
)

// rawEvent is what a hook enqueues: nothing is decoded or read under the
// CRDT's merge lock.
type rawEvent struct {
	typ   EventType
	key   string
	value []byte
	seq   uint64
}

// eventQueue is an unbounded FIFO between the CRDT hooks (which must never
// block) and the dispatcher goroutine.
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
	once   sync.Once
	// delivered is the Seq of the last event sent on ch.
	delivered atomic.Uint64
}

// Delivered is the Seq of the last event this subscription was sent.
func (s *Subscription) Delivered() uint64 { return s.delivered.Load() }

// C returns the channel events arrive on. It is never closed: select on
// Done (or your own context) as well.
func (s *Subscription) C() <-chan Event { return s.ch }

// Done is closed when the subscription or the replica closes.
func (s *Subscription) Done() <-chan struct{} { return s.done }

// Close ends the subscription.
func (s *Subscription) Close() {
	s.r.subMu.Lock()
	delete(s.r.subs, s)
	s.r.subMu.Unlock()
	s.closeDone()
}

func (s *Subscription) closeDone() { s.once.Do(func() { close(s.done) }) }

// Subscribe delivers every later event whose key starts with prefix, in
// the order the replica applied them. Hooks are not replayed on restart:
// a subscriber builds its initial state from List and then follows events.
// A subscriber that stops reading stalls delivery to all subscribers (the
// queue in front of them grows), so subscribers hand work off quickly.
func (r *Replica) Subscribe(prefix string, buffer int) *Subscription {
	if buffer <= 0 {
		buffer = 64
	}
	s := &Subscription{r: r, prefix: prefix, ch: make(chan Event, buffer), done: make(chan struct{})}
	r.subMu.Lock()
	r.subs[s] = struct{}{}
	r.subMu.Unlock()
	return s
}

// putHook runs under go-ds-crdt's merge lock: only enqueue.
func (r *Replica) putHook(k ds.Key, v []byte) {
	r.queue.push(rawEvent{typ: EventPut, key: k.String(), value: append([]byte(nil), v...)})
}

// deleteHook runs under go-ds-crdt's merge lock: only enqueue.
func (r *Replica) deleteHook(k ds.Key) {
	r.queue.push(rawEvent{typ: EventDelete, key: k.String()})
}

// dispatch turns raw hook calls into Events. A delete hook may fire while
// the key still holds a value (a concurrent re-add, or a delete that
// uncovered an older surviving value, for which no put hook fires): the
// dispatcher reads the key back once the batch has landed and reports what
// the state really is.
func (r *Replica) dispatch() {
	defer r.wg.Done()
	for {
		raw, ok := r.queue.pop()
		if !ok {
			return
		}
		r.observeState(raw)
		ev := Event{Type: raw.typ, Key: raw.key, Seq: raw.seq}
		switch raw.typ {
		case EventPut:
			rec, val, err := r.admitted(r.ctx, raw.key, raw.value)
			if err != nil && !errors.Is(err, ErrNotFound) {
				r.log.Warn("record not admitted", "key", raw.key, "err", err)
				r.dispatched.Store(raw.seq)
				continue
			}
			if err != nil {
				// Refused (admit counted why) and nothing else under the
				// key is admitted: Get now answers not found, so
				// subscribers drop what they held under the key.
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
			if b, rec, err := r.getRecord(r.ctx, raw.key); err == nil {
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

// getRecord reads key back: its bytes and their record.
func (r *Replica) getRecord(ctx context.Context, key string) ([]byte, Record, error) {
	b, err := r.getRaw(ctx, key)
	if err != nil {
		return nil, Record{}, err
	}
	rec, val, err := r.admitted(ctx, key, b)
	return val, rec, err
}

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
		select {
		case s.ch <- ev:
			s.delivered.Store(ev.Seq)
		case <-s.done:
		case <-r.ctx.Done():
			return
		}
	}
	r.dispatched.Store(ev.Seq)
}

// EventSeq is the number of state changes queued so far: every change
// a caller has observed (a local write, a WaitFor that returned) has a Seq
// at most this.
func (r *Replica) EventSeq() uint64 {
	r.queue.mu.Lock()
	defer r.queue.mu.Unlock()
	return r.queue.seq
}

// Dispatched is the Seq of the last event handed to every subscriber it
// concerned (or skipped by all).
func (r *Replica) Dispatched() uint64 { return r.dispatched.Load() }
