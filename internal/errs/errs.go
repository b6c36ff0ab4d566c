// Package errs holds the one error helper Shoal's domain packages share:
// marking an error with a sentinel without changing its message, so the
// API's catalogue (httpapi) can map it to a stable code while the person
// reading it still sees the library's own words. It imports only the
// standard library.
package errs

// Mark returns err with its message unchanged that also matches sentinel
// under errors.Is (and still matches everything err matched). Mark of a
// nil err is nil.
func Mark(sentinel, err error) error {
	if err == nil {
		return nil
	}
	return marked{sentinel: sentinel, err: err}
}

type marked struct{ sentinel, err error }

func (m marked) Error() string   { return m.err.Error() }
func (m marked) Unwrap() []error { return []error{m.sentinel, m.err} }
