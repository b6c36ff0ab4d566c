package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/sessions"
)

// answerError turns an error answer of the API into an *api.Error (the
// body's sentence and stable code, with the HTTP status), so commands and
// the CLI's output branch on the code, never on the sentence.
func answerError(resp *http.Response, body []byte) error {
	e := &api.Error{Status: resp.StatusCode}
	if json.Unmarshal(body, e) != nil || e.Message == "" {
		e.Message, e.Code = resp.Status, ""
	}
	return e
}

// hints say what an operator can do about an error, by code.
var hints = map[string]string{
	api.CodeAuthRequired:      "set SHOAL_API_TOKEN to the peer's API token",
	api.CodeDiskReserve:       "free space on the peer's data disk, or lower --min-free-mb",
	api.CodeStalenessExceeded: "the peer is behind its mesh; retry, ask another peer, or relax --max-staleness",
	api.CodeTokenNotReached:   "the write has not reached this peer yet; retry or raise --timeout",
	api.CodeModelNotLoaded:    "the peer is still fetching or loading the model; retry shortly (`shoal status` shows progress)",
	api.CodeArtifactPending:   "the artifact is still on its way; retry shortly (`shoal status` shows progress)",
	api.CodeInferenceOff:      "the peer could not load onnxruntime; see `shoal status` for why",
	api.CodeEmbedderNoTok:     "push the tokenizer with `shoal model push TOKENIZER --name <model>.tokenizer --version <v>`",
	api.CodeSessionUnknown:    "it expired (its TTL after the last write) or was deleted, or the id is mistyped; `shoal session new` starts one",
	api.CodeSessionTooLarge:   fmt.Sprintf("a turn's text and metadata are capped at %d KiB, a session's metadata at %d KiB", sessions.MaxTurnBytes>>10, sessions.MaxMetadataBytes>>10),
}

// describe is how the CLI prints err: an API error with its code and,
// where there is one, a hint.
func describe(err error) string {
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code == "" {
		return err.Error()
	}
	if h, ok := hints[ae.Code]; ok {
		return fmt.Sprintf("%s [%s]\n  hint: %s", ae.Message, ae.Code, h)
	}
	return fmt.Sprintf("%s [%s]", ae.Message, ae.Code)
}
