package api

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// codesTable renders Codes as docs/api.md shows them.
func codesTable() string {
	var b strings.Builder
	b.WriteString("| code | status | Retry-After | meaning |\n|---|---|---|---|\n")
	for _, c := range Codes {
		ra := ""
		if c.RetryAfter > 0 {
			ra = fmt.Sprintf("%d s", int(c.RetryAfter.Seconds()))
		}
		fmt.Fprintf(&b, "| `%s` | %d | %s | %s |\n", c.Code, c.Status, ra, c.Meaning)
	}
	return b.String()
}

// TestDocsListEveryCode keeps docs/api.md's error table equal to the
// catalogue, so the documented contract cannot drift from the code.
func TestDocsListEveryCode(t *testing.T) {
	doc, err := os.ReadFile("../docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	if want := codesTable(); !strings.Contains(string(doc), want) {
		t.Errorf("docs/api.md's error table differs from api.Codes; it should read:\n%s", want)
	}
}

func TestCodesAreUniqueAndComplete(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range Codes {
		if seen[c.Code] {
			t.Errorf("code %s listed twice", c.Code)
		}
		seen[c.Code] = true
		if c.Status < 400 || c.Status > 599 || c.Meaning == "" {
			t.Errorf("code %s: status %d, meaning %q", c.Code, c.Status, c.Meaning)
		}
		if got, ok := Lookup(c.Code); !ok || got != c {
			t.Errorf("Lookup(%s) = %v, %v", c.Code, got, ok)
		}
	}
	if _, ok := Lookup("no.such"); ok {
		t.Error("Lookup found a code that is not in the catalogue")
	}
}

func TestErrorMessageNamesItsCode(t *testing.T) {
	e := &Error{Message: "no model cls", Code: CodeModelUnknown, Status: 404}
	if e.Error() != "no model cls (model.unknown)" {
		t.Errorf("Error() = %q", e.Error())
	}
}
