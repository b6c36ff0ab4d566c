// Package inference runs ONNX models through onnxruntime
// (github.com/yalue/onnxruntime_go). onnxruntime allows one environment per
// process, so the runtime here is a process-wide singleton that every peer
// in the process shares; sessions (added with the model lifecycle) are per
// model version.
//
// The onnxruntime shared library is not a Go module: `make setup` fetches a
// pinned CPU build into deps/, `make setup-gpu` a CUDA build beside it, and
// FindLibrary looks for them there.
package inference

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	ort "github.com/yalue/onnxruntime_go"
)

// LibraryEnv names the environment variable that points at the library.
const LibraryEnv = "SHOAL_ORT_LIB"

// DefaultLibraryPath is where `make setup` puts the CPU library, relative to
// the repository root (or the directory holding the binary).
const DefaultLibraryPath = "deps/onnxruntime/libonnxruntime.so"

// GPULibraryPath is where `make setup-gpu` puts onnxruntime with CUDA and
// the CUDA libraries its provider needs. FindLibrary prefers it: it runs
// on CPU too, and a peer on a machine without a GPU says why not CUDA.
const GPULibraryPath = "deps/onnxruntime-gpu/libonnxruntime.so"

// ErrNoLibrary means no onnxruntime shared library was found.
var ErrNoLibrary = errors.New("onnxruntime library not found")

// FindLibrary resolves the onnxruntime library: explicit path, then
// $SHOAL_ORT_LIB, then under the working directory, the binary's directory
// and its parent (the nearest first) GPULibraryPath, else DefaultLibraryPath.
func FindLibrary(explicit string) (string, error) {
	if explicit != "" {
		if _, err := os.Stat(explicit); err != nil {
			return "", fmt.Errorf("%w: %s: %v", ErrNoLibrary, explicit, err)
		}
		return filepath.Abs(explicit)
	}
	if env := os.Getenv(LibraryEnv); env != "" {
		if _, err := os.Stat(env); err != nil {
			return "", fmt.Errorf("%w: $%s=%s: %v", ErrNoLibrary, LibraryEnv, env, err)
		}
		return filepath.Abs(env)
	}
	var tried []string
	for _, c := range libraryCandidates() {
		if _, err := os.Stat(c); err == nil {
			return filepath.Abs(c)
		}
		tried = append(tried, c)
	}
	return "", fmt.Errorf("%w (tried %v; run `make setup` or set --ort-lib / $%s)", ErrNoLibrary, tried, LibraryEnv)
}

// libraryCandidates lists the default places, in order of preference.
func libraryCandidates() []string {
	bases := []string{""}
	if exe, err := os.Executable(); err == nil {
		dir := filepath.Dir(exe)
		bases = append(bases, dir, filepath.Join(dir, ".."))
	}
	var out []string
	for _, b := range bases {
		out = append(out, filepath.Join(b, GPULibraryPath), filepath.Join(b, DefaultLibraryPath))
	}
	return out
}

var (
	rtMu      sync.Mutex
	rtRefs    int
	rtLibrary string
)

// Acquire initialises the process's onnxruntime environment from the given
// library (first caller wins) and returns its version. Every successful
// Acquire must be paired with a Release.
func Acquire(library string) (string, error) {
	rtMu.Lock()
	defer rtMu.Unlock()
	if rtLibrary == "" {
		ort.SetSharedLibraryPath(library)
		if err := ort.InitializeEnvironment(); err != nil {
			return "", fmt.Errorf("initialise onnxruntime from %s: %w", library, err)
		}
		rtLibrary = library
	}
	rtRefs++
	return ort.GetVersion(), nil
}

// Release drops one reference. The environment itself lives as long as
// the process: a peer has one, and in processes that start and stop peers
// (tests, embedders) destroying it while a stray session is still being
// created or closed elsewhere would crash onnxruntime, and re-creating it
// buys nothing.
func Release() error {
	rtMu.Lock()
	defer rtMu.Unlock()
	if rtRefs > 0 {
		rtRefs--
	}
	return nil
}

// Library returns the path the environment was initialised from, or "".
func Library() string {
	rtMu.Lock()
	defer rtMu.Unlock()
	return rtLibrary
}

// DefaultModelPath is where `make setup` puts the default model (the
// PaddleOCR text-direction classifier), relative to the repository root.
const DefaultModelPath = "deps/models/ocr-cls.onnx"

// FindAsset looks for a setup-installed file (rel, relative to the
// repository root) under the working directory, the binary's directory
// and its parent, like FindLibrary.
func FindAsset(rel string) (string, bool) {
	candidates := []string{rel}
	if exe, err := os.Executable(); err == nil {
		dir := filepath.Dir(exe)
		candidates = append(candidates, filepath.Join(dir, rel), filepath.Join(dir, "..", rel))
	}
	for _, c := range candidates {
		if _, err := os.Stat(c); err == nil {
			if abs, err := filepath.Abs(c); err == nil {
				return abs, true
			}
		}
	}
	return "", false
}
