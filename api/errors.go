package api

import (
	"fmt"
	"net/http"
	"time"
)

// Error is the body of every error answer:
//
//	{"error": "<a sentence for a person>", "code": "<stable.code>"}
//
// Clients branch on Code, never on the sentence, which may change. Some
// codes add fields (CodeStalenessExceeded carries both stalenesses).
type Error struct {
	Message string `json:"error"`
	Code    string `json:"code"`
	// StalenessSeconds and MaxStalenessSeconds come with
	// CodeStalenessExceeded.
	StalenessSeconds    float64 `json:"staleness_seconds,omitempty"`
	MaxStalenessSeconds float64 `json:"max_staleness_seconds,omitempty"`
	// Status is the HTTP status the error came with (not in the body).
	Status int `json:"-"`
}

func (e *Error) Error() string {
	if e.Code == "" {
		return e.Message
	}
	return fmt.Sprintf("%s (%s)", e.Message, e.Code)
}

// The stable error codes. Each is documented in Codes and docs/api.md.
const (
	CodeInternal          = "internal"
	CodeRouteUnknown      = "route.unknown"
	CodeAuthRequired      = "auth.required"
	CodeBodyTooLarge      = "body.too_large"
	CodeBodyMalformed     = "body.malformed"
	CodeHeaderInvalid     = "header.invalid"
	CodeTokenMalformed    = "token.malformed"
	CodeTokenNotReached   = "token.not_reached"
	CodeStalenessExceeded = "staleness.exceeded"
	CodeDiskReserve       = "disk.reserve"
	CodeUnavailable       = "unavailable"
	CodeShuttingDown      = "shutting_down"
	CodeNameInvalid       = "name.invalid"
	CodeRecordInvalid     = "record.invalid"
	CodeModelUnknown      = "model.unknown"
	CodeVersionUnknown    = "version.unknown"
	CodeVersionDuplicate  = "version.duplicate"
	CodeVersionNoPrevious = "version.no_previous"
	CodeArtifactBad       = "artifact.bad"
	CodeArtifactEmpty     = "artifact.empty"
	CodeArtifactPending   = "artifact.pending"
	CodeWarmupInvalid     = "warmup.invalid"
	CodeModelNotONNX      = "model.not_onnx"
	CodeModelNotLoaded    = "model.not_loaded"
	CodeModelLoadFailed   = "model.load_failed"
	CodeInferenceOff      = "inference.unavailable"
	CodeInferenceInput    = "inference.bad_input"
	CodeInferenceTimeout  = "inference.timeout"
	CodeBusy              = "busy"
	CodeCollectionUnknown = "collection.unknown"
	CodeCollectionExists  = "collection.exists"
	CodeCollectionInvalid = "collection.invalid"
	CodeDocumentUnknown   = "document.unknown"
	CodeDocumentInvalid   = "document.invalid"
	CodeDocumentTooLarge  = "document.too_large"
	CodeQueryInvalid      = "query.invalid"
	CodeEmbedderInvalid   = "embedder.invalid"
	CodeEmbedderNoTok     = "embedder.no_tokenizer"
	CodeIndexBehind       = "index.behind"
	CodeIndexLoading      = "index.loading"
	CodeSessionUnknown    = "session.unknown"
	CodeSessionInvalid    = "session.invalid"
	CodeSessionTooLarge   = "session.too_large"
)

// CodeInfo is one row of the catalogue: the HTTP status a code comes with,
// the Retry-After it carries (0: none; the request will not succeed as it
// is) and what it means.
type CodeInfo struct {
	Code       string
	Status     int
	RetryAfter time.Duration
	Meaning    string
}

// Codes is the error catalogue, one row per code, in the order docs/api.md
// lists them.
var Codes = []CodeInfo{
	{CodeInternal, http.StatusInternalServerError, 0, "a fault of the peer's; the log has the details"},
	{CodeRouteUnknown, http.StatusNotFound, 0, "no such endpoint (method and path)"},
	{CodeAuthRequired, http.StatusUnauthorized, 0, "a state-changing request without the API token (Authorization: Bearer …)"},
	{CodeBodyTooLarge, http.StatusRequestEntityTooLarge, 0, "the request body is past the route's limit"},
	{CodeBodyMalformed, http.StatusBadRequest, 0, "the body is not the JSON the route takes (syntax, unknown field, wrong type)"},
	{CodeHeaderInvalid, http.StatusBadRequest, 0, "a Shoal-* header that does not parse (Shoal-Timeout, Shoal-Max-Staleness, …)"},
	{CodeTokenMalformed, http.StatusBadRequest, 0, "Shoal-After is not a token a write returned"},
	{CodeTokenNotReached, http.StatusServiceUnavailable, time.Second, "this peer has not yet caught up with the write named in Shoal-After, within Shoal-Timeout"},
	{CodeStalenessExceeded, http.StatusServiceUnavailable, time.Second, "this peer is staler than Shoal-Max-Staleness allows (body carries both figures)"},
	{CodeDiskReserve, http.StatusInsufficientStorage, 0, "the write would cut into the data disk's free-space reserve (--min-free-mb); reads go on"},
	{CodeUnavailable, http.StatusServiceUnavailable, 5 * time.Second, "something the request needs did not arrive within its deadline (Shoal-Timeout)"},
	{CodeShuttingDown, http.StatusServiceUnavailable, 5 * time.Second, "the peer is shutting down"},
	{CodeNameInvalid, http.StatusBadRequest, 0, "a model, version or collection name outside [A-Za-z0-9._-] (1–128, starting alphanumeric)"},
	{CodeRecordInvalid, http.StatusBadRequest, 0, "the record to replicate is malformed or over its size cap"},
	{CodeModelUnknown, http.StatusNotFound, 0, "no model of that name in this peer's view of the mesh"},
	{CodeVersionUnknown, http.StatusNotFound, 0, "the model has no such version in this peer's view of the mesh"},
	{CodeVersionDuplicate, http.StatusConflict, 0, "that version was already published with other content (versions are immutable)"},
	{CodeVersionNoPrevious, http.StatusConflict, 0, "rollback: no earlier activation to go back to"},
	{CodeArtifactBad, http.StatusConflict, 0, "the artifact failed verification (size or sha256) here"},
	{CodeArtifactEmpty, http.StatusBadRequest, 0, "an artifact upload with no bytes"},
	{CodeArtifactPending, http.StatusServiceUnavailable, 5 * time.Second, "the version is known but its artifact or session is not ready here yet; the fetch goes on"},
	{CodeWarmupInvalid, http.StatusBadRequest, 0, "Shoal-Warmup is not base64 of an OIP v2 request with inputs, or is too large"},
	{CodeModelNotONNX, http.StatusBadRequest, 0, "the version is an artifact of another media type, not an ONNX model"},
	{CodeModelNotLoaded, http.StatusServiceUnavailable, 5 * time.Second, "no verified version of the model is loaded on this peer yet"},
	{CodeModelLoadFailed, http.StatusConflict, 0, "the version does not load or warm up on this peer (onnxruntime's reason follows)"},
	{CodeInferenceOff, http.StatusServiceUnavailable, 0, "onnxruntime is unavailable on this peer"},
	{CodeInferenceInput, http.StatusBadRequest, 0, "the inference request does not fit the model (names, datatypes, shapes, data)"},
	{CodeInferenceTimeout, http.StatusGatewayTimeout, 0, "the inference did not finish within the request's deadline"},
	{CodeBusy, http.StatusServiceUnavailable, time.Second, "no inference slot free on this peer (--max-inflight) within the request's deadline"},
	{CodeCollectionUnknown, http.StatusNotFound, 0, "no collection of that name"},
	{CodeCollectionExists, http.StatusConflict, 0, "a collection of that name exists with another spec"},
	{CodeCollectionInvalid, http.StatusBadRequest, 0, "the collection spec is invalid (embedder reference, dimension, metric, vectors)"},
	{CodeDocumentUnknown, http.StatusNotFound, 0, "no document of that id in the collection"},
	{CodeDocumentInvalid, http.StatusBadRequest, 0, "a document or its vector is invalid (id, empty text, dimension, non-finite or zero vector)"},
	{CodeDocumentTooLarge, http.StatusRequestEntityTooLarge, 0, "a document or text is past its size cap"},
	{CodeQueryInvalid, http.StatusBadRequest, 0, "the query or embeddings request is invalid (k, text and vector, input count, format)"},
	{CodeEmbedderInvalid, http.StatusConflict, 0, "the embedder's model or tokenizer cannot embed text"},
	{CodeEmbedderNoTok, http.StatusConflict, 0, "the embedder has no tokenizer published as <model>.tokenizer@<version>"},
	{CodeIndexBehind, http.StatusServiceUnavailable, time.Second, "the retrieval index has not applied this peer's changes within the request's deadline"},
	{CodeIndexLoading, http.StatusServiceUnavailable, time.Second, "the collection's index is being loaded at start (reopened or read from the store); progress in /v1/status"},
	{CodeSessionUnknown, http.StatusNotFound, 0, "no live session with that id, here or on the peers asked"},
	{CodeSessionInvalid, http.StatusBadRequest, 0, "a session id, role, TTL or metadata that is not acceptable"},
	{CodeSessionTooLarge, http.StatusRequestEntityTooLarge, 0, "a turn or session metadata past its size cap"},
}

// Lookup returns the catalogue row of code.
func Lookup(code string) (CodeInfo, bool) {
	for _, c := range Codes {
		if c.Code == code {
			return c, true
		}
	}
	return CodeInfo{}, false
}
