package peer

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/shoal-mesh/shoal/crdt"
)

// Headers of the consistency promises (design §2; docs/consistency.md).
const (
	// HeaderMaxStaleness: the largest staleness the caller accepts ("2s").
	HeaderMaxStaleness = "Shoal-Max-Staleness"
	// HeaderStalenessPolicy: "flag" serves a request that breaks the bound
	// and marks it with HeaderStale instead of refusing it.
	HeaderStalenessPolicy = "Shoal-Staleness-Policy"
	// HeaderStale is "true" on a response served beyond the asked bound.
	HeaderStale = "Shoal-Stale"
	// HeaderAfter carries a read-your-writes token from an earlier write.
	HeaderAfter = "Shoal-After"
	// HeaderToken carries the read-your-writes token of a write's response.
	HeaderToken = "Shoal-Token"
	// HeaderModelVersion names the model version that answered.
	HeaderModelVersion = "Shoal-Model-Version"
	// HeaderTimeout bounds how long a request may wait (for a token's
	// heads, or for an artifact to arrive). Default 10s, at most 2m.
	HeaderTimeout = "Shoal-Timeout"
)

const (
	defaultWait = 10 * time.Second
	maxWait     = 2 * time.Minute
)

// parseSeconds reads "2s", "1500ms" or a bare number of seconds.
func parseSeconds(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return d, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 {
		return 0, fmt.Errorf("%q is not a duration (e.g. 2s, 500ms)", s)
	}
	return time.Duration(f * float64(time.Second)), nil
}

// apiError is an error with an HTTP status and optional extra JSON fields.
type apiError struct {
	code  int
	msg   string
	extra map[string]any
	retry time.Duration
}

func (e *apiError) Error() string { return e.msg }

func writeAPIError(w http.ResponseWriter, err error) {
	var ae *apiError
	if !errors.As(err, &ae) {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	if ae.retry > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(ae.retry.Seconds()+0.999)))
	}
	body := map[string]any{"error": ae.msg}
	for k, v := range ae.extra {
		body[k] = v
	}
	writeJSON(w, ae.code, body)
}

// consistent applies the caller's consistency demands to a read: it bounds
// the request by Shoal-Timeout, waits for a Shoal-After token's heads, and
// checks Shoal-Max-Staleness. It returns the context the read must use.
func (n *Node) consistent(w http.ResponseWriter, r *http.Request) (context.Context, context.CancelFunc, error) {
	wait := defaultWait
	if v := r.Header.Get(HeaderTimeout); v != "" {
		d, err := parseSeconds(v)
		if err != nil {
			return nil, nil, &apiError{code: http.StatusBadRequest, msg: HeaderTimeout + ": " + err.Error()}
		}
		wait = min(d, maxWait)
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	if tok := r.Header.Get(HeaderAfter); tok != "" {
		_, heads, err := crdt.ParseToken(tok)
		if err != nil {
			cancel()
			return nil, nil, &apiError{code: http.StatusBadRequest, msg: HeaderAfter + ": " + err.Error()}
		}
		if err := n.replica.WaitFor(ctx, heads); err != nil {
			cancel()
			return nil, nil, &apiError{code: http.StatusServiceUnavailable, retry: time.Second,
				msg: fmt.Sprintf("this peer has not caught up with the write yet (waited %s): %v", wait, err)}
		}
	}
	stale := n.replica.Staleness()
	w.Header().Set(HeaderStaleness, FormatStaleness(stale))
	if v := r.Header.Get(HeaderMaxStaleness); v != "" {
		maxStale, err := parseSeconds(v)
		if err != nil {
			cancel()
			return nil, nil, &apiError{code: http.StatusBadRequest, msg: HeaderMaxStaleness + ": " + err.Error()}
		}
		if stale.Duration() > maxStale {
			if strings.EqualFold(r.Header.Get(HeaderStalenessPolicy), "flag") {
				w.Header().Set(HeaderStale, "true")
			} else {
				cancel()
				return nil, nil, &apiError{code: http.StatusServiceUnavailable, retry: time.Second,
					msg:   fmt.Sprintf("staleness %.3fs exceeds the requested bound %s", stale.Seconds, maxStale),
					extra: map[string]any{"staleness_seconds": stale.Seconds, "max_staleness_seconds": maxStale.Seconds()}}
			}
		}
	}
	return ctx, cancel, nil
}
