package httpapi

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/shoal-mesh/shoal/api"
)

// Every catalogue row names a code api.Codes has, and is the row that
// answers its sentinel, however wrapped (no earlier row shadows it).
func TestCatalogueRows(t *testing.T) {
	for _, row := range catalogue {
		if _, ok := api.Lookup(row.code); !ok {
			t.Errorf("%v maps to %q, which api.Codes lacks", row.err, row.code)
		}
		for _, err := range []error{row.err, fmt.Errorf("ctx: %w", row.err), fmt.Errorf("a: %w", fmt.Errorf("b: %w", row.err))} {
			if got := codeOf(err); got != row.code {
				t.Errorf("codeOf(%v) = %q, want %q (an earlier row shadows this one?)", err, got, row.code)
			}
		}
	}
}

// writeError answers every row with its status, code, message and
// Retry-After.
func TestWriteError(t *testing.T) {
	for _, row := range catalogue {
		info, _ := api.Lookup(row.code)
		err := fmt.Errorf("%w: detail", row.err)
		w := httptest.NewRecorder()
		writeError(w, err)
		e := wantError(t, w, row.code)
		if e.Message != err.Error() {
			t.Errorf("message %q, want %q", e.Message, err.Error())
		}
		if w.Code != info.Status {
			t.Errorf("%v: status %d, want %d", row.err, w.Code, info.Status)
		}
	}
}

func TestUnknownErrorIsInternal(t *testing.T) {
	w := httptest.NewRecorder()
	writeError(w, errors.New("something unforeseen"))
	if e := wantError(t, w, api.CodeInternal); e.Message != "something unforeseen" {
		t.Errorf("message %q", e.Message)
	}
}

func TestMaxBytesErrorIsBodyTooLarge(t *testing.T) {
	w := httptest.NewRecorder()
	// However it is wrapped, and even under a catalogue sentinel.
	writeError(w, fmt.Errorf("%w: reading: %w", errBadBody, &http.MaxBytesError{Limit: 1234}))
	if e := wantError(t, w, api.CodeBodyTooLarge); e.Message != "request body larger than 1234 bytes" {
		t.Errorf("message %q", e.Message)
	}
}

func TestStalenessErrorCarriesBothFigures(t *testing.T) {
	w := httptest.NewRecorder()
	writeError(w, fmt.Errorf("read: %w", &stalenessError{msg: "too stale", staleness: 4.5, maxStale: 1}))
	e := wantError(t, w, api.CodeStalenessExceeded)
	if e.Message != "too stale" || e.StalenessSeconds != 4.5 || e.MaxStalenessSeconds != 1 {
		t.Errorf("error = %+v", e)
	}
}

// codesOutsideCatalogue are the codes no catalogue row gives, each with
// the error that produces it.
var codesOutsideCatalogue = map[string]error{
	api.CodeStalenessExceeded: &stalenessError{msg: "stale", staleness: 2, maxStale: 1}, // checkConsistency
	api.CodeBodyTooLarge:      &http.MaxBytesError{Limit: 1},                            // http.MaxBytesReader in the middleware
}

// Every code clients may meet is one this package answers with.
func TestEveryCodeReachable(t *testing.T) {
	reach := map[string]bool{}
	for _, row := range catalogue {
		reach[row.code] = true
	}
	for code, err := range codesOutsideCatalogue {
		if reach[code] {
			t.Errorf("%s is listed as outside the catalogue, but a row gives it", code)
		}
		if body, info := bodyOf(err); body.Code != code || info.Code != code {
			t.Errorf("%T answers %q, want %q", err, body.Code, code)
		}
		reach[code] = true
	}
	for _, c := range api.Codes {
		if !reach[c.Code] {
			t.Errorf("api.Codes has %q, which nothing in httpapi answers with", c.Code)
		}
	}
	if len(reach) != len(api.Codes) {
		t.Errorf("%d codes reachable, api.Codes has %d", len(reach), len(api.Codes))
	}
}

// api.Codes is well-formed: unique codes, error statuses, Retry-After
// only with 503.
func TestCodesTable(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range api.Codes {
		if seen[c.Code] {
			t.Errorf("%q twice in api.Codes", c.Code)
		}
		seen[c.Code] = true
		if c.Status < 400 || c.Status > 599 || http.StatusText(c.Status) == "" {
			t.Errorf("%s: status %d", c.Code, c.Status)
		}
		if c.RetryAfter > 0 && c.Status != http.StatusServiceUnavailable {
			t.Errorf("%s: Retry-After with status %d", c.Code, c.Status)
		}
		if c.Meaning == "" {
			t.Errorf("%s: no meaning", c.Code)
		}
	}
}

// docs/api.md lists every code with its status: some line names the code
// (in backquotes) and the status.
func TestDocsListEveryCode(t *testing.T) {
	b, err := os.ReadFile("../docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	for _, c := range api.Codes {
		status := regexp.MustCompile(`\b` + strconv.Itoa(c.Status) + `\b`)
		found, withStatus := false, false
		for _, l := range lines {
			if strings.Contains(l, "`"+c.Code+"`") {
				found = true
				if status.MatchString(l) {
					withStatus = true
				}
			}
		}
		switch {
		case !found:
			t.Errorf("docs/api.md does not mention `%s` (%d)", c.Code, c.Status)
		case !withStatus:
			t.Errorf("docs/api.md mentions `%s` but not with its status %d on the same line", c.Code, c.Status)
		}
	}
}
