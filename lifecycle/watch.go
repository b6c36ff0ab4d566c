package lifecycle

// The watch hub: whoever shows a model's state as it changes (the API's
// GET /v1/models/{m}/watch) learns that something changed without polling.
//
// A signal carries no data: it says "read again". A watcher's channel
// holds one signal, and a signal sent while one is pending is dropped, so
// a burst of changes coalesces into one wake-up. That loses nothing a
// watcher needs: every signal is sent after the change it announces is
// readable (the registry's state when a Change arrives, l.serving after
// commit unlocks), and a watcher reads the state after it takes the
// signal, so the read that follows the last signal sees the last state. A
// slow watcher can miss intermediate states, never the latest one.
//
// Lock order: watchMu is a leaf. notify takes it alone and only does
// non-blocking sends under it, so a watcher that never reads its channel
// cannot stall the lifecycle. notify is called without l.mu held (commit
// signals after it unlocks); were it called under l.mu it would still be
// safe, since nothing takes l.mu while holding watchMu, but a signal sent
// under l.mu could wake a reader that then waits for l.mu (Serving) —
// signalling after the unlock spares it that.

// Watch registers a watcher: changed receives a signal (coalesced; see
// above) whenever something a model's description shows may have changed
// here — the registry announced a change (a version published, a current
// version changed), or this peer switched the version it serves. The
// channel is never closed. stop removes the watcher; it may be called
// more than once, and after it no more signals are sent.
func (l *Manager) Watch() (changed <-chan struct{}, stop func()) {
	ch := make(chan struct{}, 1)
	l.watchMu.Lock()
	l.watchers[ch] = struct{}{}
	l.watchMu.Unlock()
	return ch, func() {
		l.watchMu.Lock()
		delete(l.watchers, ch)
		l.watchMu.Unlock()
	}
}

// notify signals every watcher without blocking: a watcher with a signal
// pending already will read the state anyway.
func (l *Manager) notify() {
	l.watchMu.Lock()
	defer l.watchMu.Unlock()
	for ch := range l.watchers {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// watching is how many watchers are registered (tests).
func (l *Manager) watching() int {
	l.watchMu.Lock()
	defer l.watchMu.Unlock()
	return len(l.watchers)
}
