package httpapi

import (
	"context"
	"errors"
	"net/http"
	"strconv"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/crdt/collections"
	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/inference"
	"github.com/shoal-mesh/shoal/lifecycle"
	"github.com/shoal-mesh/shoal/rag"
	"github.com/shoal-mesh/shoal/serving"
	"github.com/shoal-mesh/shoal/sessions"
	"github.com/shoal-mesh/shoal/store"
	"github.com/shoal-mesh/shoal/store/artifacts"
)

// Errors of the API layer itself.
var (
	errNoRoute      = errors.New("no such route")
	errUnauthorized = errors.New("this request changes state: it needs Authorization: Bearer <API token>")
	errPanic        = errors.New("internal error")
	// errBadHeader: a Shoal-* header that does not parse.
	errBadHeader = errors.New("bad header")
	// errBadBody: the body is not the JSON the route takes.
	errBadBody = errors.New("bad request body")
	// errBadQuery: a query or embeddings request out of its limits.
	errBadQuery = errors.New("bad query")
	// errBadWarmup: Shoal-Warmup is not a usable warm-up request.
	errBadWarmup = errors.New("bad warm-up request")
	// errIndexBehind: the indexes did not catch up within the deadline.
	errIndexBehind = errors.New("retrieval index behind")
	// errTooLarge: a text past its cap (bodies use http.MaxBytesError).
	errTooLarge = errors.New("too large")
)

// catalogue maps every error a handler can meet to its code (and through
// api.Codes to its status and Retry-After). The first row that matches
// under errors.Is wins, so more specific sentinels come first. An error
// that matches no row is CodeInternal: a fault of the peer's.
var catalogue = []struct {
	err  error
	code string
}{
	{errNoRoute, api.CodeRouteUnknown},
	{errUnauthorized, api.CodeAuthRequired},
	{errPanic, api.CodeInternal},
	{errBadHeader, api.CodeHeaderInvalid},
	{errBadBody, api.CodeBodyMalformed},
	{errBadQuery, api.CodeQueryInvalid},
	{errBadWarmup, api.CodeWarmupInvalid},
	{errIndexBehind, api.CodeIndexBehind},
	{errTooLarge, api.CodeDocumentTooLarge},
	{crdt.ErrBadToken, api.CodeTokenMalformed},
	{crdt.ErrNotCaughtUp, api.CodeTokenNotReached},
	{crdt.ErrBadRecord, api.CodeRecordInvalid},
	{crdt.ErrRecordTooLarge, api.CodeRecordInvalid},
	{store.ErrDiskFull, api.CodeDiskReserve},
	{models.ErrBadName, api.CodeNameInvalid},
	{models.ErrUnknownModel, api.CodeModelUnknown},
	{models.ErrUnknownVersion, api.CodeVersionUnknown},
	{models.ErrDuplicate, api.CodeVersionDuplicate},
	{models.ErrNoPrevious, api.CodeVersionNoPrevious},
	{artifacts.ErrBad, api.CodeArtifactBad},
	{artifacts.ErrIncomplete, api.CodeArtifactPending},
	{artifacts.ErrNotLocal, api.CodeArtifactPending},
	{lifecycle.ErrEmptyArtifact, api.CodeArtifactEmpty},
	{lifecycle.ErrInferenceOff, api.CodeInferenceOff},
	{lifecycle.ErrNotONNX, api.CodeModelNotONNX},
	{lifecycle.ErrNotLoaded, api.CodeModelNotLoaded},
	{lifecycle.ErrLoadFailed, api.CodeModelLoadFailed},
	{lifecycle.ErrShuttingDown, api.CodeShuttingDown},
	{serving.ErrBadInput, api.CodeInferenceInput},
	{serving.ErrBusy, api.CodeBusy},
	{serving.ErrTimeout, api.CodeInferenceTimeout},
	{inference.ErrBadRequest, api.CodeInferenceInput},
	{rag.ErrNoTokenizer, api.CodeEmbedderNoTok},
	{rag.ErrEmbedder, api.CodeEmbedderInvalid},
	{rag.ErrLoading, api.CodeIndexLoading},
	{collections.ErrUnknown, api.CodeCollectionUnknown},
	{collections.ErrUnknownDoc, api.CodeDocumentUnknown},
	{collections.ErrExists, api.CodeCollectionExists},
	{collections.ErrTooLarge, api.CodeDocumentTooLarge},
	{collections.ErrBadSpec, api.CodeCollectionInvalid},
	{collections.ErrBadEmbedder, api.CodeCollectionInvalid},
	{collections.ErrBadMetric, api.CodeCollectionInvalid},
	{collections.ErrBadName, api.CodeNameInvalid},
	{collections.ErrBadDoc, api.CodeDocumentInvalid},
	{collections.ErrDimension, api.CodeDocumentInvalid},
	{collections.ErrEmptyText, api.CodeDocumentInvalid},
	{collections.ErrNonFinite, api.CodeDocumentInvalid},
	{collections.ErrZeroVector, api.CodeDocumentInvalid},
	{sessions.ErrUnknown, api.CodeSessionUnknown},
	{sessions.ErrBadID, api.CodeSessionInvalid},
	{sessions.ErrBadOp, api.CodeSessionInvalid},
	{sessions.ErrTooLarge, api.CodeSessionTooLarge},
	// Not available within the request's time (Shoal-Timeout): the
	// caller may retry; the fetch or load goes on.
	{context.DeadlineExceeded, api.CodeUnavailable},
}

// codeOf returns the catalogue code of err.
func codeOf(err error) string {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return api.CodeBodyTooLarge
	}
	for _, row := range catalogue {
		if errors.Is(err, row.err) {
			return row.code
		}
	}
	return api.CodeInternal
}

// stalenessError is CodeStalenessExceeded with both figures.
type stalenessError struct {
	msg                 string
	staleness, maxStale float64
}

func (e *stalenessError) Error() string { return e.msg }

// bodyOf is the JSON body and status of err.
func bodyOf(err error) (api.Error, api.CodeInfo) {
	var se *stalenessError
	if errors.As(err, &se) {
		info, _ := api.Lookup(api.CodeStalenessExceeded)
		return api.Error{Message: se.msg, Code: info.Code, StalenessSeconds: se.staleness, MaxStalenessSeconds: se.maxStale}, info
	}
	info, ok := api.Lookup(codeOf(err))
	if !ok {
		info, _ = api.Lookup(api.CodeInternal)
	}
	msg := err.Error()
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		msg = "request body larger than " + strconv.FormatInt(mbe.Limit, 10) + " bytes"
	}
	return api.Error{Message: msg, Code: info.Code}, info
}

// Describe is err as every API edge reports it: the JSON error body (a
// stable code from the catalogue, the message, and for a broken
// staleness bound both figures) and the code's status and Retry-After.
// The gRPC API maps the same description to its status codes.
func Describe(err error) (api.Error, api.CodeInfo) { return bodyOf(err) }

// writeError answers err with its catalogue status, code and Retry-After.
func writeError(w http.ResponseWriter, err error) {
	body, info := bodyOf(err)
	if info.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(info.RetryAfter.Seconds()+0.999)))
	}
	writeJSON(w, info.Status, body)
}
