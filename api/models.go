package api

import (
	"time"

	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/store/artifacts"
)

// ModelInfo is one model in GET /v1/models and `shoal model ls --json`.
type ModelInfo struct {
	Name        string              `json:"name"`
	Current     *models.Activation  `json:"current,omitempty"`
	Why         string              `json:"why"`
	Serving     *ServingInfo        `json:"serving,omitempty"`
	Versions    []VersionInfo       `json:"versions"`
	Activations []models.Activation `json:"activations"`
}

// ModelList is GET /v1/models.
type ModelList struct {
	Models    []ModelInfo          `json:"models"`
	Publisher models.PublisherID   `json:"publisher"`
	Trusted   []models.PublisherID `json:"trusted"`
}

// ServingInfo is the version this peer serves.
type ServingInfo struct {
	Version    string    `json:"version"`
	CID        string    `json:"cid"`
	Since      time.Time `json:"since"`
	LagSeconds float64   `json:"lag_seconds"`
}

// VersionInfo is one version of a model with its local state here.
type VersionInfo struct {
	models.Manifest
	Local *artifacts.Status `json:"local,omitempty"`
	// LoadError says why a verified ONNX version does not load here.
	LoadError string            `json:"load_error,omitempty"`
	Conflicts []models.Manifest `json:"conflicts,omitempty"`
}

// ActivateRequest is the body of POST /v1/models/{m}/activate.
type ActivateRequest struct {
	Version string `json:"version"`
}

// PushResult answers PUT /v1/models/{m}/versions/{v}.
type PushResult struct {
	Manifest   models.Manifest    `json:"manifest"`
	Activation *models.Activation `json:"activation,omitempty"`
	Token      string             `json:"token"`
}

// ActivationResult answers activate and rollback.
type ActivationResult struct {
	Activation models.Activation `json:"activation"`
	Token      string            `json:"token"`
}

// PullResult answers POST /v1/models/{m}/versions/{v}/pull.
type PullResult struct {
	Ref   string           `json:"ref"`
	Local artifacts.Status `json:"local"`
	Size  int64            `json:"size,omitempty"`
}

// ModelWatchEvent is the data of one `event: model` of GET
// /v1/models/{m}/watch: the model's effective current version and the
// version this peer serves ("" for none yet, or a model not published
// yet), sent at connect and then each time either changes.
type ModelWatchEvent struct {
	Model   string `json:"model"`
	Current string `json:"current"`
	Serving string `json:"serving"`
	// CurrentHLC stamps the activation that made Current current.
	CurrentHLC string `json:"current_hlc,omitempty"`
	// StalenessSeconds is this peer's staleness bound when the event was
	// sent (as Shoal-Staleness).
	StalenessSeconds float64 `json:"staleness_seconds"`
}
