package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/rag"
	"github.com/shoal-mesh/shoal/sessions"
)

// fakeSessions is a Sessions that records what it is asked.
type fakeSessions struct {
	calls
	turns   []sessions.Turn
	after   *sessions.Token
	waitErr error
}

func (f *fakeSessions) Put(ctx context.Context, id string, ttl time.Duration, md json.RawMessage, siteOnly bool) (sessions.Token, error) {
	f.add("Put")
	if err := sessions.CheckID(id); err != nil {
		return sessions.Token{}, err
	}
	return sessions.Token{Session: id, HLC: crdt.HLC{Wall: 1, Peer: "p"}, Peer: "p"}, nil
}

func (f *fakeSessions) Append(ctx context.Context, id, role, text string, md json.RawMessage) (sessions.Token, error) {
	f.add("Append")
	if len(text) > sessions.MaxTurnBytes {
		return sessions.Token{}, fmt.Errorf("%w: big", sessions.ErrTooLarge)
	}
	f.turns = append(f.turns, sessions.Turn{Role: role, Text: text})
	return sessions.Token{Session: id, HLC: crdt.HLC{Wall: int64(len(f.turns)), Peer: "p"}, Peer: "p"}, nil
}

func (f *fakeSessions) Delete(ctx context.Context, id string) (sessions.Token, error) {
	f.add("Delete")
	return sessions.Token{}, fmt.Errorf("%w: %s", sessions.ErrUnknown, id)
}

func (f *fakeSessions) Get(ctx context.Context, id string, after *sessions.Token) (sessions.View, error) {
	f.add("Get")
	f.after = after
	if after != nil && f.waitErr != nil {
		return sessions.View{}, f.waitErr
	}
	if err := sessions.CheckID(id); err != nil {
		return sessions.View{}, err
	}
	return sessions.View{ID: id, Turns: f.turns}, nil
}

func (f *fakeSessions) Recent(ctx context.Context, id string, n int) ([]sessions.Turn, error) {
	f.add("Recent")
	return f.turns, nil
}

const testSession = "a-session-id-of-22-chars"

func sessionHarness(t *testing.T) (*harness, *fakeSessions) {
	h := newHarness(t)
	fs := &fakeSessions{calls: calls{}}
	h.api = New(Config{Peer: h.peer, Consistency: h.cons, Retrieval: h.ret, Sessions: fs, Token: func() string { return h.token }})
	return h, fs
}

// Sessions hold what users said: with an API token set, reads need it
// too, unlike the rest of the API's reads.
func TestSessionReadsNeedTheToken(t *testing.T) {
	h, fs := sessionHarness(t)
	h.token = "secret"
	wantError(t, h.do(t, "GET", "/v1/sessions/"+testSession, nil), api.CodeAuthRequired)
	wantStatus(t, h.do(t, "GET", "/v1/sessions/"+testSession, nil, "Authorization", "Bearer secret"), http.StatusOK)
	wantCalls(t, fs.calls, map[string]int{"Get": 1})
	// Other reads still do not.
	wantStatus(t, h.do(t, "GET", "/healthz", nil), http.StatusOK)
}

func TestSessionWritesAnswerTheirToken(t *testing.T) {
	h, _ := sessionHarness(t)
	w := h.doJSON(t, "POST", "/v1/sessions/"+testSession+"/turns", api.TurnRequest{Role: "user", Text: "hi"})
	wantStatus(t, w, http.StatusOK)
	body := decode[api.SessionWrite](t, w)
	if body.ID != testSession || !sessions.IsToken(body.Token) || w.Header().Get(api.HeaderToken) != body.Token {
		t.Errorf("append answered %+v, header %q", body, w.Header().Get(api.HeaderToken))
	}
	w = h.doJSON(t, "POST", "/v1/sessions", api.SessionRequest{TTLSeconds: 60})
	wantStatus(t, w, http.StatusCreated)
	if id := decode[api.SessionWrite](t, w).ID; sessions.CheckID(id) != nil {
		t.Errorf("a created session's id %q", id)
	}
}

// A session token in Shoal-After reaches the service's wait; one not
// reached answers token.not_reached; a malformed one token.malformed.
func TestSessionReadAfterToken(t *testing.T) {
	h, fs := sessionHarness(t)
	tok := sessions.Token{Session: testSession, HLC: crdt.HLC{Wall: 5, Peer: "p"}, Peer: "p"}
	wantStatus(t, h.do(t, "GET", "/v1/sessions/"+testSession, nil, api.HeaderAfter, tok.String()), http.StatusOK)
	if fs.after == nil || fs.after.HLC != tok.HLC {
		t.Errorf("the service was asked to wait for %+v", fs.after)
	}
	if h.cons.calls["WaitFor"] != 0 {
		t.Error("a session token went to the replica's wait")
	}
	fs.waitErr = fmt.Errorf("%w: not yet", crdt.ErrNotCaughtUp)
	wantError(t, h.do(t, "GET", "/v1/sessions/"+testSession, nil, api.HeaderAfter, tok.String()), api.CodeTokenNotReached)
	wantError(t, h.do(t, "GET", "/v1/sessions/"+testSession, nil, api.HeaderAfter, "s1.garbage"), api.CodeTokenMalformed)
}

func TestSessionBadInput(t *testing.T) {
	h, _ := sessionHarness(t)
	wantError(t, h.do(t, "GET", "/v1/sessions/short", nil), api.CodeSessionInvalid)
	wantError(t, h.do(t, "DELETE", "/v1/sessions/"+testSession, nil), api.CodeSessionUnknown)
	wantError(t, h.doJSON(t, "POST", "/v1/sessions/"+testSession+"/turns", api.TurnRequest{Role: "user", Text: strings.Repeat("x", sessions.MaxTurnBytes+1)}), api.CodeSessionTooLarge)
	w := h.do(t, "POST", "/v1/sessions/"+testSession+"/turns", strings.NewReader(`{"role":"user","text":"`+strings.Repeat("x", maxSessionBody)+`"}`))
	if w.Code != http.StatusRequestEntityTooLarge {
		t.Errorf("a body past the session limit: %d", w.Code)
	}
	wantError(t, h.doJSON(t, "PUT", "/v1/sessions/"+testSession, api.SessionRequest{TTLSeconds: -1}), api.CodeSessionInvalid)
}

// A text query naming a session is embedded with the session's last user
// turns after the question (newest first), and says how many it used.
func TestQueryExpandsWithTheSession(t *testing.T) {
	h, fs := sessionHarness(t)
	fs.turns = []sessions.Turn{{Role: "user", Text: "forklift 3"}, {Role: "assistant", Text: "bay 12"}, {Role: "user", Text: "its battery"}, {Role: "user", Text: "and charger"}}
	var embedded []string
	h.ret.EmbedTextsFn = func(ctx context.Context, ref string, texts []string) (rag.Embedding, error) {
		embedded = texts
		return rag.Embedding{Vectors: [][]float32{{1, 0}}, Truncated: []bool{false}, Embedder: ref}, nil
	}
	w := h.doJSON(t, "POST", "/v1/collections/notes/query", api.QueryRequest{Text: "how long does it last?"}, api.HeaderSession, testSession)
	wantStatus(t, w, http.StatusOK)
	if want := "how long does it last?\nand charger\nits battery"; len(embedded) != 1 || embedded[0] != want {
		t.Errorf("embedded %q, want %q", embedded, want)
	}
	if n := decode[api.QueryResponse](t, w).SessionTurns; n != 2 {
		t.Errorf("session_turns %d, want 2", n)
	}
	// Without the header the query is embedded as it is.
	wantStatus(t, h.doJSON(t, "POST", "/v1/collections/notes/query", api.QueryRequest{Text: "plain"}), http.StatusOK)
	if len(embedded) != 1 || embedded[0] != "plain" {
		t.Errorf("embedded %q without a session", embedded)
	}
}
