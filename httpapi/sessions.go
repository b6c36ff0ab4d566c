package httpapi

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/sessions"
)

// routesSessions are the conversation sessions; a peer that serves none
// leaves them to the unknown-route answer.
func (a *API) routesSessions(mux *http.ServeMux) {
	if a.cfg.Sessions == nil {
		return
	}
	mux.HandleFunc("POST /v1/sessions", a.handleNewSession)
	mux.HandleFunc("PUT /v1/sessions/{id}", a.handlePutSession)
	mux.HandleFunc("GET /v1/sessions/{id}", a.handleGetSession)
	mux.HandleFunc("DELETE /v1/sessions/{id}", a.handleDeleteSession)
	mux.HandleFunc("POST /v1/sessions/{id}/turns", a.handleAppendTurn)
}

// isSessionPath: sessions hold what users said, so every request on them
// — reads too — needs the API token when one is set.
func isSessionPath(p string) bool {
	return p == "/v1/sessions" || strings.HasPrefix(p, "/v1/sessions/")
}

// maxSessionBody: a turn at its cap, with JSON escaping to spare; a larger
// body is 413 before it is read.
const maxSessionBody = 4*sessions.MaxTurnBytes + 4<<10

func (a *API) handleNewSession(w http.ResponseWriter, r *http.Request) {
	a.putSession(w, r, sessions.NewID(), http.StatusCreated)
}

func (a *API) handlePutSession(w http.ResponseWriter, r *http.Request) {
	a.putSession(w, r, r.PathValue("id"), http.StatusOK)
}

func (a *API) putSession(w http.ResponseWriter, r *http.Request, id string, status int) {
	var req api.SessionRequest
	var err error
	if r.ContentLength != 0 {
		err = decodeJSON(r.Body, &req)
	}
	if err == nil && (req.TTLSeconds < 0 || math.IsInf(req.TTLSeconds, 0) || req.TTLSeconds > sessions.MaxTTL.Seconds()) {
		err = fmt.Errorf("%w: ttl_seconds %v: use up to %v", sessions.ErrBadOp, req.TTLSeconds, sessions.MaxTTL.Seconds())
	}
	var tok sessions.Token
	if err == nil {
		ttl := time.Duration(req.TTLSeconds * float64(time.Second))
		tok, err = a.cfg.Sessions.Put(r.Context(), id, ttl, req.Metadata, req.SiteOnly)
	}
	a.answerSessionWrite(w, status, id, tok, err)
}

// handleAppendTurn appends a turn. With the token of the conversation's
// last write (Shoal-After), the peer first waits until it holds that
// write: its clock then follows the write's, so the new turn is ordered
// after it even where gateways' clocks disagree.
func (a *API) handleAppendTurn(w http.ResponseWriter, r *http.Request) {
	var req api.TurnRequest
	err := decodeJSON(r.Body, &req)
	if err == nil && sessions.IsToken(r.Header.Get(api.HeaderAfter)) {
		err = a.waitForSessionWrite(w, r)
	}
	var tok sessions.Token
	if err == nil {
		tok, err = a.cfg.Sessions.Append(r.Context(), r.PathValue("id"), req.Role, req.Text, req.Metadata)
	}
	a.answerSessionWrite(w, http.StatusOK, r.PathValue("id"), tok, err)
}

// waitForSessionWrite waits, within Shoal-Timeout, until this peer holds
// the session write Shoal-After names.
func (a *API) waitForSessionWrite(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel, after, err := a.sessionDemands(w, r)
	if err != nil {
		return err
	}
	defer cancel()
	_, err = a.cfg.Sessions.Get(ctx, r.PathValue("id"), after)
	return err
}

func (a *API) handleDeleteSession(w http.ResponseWriter, r *http.Request) {
	tok, err := a.cfg.Sessions.Delete(r.Context(), r.PathValue("id"))
	a.answerSessionWrite(w, http.StatusOK, r.PathValue("id"), tok, err)
}

func (a *API) answerSessionWrite(w http.ResponseWriter, status int, id string, tok sessions.Token, err error) {
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set(api.HeaderToken, tok.String())
	writeJSON(w, status, api.SessionWrite{ID: id, Token: tok.String()})
}

// handleGetSession reads a session under the caller's demands: a session
// token in Shoal-After is waited for here (the session's own writes are
// not in the Merkle-CRDT); Shoal-Max-Staleness and Shoal-Timeout apply as
// to any read.
func (a *API) handleGetSession(w http.ResponseWriter, r *http.Request) {
	ctx, cancel, after, err := a.sessionDemands(w, r)
	if err != nil {
		writeError(w, err)
		return
	}
	defer cancel()
	v, err := a.cfg.Sessions.Get(ctx, r.PathValue("id"), after)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

// sessionDemands applies a session read's demands. A session token in
// Shoal-After is returned for the read to wait on; any other token goes
// through the general demands.
func (a *API) sessionDemands(w http.ResponseWriter, r *http.Request) (context.Context, context.CancelFunc, *sessions.Token, error) {
	var after *sessions.Token
	raw := r.Header.Get(api.HeaderAfter)
	get := r.Header.Get
	if sessions.IsToken(raw) {
		tok, err := sessions.ParseToken(raw)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("%s: %w", api.HeaderAfter, err)
		}
		after = &tok
		get = func(h string) string {
			if h == api.HeaderAfter {
				return ""
			}
			return r.Header.Get(h)
		}
	}
	ctx, cancel, err := Demands(r.Context(), a.cfg.Consistency, get, w.Header().Set)
	return ctx, cancel, after, err
}

// sessionContext returns the user turns of the session a request names
// (Shoal-Session), newest last, at most n; none when it names none.
func (a *API) sessionContext(ctx context.Context, r *http.Request, n int) ([]string, error) {
	id := r.Header.Get(api.HeaderSession)
	if id == "" {
		return nil, nil
	}
	if a.cfg.Sessions == nil {
		return nil, fmt.Errorf("%w: sessions are not served by this peer", errNoRoute)
	}
	turns, err := a.cfg.Sessions.Recent(ctx, id, 4*n)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", api.HeaderSession, err)
	}
	var out []string
	for _, t := range turns {
		if t.Role == "user" {
			out = append(out, t.Text)
		}
	}
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return out, nil
}
