package httpapi

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/crdt"
)

// parseSeconds reads "2s", "1500ms" or a bare number of seconds.
func parseSeconds(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return d, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || !(f >= 0) || math.IsInf(f, 1) {
		return 0, fmt.Errorf("%q is not a duration (e.g. 2s, 500ms)", s)
	}
	if ns := f * float64(time.Second); ns < math.MaxInt64 {
		return time.Duration(ns), nil
	}
	// Past what a Duration holds: the longest, not a negative overflow.
	return math.MaxInt64, nil
}

// consistent applies the caller's consistency demands to a read: it bounds
// the request by Shoal-Timeout, waits for a Shoal-After token's heads, and
// checks Shoal-Max-Staleness (refusing, or flagging under
// Shoal-Staleness-Policy: flag). It returns the context the read must use;
// on error the context is already cancelled.
func (a *API) consistent(w http.ResponseWriter, r *http.Request) (context.Context, context.CancelFunc, error) {
	return Demands(r.Context(), a.cfg.Consistency, r.Header.Get, w.Header().Set)
}

// Demands is consistent for any API edge: get reads a demand by its
// header name (api.HeaderAfter, …; gRPC metadata lower-cases them) and
// set answers Shoal-Staleness and Shoal-Stale. The gRPC API applies the
// same demands through it, so both edges refuse, wait and flag alike.
func Demands(parent context.Context, c Consistency, get func(string) string, set func(k, v string)) (context.Context, context.CancelFunc, error) {
	wait := api.DefaultWait
	if v := get(api.HeaderTimeout); v != "" {
		d, err := parseSeconds(v)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %s: %v", errBadHeader, api.HeaderTimeout, err)
		}
		wait = min(d, api.MaxWait)
	}
	ctx, cancel := context.WithTimeout(parent, wait)
	if err := checkConsistency(ctx, c, get, set, wait); err != nil {
		cancel()
		return nil, nil, err
	}
	return ctx, cancel, nil
}

func checkConsistency(ctx context.Context, c Consistency, get func(string) string, set func(k, v string), wait time.Duration) error {
	if tok := get(api.HeaderAfter); tok != "" {
		_, heads, err := crdt.ParseToken(tok)
		if err != nil {
			return fmt.Errorf("%s: %w", api.HeaderAfter, err)
		}
		if err := c.WaitFor(ctx, heads); err != nil {
			return fmt.Errorf("%w: this peer has not caught up with the write yet (waited %s): %v", crdt.ErrNotCaughtUp, wait, err)
		}
	}
	stale := c.Staleness()
	set(api.HeaderStaleness, FormatStaleness(stale))
	v := get(api.HeaderMaxStaleness)
	if v == "" {
		return nil
	}
	maxStale, err := parseSeconds(v)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", errBadHeader, api.HeaderMaxStaleness, err)
	}
	if stale.Duration() <= maxStale {
		return nil
	}
	if strings.EqualFold(get(api.HeaderStalenessPolicy), "flag") {
		set(api.HeaderStale, "true")
		return nil
	}
	return &stalenessError{msg: fmt.Sprintf("staleness %.3fs exceeds the requested bound %s", stale.Seconds, maxStale),
		staleness: stale.Seconds, maxStale: maxStale.Seconds()}
}
