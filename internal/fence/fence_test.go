package fence

import (
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/shoal-mesh/shoal"

// onnxruntime is the cgo binding that must stay out of the core.
const onnxruntime = "github.com/yalue/onnxruntime_go"

// allowed lists, for each package of the module, the module packages its
// non-test code may import. A pattern ending in "/..." covers a tree.
// Every package must match a row (a new package must be placed).
var allowed = []struct {
	pkg     string
	imports []string
}{
	{"internal/crdttest", []string{"crdt", "store"}},
	{"internal/...", nil},
	{"store", nil},
	{"store/artifacts", []string{"store"}},
	{"crdt/sign", nil},
	{"crdt", []string{"crdt/sign", "internal/memo"}},
	{"crdt/models", []string{"crdt", "crdt/sign", "internal/memo"}},
	{"crdt/collections", []string{"crdt"}},
	{"sessions", []string{"api", "crdt", "crdt/sign", "store"}},
	{"api", []string{"crdt/...", "store/artifacts"}},
	{"inference", []string{"inference/onnxmodel"}},
	{"inference/onnxmodel", nil},
	{"inference/resultcache", nil},
	{"lifecycle", []string{"api", "crdt/...", "inference/...", "store/...", "internal/errs"}},
	{"serving", []string{"api", "crdt/...", "inference/...", "internal/errs"}},
	{"rag", []string{"api", "crdt/...", "inference/...", "internal/errs"}},
	{"httpapi", []string{"api", "crdt/...", "inference/...", "store/...", "lifecycle", "serving", "rag", "sessions", "internal/errs"}},
	{"grpcapi/inferencepb", nil},
	{"grpcapi", []string{"api", "grpcapi/inferencepb", "httpapi", "inference", "lifecycle", "serving", "internal/errs"}},
	{"peer", []string{"api", "crdt/...", "inference/...", "store/...", "lifecycle", "serving", "rag", "sessions", "httpapi", "grpcapi", "internal/errs"}},
	{"cmd/...", []string{"api", "crdt/...", "inference/...", "store/...", "peer", "sessions", "internal/errs"}},
	{"scripts/gpucheck", []string{"inference/..."}},
	{"e2e/...", []string{"..."}},
}

// noCgo are the packages (trees) that must not depend on onnxruntime,
// directly or through anything they import.
var noCgo = []string{"api", "crdt/...", "store/...", "internal/errs", "internal/memo", "inference/resultcache", "grpcapi/inferencepb", "sessions"}

type pkgInfo struct {
	ImportPath string
	Imports    []string
	Deps       []string
}

func listPackages(t *testing.T) []pkgInfo {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps=false", "-json=ImportPath,Imports,Deps", module+"/...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("go list: %v\n%s", err, ee.Stderr)
		}
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkgInfo
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p pkgInfo
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 10 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	return pkgs
}

// match reports whether rel (a path inside the module) matches pattern.
func match(pattern, rel string) bool {
	if pattern == "..." {
		return true
	}
	if tree, ok := strings.CutSuffix(pattern, "/..."); ok {
		return rel == tree || strings.HasPrefix(rel, tree+"/")
	}
	return rel == pattern
}

func rel(importPath string) (string, bool) {
	return strings.CutPrefix(importPath, module+"/")
}

func TestImportsPointOneWay(t *testing.T) {
	for _, p := range listPackages(t) {
		self, ok := rel(p.ImportPath)
		if !ok {
			continue
		}
		row := slices.IndexFunc(allowed, func(a struct {
			pkg     string
			imports []string
		}) bool {
			return match(a.pkg, self)
		})
		if row < 0 {
			t.Errorf("package %s has no row in the fence: place it in the architecture (docs/architecture.md) and here", self)
			continue
		}
		for _, imp := range p.Imports {
			dep, ok := rel(imp)
			if !ok {
				continue // outside the module
			}
			if !slices.ContainsFunc(allowed[row].imports, func(pat string) bool { return match(pat, dep) }) {
				t.Errorf("%s imports %s: against the one-way arrows (allowed: %v)", self, dep, allowed[row].imports)
			}
		}
	}
}

func TestCoreHasNoCgoRuntime(t *testing.T) {
	checked := 0
	for _, p := range listPackages(t) {
		self, ok := rel(p.ImportPath)
		if !ok || !slices.ContainsFunc(noCgo, func(pat string) bool { return match(pat, self) }) {
			continue
		}
		checked++
		if slices.Contains(p.Deps, onnxruntime) || slices.Contains(p.Imports, onnxruntime) {
			t.Errorf("%s depends on %s: onnxruntime's cgo binding must stay out of the replicated state and the wire types", self, onnxruntime)
		}
	}
	if checked < 6 {
		t.Fatalf("checked only %d packages: the fence matched too little", checked)
	}
}

// TestTheFenceBites checks the fence's own matching on a made-up
// violation, so a typo in a pattern cannot silently allow everything.
func TestTheFenceBites(t *testing.T) {
	if !match("crdt/...", "crdt/models") || !match("crdt/...", "crdt") || match("crdt/...", "crdtx") || match("api", "api/v2") {
		t.Fatal("pattern matching is wrong")
	}
	for _, a := range allowed {
		if a.pkg == "crdt" && slices.ContainsFunc(a.imports, func(pat string) bool { return match(pat, "inference") }) {
			t.Fatal("crdt may import inference: the fence allows the core to link onnxruntime")
		}
	}
}
