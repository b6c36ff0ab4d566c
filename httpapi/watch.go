package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/crdt/models"
)

// keepaliveEvery is how often an idle watch stream sends a comment line,
// so proxies and clients see the connection alive.
const keepaliveEvery = 15 * time.Second

// handleWatch streams a model's effective current version and the version
// this peer serves as Server-Sent Events: GET /v1/models/{model}/watch.
//
// The first event is the state at connect (a model nobody published yet
// is watchable: its event has empty versions); after that an event goes
// out each time the current or the serving version differs from the last
// event sent. Models.Watch says when to read again; its signals coalesce,
// and the handler reads after each one, so the stream may skip
// intermediate states but always ends up at the latest.
//
// The consistency demands (Shoal-After, Shoal-Max-Staleness, Shoal-Timeout)
// apply to the connect, and a failure then is an ordinary JSON error
// answer; a read that fails later ends the stream with an `event: error`
// whose data is the same JSON error body.
func (a *API) handleWatch(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("model")
	if err := models.CheckName("model", name); err != nil {
		writeError(w, err)
		return
	}
	// Watch before the first read: a change between the read and the
	// registration would be missed.
	changed, stop := a.cfg.Models.Watch()
	defer stop()

	ctx, cancel, err := a.consistent(w, r)
	if err != nil {
		writeError(w, err)
		return
	}
	ev, err := a.watchRead(ctx, name)
	cancel()
	if err != nil {
		writeError(w, err)
		return
	}

	// The stream outlives the server's write timeout, a deadline set on
	// the connection when the request was read: a write past it fails.
	// (Its read timeout needs nothing: once the request is read, net/http
	// clears the read deadline for its background read.)
	rc := http.NewResponseController(w)
	rc.SetWriteDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)

	id := 0
	send := func(event string, data any) error {
		b, err := json.Marshal(data) // one line: SSE data may not hold a newline
		if err != nil {
			return err
		}
		id++
		if _, err := fmt.Fprintf(w, "event: %s\nid: %d\ndata: %s\n\n", event, id, b); err != nil {
			return err
		}
		return rc.Flush()
	}
	if send("model", ev) != nil {
		return
	}
	last := ev
	keepalive := time.NewTicker(a.keepalive)
	defer keepalive.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-a.streamsEnd:
			return
		case <-keepalive.C:
			if _, err := io.WriteString(w, ": keepalive\n\n"); err != nil || rc.Flush() != nil {
				return
			}
		case <-changed:
			rctx, cancel := context.WithTimeout(r.Context(), api.DefaultWait)
			ev, err := a.watchRead(rctx, name)
			cancel()
			if err != nil {
				if r.Context().Err() == nil {
					body, _ := bodyOf(err)
					send("error", body)
				}
				return
			}
			if ev.Current == last.Current && ev.Serving == last.Serving {
				continue
			}
			if send("model", ev) != nil {
				return
			}
			last = ev
		}
	}
}

// watchRead is one event of a watch: the model's state now. A model not
// published yet reads as one with no versions.
func (a *API) watchRead(ctx context.Context, name string) (api.ModelWatchEvent, error) {
	ev := api.ModelWatchEvent{Model: name}
	cur, serving, err := a.cfg.Models.CurrentServing(ctx, name)
	switch {
	case errors.Is(err, models.ErrUnknownModel):
	case err != nil:
		return ev, err
	default:
		if cur != nil {
			ev.Current, ev.CurrentHLC = cur.Version, cur.HLC.String()
		}
		ev.Serving = serving
	}
	if a.cfg.Consistency != nil {
		ev.StalenessSeconds = a.cfg.Consistency.Staleness().Seconds
	}
	return ev, nil
}

// EndStreams ends every open watch stream, and any opened later after its
// first event: http.Server.Shutdown waits for requests to finish, and a
// stream never does on its own. The peer registers it with the server's
// RegisterOnShutdown. It may be called more than once.
func (a *API) EndStreams() {
	a.endStreams.Do(func() { close(a.streamsEnd) })
}
