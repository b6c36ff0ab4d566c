package api

import (
	"encoding/json"
	"time"
)

// HeaderSession names a session on an inference or retrieval request: the
// session's recent turns are then available to the request path.
const HeaderSession = "Shoal-Session"

// SessionRequest is the body of PUT /v1/sessions/{id} and POST
// /v1/sessions: TTL and metadata (each optional: an existing session keeps
// its own) and, for a new session, whether it stays on this peer's site.
type SessionRequest struct {
	TTLSeconds float64         `json:"ttl_seconds,omitempty"`
	Metadata   json.RawMessage `json:"metadata,omitempty"`
	SiteOnly   bool            `json:"site_only,omitempty"`
}

// TurnRequest is the body of POST /v1/sessions/{id}/turns.
type TurnRequest struct {
	Role     string          `json:"role"`
	Text     string          `json:"text"`
	Metadata json.RawMessage `json:"metadata,omitempty"`
}

// Session is a session as GET /v1/sessions/{id} answers it: its turns in
// the order every peer agrees on.
type Session struct {
	ID        string          `json:"id"`
	SiteOnly  bool            `json:"site_only,omitempty"`
	Site      string          `json:"site,omitempty"`
	Metadata  json.RawMessage `json:"metadata,omitempty"`
	TTL       float64         `json:"ttl_seconds"`
	ExpiresAt time.Time       `json:"expires_at"`
	Turns     []SessionTurn   `json:"turns"`
}

// SessionTurn is one turn.
type SessionTurn struct {
	Role     string          `json:"role"`
	Text     string          `json:"text"`
	Metadata json.RawMessage `json:"metadata,omitempty"`
	At       time.Time       `json:"at"`
	// Writer is the publisher key that wrote the turn.
	Writer string `json:"writer"`
}

// SessionWrite answers a session write: the session's id and the write's
// token (also in Shoal-Token), which a read on any peer passes as
// Shoal-After to see the write.
type SessionWrite struct {
	ID    string `json:"id"`
	Token string `json:"token"`
}
