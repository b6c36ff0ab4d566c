package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestStatusPageInHeadlessChromium loads the page at / of a 3-peer mesh in
// Debian's chromium and reads the rendered DOM. SHOAL_SCREENSHOT=path keeps
// a screenshot (docs/status-page.png is one).
func TestStatusPageInHeadlessChromium(t *testing.T) {
	browser := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			browser = p
			break
		}
	}
	if browser == "" {
		t.Fatal("chromium is missing: `make setup` installs it (apt-get install chromium)")
	}
	m := startMesh(t, 3, nil)
	n := m.Node(0)
	v1, _ := clsModels(t)
	tok := push(t, n, "cls", "v1", v1, onnxQuery+"&activate=true")
	tok = publishEmbedder(t, n, "emb")
	createCollection(t, n, "manuals", "emb@v1", tok)
	eventually(t, "serving", func() error {
		if v, _ := n.Serving("cls"); v != "v1" {
			return fmt.Errorf("not yet")
		}
		return nil
	})
	inferHTTP(t, n, "cls", "", clsBody(1))
	inferHTTP(t, n, "cls", "", clsBody(1)) // a cache hit for the ratio

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browser), chromedp.NoSandbox,
		chromedp.Flag("headless", "new"), chromedp.WindowSize(1100, 900))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	err := chromedp.Do(ctx,
		chromedp.Navigate("http://"+n.APIAddr()+"/"),
		chromedp.Poll[chromedp.Void](`document.querySelectorAll("#peers tr td.ok").length >= 2 && document.querySelector("#models").innerText.includes("cls")`,
			chromedp.WithPollingTimeout(30*time.Second)),
	)
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	text := func(sel string) string {
		s, err := chromedp.Run(ctx, chromedp.Text(sel))
		if err != nil {
			t.Fatalf("chromium: %s: %v", sel, err)
		}
		return s
	}
	peers, models, collections, caches, header := text("#peers"), text("#models"), text("#collections"), text("#caches"), text(".sub")
	for _, want := range []string{short(m.Node(1).ID().String()), short(m.Node(2).ID().String())} {
		if !strings.Contains(peers, want) {
			t.Errorf("peers table lacks %s:\n%s", want, peers)
		}
	}
	if strings.Count(peers, "reachable") < 2 || strings.Contains(peers, "unreachable") {
		t.Errorf("peers table:\n%s", peers)
	}
	if !strings.Contains(models, "cls") || !strings.Contains(models, "v1 (current)") {
		t.Errorf("models table:\n%s", models)
	}
	if !strings.Contains(collections, "manuals") || !strings.Contains(collections, "emb@v1") {
		t.Errorf("collections table:\n%s", collections)
	}
	if !strings.Contains(caches, "inference results") || !strings.Contains(caches, "50.0 %") {
		t.Errorf("caches table:\n%s", caches)
	}
	if !strings.Contains(header, "testmesh") || !strings.Contains(header, "cpu") {
		t.Errorf("header: %s", header)
	}
	if out := os.Getenv("SHOAL_SCREENSHOT"); out != "" {
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Clean(out), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The page is self-contained: no external scripts, styles or images.
	res := do(t, "GET", baseURL(n)+"/", nil)
	if res.code != 200 || !strings.HasPrefix(res.header.Get("Content-Type"), "text/html") ||
		strings.Contains(string(res.body), "src=\"http") || strings.Contains(string(res.body), "href=\"http") {
		t.Errorf("status page: %d %s", res.code, res.header)
	}
}

func short(id string) string { return id[:8] }
