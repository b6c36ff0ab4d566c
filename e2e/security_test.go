package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/shoal-mesh/shoal/peer"
)

// TestAPITokenGuardsWrites: with an API token, every state-changing
// request needs it; reads (inference and queries included) do not.
func TestAPITokenGuardsWrites(t *testing.T) {
	m := startMesh(t, 1, func(_ int, c *peer.Config) { c.APIToken = "s3cret-token" })
	n := m.Node(0)
	v1, _ := clsModels(t)
	url := api(n) + "/v1/models/cls/versions/v1?" + onnxQuery + "&activate=true"
	for _, auth := range []string{"", "Bearer wrong", "s3cret-token", "Basic s3cret-token"} {
		res := do(t, http.MethodPut, url, v1, "Authorization", auth)
		if res.code != http.StatusUnauthorized || !strings.Contains(res.errMsg(), "Bearer") || res.header.Get("WWW-Authenticate") == "" {
			t.Errorf("Authorization %q: %d %s", auth, res.code, res.body)
		}
	}
	if res := do(t, "GET", api(n)+"/v1/models", nil); res.code != 200 || !strings.Contains(string(res.body), `"models": []`) {
		t.Errorf("refused writes changed state or reads need a token: %d %s", res.code, res.body)
	}
	res := do(t, http.MethodPut, url, v1, "Authorization", "Bearer s3cret-token")
	if res.code != http.StatusCreated {
		t.Fatalf("with the token: %d %s", res.code, res.body)
	}
	for _, w := range []struct{ method, path, body string }{
		{"POST", "/v1/models/cls/rollback", ``},
		{"POST", "/v1/cache/flush", ``},
		{"POST", "/v1/collections", `{"name":"c","embedder":"e@v1"}`},
		{"DELETE", "/v1/collections/c/docs/x", ``},
	} {
		if res := do(t, w.method, api(n)+w.path, []byte(w.body)); res.code != http.StatusUnauthorized {
			t.Errorf("%s %s without a token: %d", w.method, w.path, res.code)
		}
	}
	eventually(t, "inference needs no token", func() error {
		if r := inferHTTP(t, n, "cls", "", clsBody(1)); r.code != 200 {
			return fmt.Errorf("%d %s", r.code, r.body)
		}
		return nil
	})
}
