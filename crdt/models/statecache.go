package models

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/internal/memo"
)

// stateCache memoises the effective state of each model (and of all of
// them) between changes to the replicated state. Evaluating a model reads
// every record it ever had (each publication and activation stays a key),
// verifies each record's and each manifest's signature and decodes them:
// an activation made every subscriber evaluate its model about six times
// (the registry's diff, the lifecycle's activation and commit, its GC, the
// API and watch streams), and a CPU profile of a peer process showed
// those evaluations as 40 % of its time with 70 versions of one model.
//
// An entry is valid while the replica has queued no state change since it
// was read (crdt.Replica.EventSeq unchanged), the trust set is unchanged
// (SetTrusted bumps gen) and it is younger than maxStateAge. An entry is
// only stored when every queued change had been dispatched before the
// read began (Dispatched == EventSeq): a put is queued under go-ds-crdt's
// merge lock before its batch commits, so a read racing it could see the
// old value under the new sequence number and keep it. Local writes queue
// their change inside Put, so a read after a write (read-your-writes on
// this peer) never sees an entry from before it. Run also stores the
// state it evaluates from its mirror of the records after a change, when
// nothing has been queued since that change (fill): every change up to it
// is then in the mirror, committed or not.
//
// maxStateAge bounds the rules that depend on the clock rather than on
// the state (an activation stamped ahead of this peer's clock counts once
// the clock passes it, and admission's future-dated bound); the
// registry's periodic re-evaluation reads around the cache anyway.
type stateCache struct {
	mu     sync.Mutex
	gen    uint64
	models map[string]cachedState
	all    *cachedAll
	hits   uint64
	misses uint64
}

const maxStateAge = time.Second

type cacheTag struct {
	seq, gen uint64
	at       time.Time
}

type cachedState struct {
	tag cacheTag
	st  ModelState
	err error
}

type cachedAll struct {
	tag cacheTag
	all []ModelState
}

// cacheTag returns the tag a read starting now would carry, and whether its
// result may be stored.
func (g *Registry) cacheTag() (cacheTag, bool) {
	g.cache.mu.Lock()
	gen := g.cache.gen
	g.cache.mu.Unlock()
	seq := g.r.EventSeq()
	return cacheTag{seq: seq, gen: gen, at: time.Now()}, g.r.Dispatched() == seq
}

// valid reports whether an entry read with tag t may still be served;
// g.cache.mu is held.
func (g *Registry) valid(t cacheTag) bool {
	return t.gen == g.cache.gen && t.seq == g.r.EventSeq() && time.Since(t.at) < maxStateAge
}

// generation returns the trust set's generation.
func (c *stateCache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

// fill stores a model's state, read or evaluated from Run's mirror, under
// tag, unless the trust set changed since (an entry of an older generation
// would never be valid).
func (c *stateCache) fill(model string, tag cacheTag, st ModelState, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if tag.gen != c.gen {
		return
	}
	if c.models == nil {
		c.models = map[string]cachedState{}
	}
	c.models[model] = cachedState{tag: tag, st: cloneState(st), err: err}
}

// invalidate drops every entry (the trust set changed).
func (c *stateCache) invalidate() {
	c.mu.Lock()
	c.gen++
	c.models = nil
	c.all = nil
	c.mu.Unlock()
}

// cachedState returns State's answer for model from the cache or read.
func (g *Registry) cachedState(ctx context.Context, model string, read func(context.Context) (ModelState, error)) (ModelState, error) {
	c := &g.cache
	c.mu.Lock()
	if e, ok := c.models[model]; ok && g.valid(e.tag) {
		c.hits++
		c.mu.Unlock()
		return cloneState(e.st), e.err
	}
	c.misses++
	c.mu.Unlock()
	tag, storable := g.cacheTag()
	st, err := read(ctx)
	if storable && (err == nil || !isTransient(err)) {
		c.fill(model, tag, st, err)
	}
	return st, err
}

// cachedModels is cachedState for Models.
func (g *Registry) cachedModels(ctx context.Context, read func(context.Context) ([]ModelState, error)) ([]ModelState, error) {
	c := &g.cache
	c.mu.Lock()
	if e := c.all; e != nil && g.valid(e.tag) {
		c.hits++
		out := cloneStates(e.all)
		c.mu.Unlock()
		return out, nil
	}
	c.misses++
	c.mu.Unlock()
	tag, storable := g.cacheTag()
	all, err := read(ctx)
	if err == nil && storable {
		c.mu.Lock()
		c.all = &cachedAll{tag: tag, all: cloneStates(all)}
		c.mu.Unlock()
	}
	return all, err
}

// isTransient reports errors worth reading again rather than
// remembering: anything but the model not existing.
func isTransient(err error) bool {
	return !errors.Is(err, ErrUnknownModel)
}

// cloneState copies what a caller could modify: the slices and Current.
func cloneState(st ModelState) ModelState {
	if st.Current != nil {
		a := *st.Current
		st.Current = &a
	}
	st.Activations = slices.Clone(st.Activations)
	st.Versions = slices.Clone(st.Versions)
	for i := range st.Versions {
		st.Versions[i].Conflicts = slices.Clone(st.Versions[i].Conflicts)
	}
	return st
}

func cloneStates(all []ModelState) []ModelState {
	out := make([]ModelState, len(all))
	for i, st := range all {
		out[i] = cloneState(st)
	}
	return out
}

// checkedBodies remembers the publications and activations that decoded,
// matched their key and verified, by key, kind and body, so evaluating a
// model after a change decodes and checks only its new records (a JSON
// decode and a canonical re-encoding each, even with package sign
// memoising the signature). Trust and clock rules are not remembered:
// they are applied on every evaluation. Bounded: cleared when full.
type checkedBodies struct{ m *memo.Map[any] } // Manifest or Activation

const maxCheckedBodies = 1 << 16

func newCheckedBodies() checkedBodies { return checkedBodies{memo.New[any](maxCheckedBodies, 0)} }

// get fills *v (a *Manifest or *Activation) from a remembered body.
func (c checkedBodies) get(e crdt.Entry, v any) bool {
	got, ok := c.m.Get(e.Key, e.Record.Kind, e.Record.Body)
	if !ok {
		return false
	}
	switch v := v.(type) {
	case *Manifest:
		m, ok := got.(Manifest)
		*v = m
		return ok
	case *Activation:
		a, ok := got.(Activation)
		*v = a
		return ok
	}
	return false
}

func (c checkedBodies) put(e crdt.Entry, v any) {
	c.m.Put(e.Key, e.Record.Kind, e.Record.Body, v, 0)
}
