package inference

import (
	"errors"
	"sort"
	"sync"
	"time"
)

// ErrNotLoaded means no session for the model (or that version) is loaded
// on this peer.
var ErrNotLoaded = errors.New("model version not loaded")

// Pool holds the loaded sessions of one peer: per model the current one,
// which unpinned requests get, and a few others for requests pinned to an
// older or newer version. Swapping the current session is atomic for
// callers: a request holds the session it acquired until it releases it,
// new requests get the new one, and the old one closes once drained.
type Pool struct {
	// MaxOthers bounds the non-current sessions kept per model (least
	// recently used go first). Default 2.
	MaxOthers int

	mu      sync.Mutex
	current map[string]*Session
	others  map[string]map[string]*other
	closed  bool // sessions arriving after Close are retired at once
}

type other struct {
	s    *Session
	used time.Time
}

// NewPool returns an empty pool.
func NewPool() *Pool {
	return &Pool{MaxOthers: 2, current: map[string]*Session{}, others: map[string]map[string]*other{}}
}

// Acquire returns the session for model@version (version "" means the
// current one), acquired for one request: call Release when done.
func (p *Pool) Acquire(model, version string) (*Session, error) {
	for {
		p.mu.Lock()
		var s *Session
		if cur := p.current[model]; cur != nil && (version == "" || cur.Version == version) {
			s = cur
		} else if o := p.others[model][version]; version != "" && o != nil {
			o.used = time.Now()
			s = o.s
		}
		p.mu.Unlock()
		if s == nil {
			return nil, ErrNotLoaded
		}
		if s.Acquire() {
			return s, nil
		}
		// Retired between the lookup and the acquire: a swap happened,
		// look again. A retired session still registered (which no path
		// should leave) is dropped rather than spun on.
		p.mu.Lock()
		if p.current[model] == s {
			delete(p.current, model)
		}
		if o := p.others[model][s.Version]; o != nil && o.s == s {
			delete(p.others[model], s.Version)
		}
		p.mu.Unlock()
	}
}

// Current returns the current session's ref for model.
func (p *Pool) Current(model string) (Ref, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.current[model]
	if s == nil {
		return Ref{}, false
	}
	return s.Ref, true
}

// Has reports whether model@version is loaded.
func (p *Pool) Has(model, version string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if cur := p.current[model]; cur != nil && cur.Version == version {
		return true
	}
	return p.others[model][version] != nil
}

// Swap makes s the current session of its model and returns the previous
// one, already retired (it closes when its in-flight requests finish; wait
// on its Drained channel to know when).
func (p *Pool) Swap(s *Session) *Session {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		s.Retire()
		return nil
	}
	old := p.current[s.Model]
	p.current[s.Model] = s
	var dup *Session
	if o := p.others[s.Model][s.Version]; o != nil && o.s != s {
		dup = o.s
	}
	delete(p.others[s.Model], s.Version)
	p.mu.Unlock()
	if dup != nil {
		dup.Retire()
	}
	if old != nil && old != s {
		old.Retire()
		return old
	}
	return nil
}

// Promote makes the loaded, non-current model@version the current session
// (a rollback to a version still loaded for pinned requests). It reports
// false when that version is not loaded.
func (p *Pool) Promote(model, version string) bool {
	p.mu.Lock()
	o := p.others[model][version]
	if o == nil {
		p.mu.Unlock()
		return false
	}
	delete(p.others[model], version)
	old := p.current[model]
	p.current[model] = o.s
	p.mu.Unlock()
	if old != nil {
		old.Retire()
	}
	return true
}

// Add keeps s for requests pinned to its version, unless that version is
// already loaded (then s is closed and the loaded one kept). It returns
// the session that serves the version.
func (p *Pool) Add(s *Session) *Session {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		s.Retire()
		return s
	}
	if cur := p.current[s.Model]; cur != nil && cur.Version == s.Version {
		p.mu.Unlock()
		if cur != s { // the same session may reach Add and Swap (a shared load)
			s.Retire()
		}
		return cur
	}
	m := p.others[s.Model]
	if m == nil {
		m = map[string]*other{}
		p.others[s.Model] = m
	}
	if o := m[s.Version]; o != nil {
		p.mu.Unlock()
		if o.s != s {
			s.Retire()
		}
		return o.s
	}
	m[s.Version] = &other{s: s, used: time.Now()}
	var evict []*Session
	limit := p.MaxOthers
	if limit <= 0 {
		limit = 2
	}
	for len(m) > limit {
		var oldest string
		for v, o := range m {
			if oldest == "" || o.used.Before(m[oldest].used) {
				oldest = v
			}
		}
		evict = append(evict, m[oldest].s)
		delete(m, oldest)
	}
	p.mu.Unlock()
	for _, e := range evict {
		e.Retire()
	}
	return s
}

// Drop retires model@version wherever it is held. Dropping the current
// version leaves the model without a current session.
func (p *Pool) Drop(model, version string) {
	p.mu.Lock()
	var drop []*Session
	if cur := p.current[model]; cur != nil && cur.Version == version {
		drop = append(drop, cur)
		delete(p.current, model)
	}
	if o := p.others[model][version]; o != nil {
		drop = append(drop, o.s)
		delete(p.others[model], version)
	}
	p.mu.Unlock()
	for _, s := range drop {
		s.Retire()
	}
}

// Loaded lists every loaded session, current ones flagged.
func (p *Pool) Loaded() []LoadedSession {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []LoadedSession
	for _, s := range p.current {
		out = append(out, LoadedSession{Ref: s.Ref, Current: true, Device: s.device})
	}
	for _, m := range p.others {
		for _, o := range m {
			out = append(out, LoadedSession{Ref: o.s.Ref, Device: o.s.device})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Model != out[j].Model {
			return out[i].Model < out[j].Model
		}
		return out[i].Version < out[j].Version
	})
	return out
}

// LoadedSession describes one loaded session.
type LoadedSession struct {
	Ref
	Current bool   `json:"current"`
	Device  string `json:"device"`
}

// Closed reports whether Close was called.
func (p *Pool) Closed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// Close retires every session and waits for them to drain.
func (p *Pool) Close() {
	p.mu.Lock()
	var all []*Session
	for _, s := range p.current {
		all = append(all, s)
	}
	for _, m := range p.others {
		for _, o := range m {
			all = append(all, o.s)
		}
	}
	p.current = map[string]*Session{}
	p.others = map[string]map[string]*other{}
	p.closed = true
	p.mu.Unlock()
	for _, s := range all {
		s.Retire()
		<-s.Drained()
	}
}
