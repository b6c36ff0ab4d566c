package inference

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// repoLibrary finds the library `make setup` installs. A missing library is
// a failure, not a skip: the test command installs it first.
func repoLibrary(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	lib := filepath.Join(filepath.Dir(file), "..", DefaultLibraryPath)
	if _, err := os.Stat(lib); err != nil {
		t.Fatalf("onnxruntime library missing (%v): run `make setup`", err)
	}
	return lib
}

func TestRuntimeInitialises(t *testing.T) {
	lib := repoLibrary(t)
	v, err := Acquire(lib)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(v, "1.30.") {
		t.Errorf("onnxruntime version %q, want the pinned 1.30.x", v)
	}
	if Library() != lib {
		t.Errorf("Library() = %q, want %q", Library(), lib)
	}
	// A second peer in the same process shares the environment.
	v2, err := Acquire("/ignored/because/already/initialised")
	if err != nil || v2 != v {
		t.Fatalf("second Acquire = %q, %v", v2, err)
	}
	if err := Release(); err != nil {
		t.Fatal(err)
	}
	if err := Release(); err != nil {
		t.Fatal(err)
	}
	// The environment outlives its users: a later Acquire finds it.
	if v3, err := Acquire("/ignored"); err != nil || v3 != v || Library() != lib {
		t.Errorf("Acquire after the last Release = %q, %v (library %q)", v3, err, Library())
	}
	Release()
}

func TestFindLibrary(t *testing.T) {
	if _, err := FindLibrary("/nonexistent/libonnxruntime.so"); !errors.Is(err, ErrNoLibrary) {
		t.Errorf("explicit missing path: err = %v, want ErrNoLibrary", err)
	}
	t.Setenv(LibraryEnv, "/nonexistent/env.so")
	if _, err := FindLibrary(""); !errors.Is(err, ErrNoLibrary) || !strings.Contains(err.Error(), LibraryEnv) {
		t.Errorf("env missing path: err = %v", err)
	}
	lib := repoLibrary(t)
	t.Setenv(LibraryEnv, lib)
	want, _ := filepath.Abs(lib)
	if got, err := FindLibrary(""); err != nil || got != want {
		t.Errorf("FindLibrary via env = %q, %v", got, err)
	}
}
