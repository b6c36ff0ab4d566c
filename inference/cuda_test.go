package inference

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeCUDA is a machine as whyNoCUDA sees it. Libraries load from files
// that exist (the test writes them into the provider's directory) or by
// name when listed in system.
type fakeCUDA struct {
	drv     cudaDriver
	core    error
	needs   []string
	needErr error
	system  []string
	loaded  []string
}

func (f *fakeCUDA) driver() cudaDriver              { return f.drv }
func (f *fakeCUDA) coreCUDA() error                 { return f.core }
func (f *fakeCUDA) needed(string) ([]string, error) { return f.needs, f.needErr }
func (f *fakeCUDA) load(name string) error {
	_, err := os.Stat(name)
	if strings.Contains(name, "/") && err != nil || !strings.Contains(name, "/") && !slices.Contains(f.system, name) {
		return fmt.Errorf("%s: cannot open shared object file", name)
	}
	f.loaded = append(f.loaded, filepath.Base(name))
	return nil
}

// providerNeeds are libonnxruntime_providers_cuda.so's DT_NEEDED in the
// onnxruntime_gpu 1.29.0 build `make setup-gpu` installs.
var providerNeeds = []string{"libcublasLt.so.12", "libcublas.so.12", "libcurand.so.10", "libcudart.so.12", "libcuda.so.1",
	"libdl.so.2", "librt.so.1", "libpthread.so.0", "libstdc++.so.6", "libm.so.6", "libgcc_s.so.1", "libc.so.6", "ld-linux-x86-64.so.2"}

var oneGPU = cudaDriver{version: 12080, devices: 1}

func TestWhyNoCUDANamesTheMissingPiece(t *testing.T) {
	for _, tc := range []struct {
		name    string
		env     fakeCUDA
		inDir   []string // files in the provider's directory
		id      int
		want    string // the reason, or a part of it after "~"
		wantLds []string
	}{
		{name: "no driver", env: fakeCUDA{drv: cudaDriver{loadErr: "libcuda.so.1: cannot open shared object file: No such file or directory", notFound: true}},
			want: "no CUDA device (driver libcuda.so.1 not found)"},
		{name: "broken driver", env: fakeCUDA{drv: cudaDriver{loadErr: "libcuda.so.1: wrong ELF class: ELFCLASS32"}},
			want: "no CUDA device (driver libcuda.so.1 does not load: libcuda.so.1: wrong ELF class: ELFCLASS32)"},
		{name: "driver without GPU", env: fakeCUDA{drv: cudaDriver{version: 12080, initResult: cudaErrorNoDevice, initName: "CUDA_ERROR_NO_DEVICE"}},
			want: "no CUDA device (CUDA driver present, no GPU)"},
		{name: "driver with no device counted", env: fakeCUDA{drv: cudaDriver{version: 12080}},
			want: "no CUDA device (CUDA driver present, no GPU)"},
		{name: "driver fails", env: fakeCUDA{drv: cudaDriver{initResult: 803, initName: "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH"}},
			want: "no usable CUDA device (the driver's cuInit fails: CUDA_ERROR_SYSTEM_DRIVER_MISMATCH)"},
		{name: "device id beyond the GPUs", env: fakeCUDA{drv: oneGPU}, id: 1,
			want: "CUDA device 1 asked for; this machine has 1 (0 to 0)"},
		{name: "CPU-only core", env: fakeCUDA{drv: oneGPU, core: fmt.Errorf("CUDA execution provider is not enabled in this build.")},
			want: "~is built without CUDA (CUDA execution provider is not enabled in this build.); `make setup-gpu`"},
		{name: "no provider beside the core", env: fakeCUDA{drv: oneGPU, needErr: &fs.PathError{Op: "open", Path: "x", Err: fs.ErrNotExist}},
			want: "~(libonnxruntime_providers_cuda.so missing; `make setup-gpu` installs a build that has one)"},
		{name: "driver older than the runtime", env: fakeCUDA{drv: cudaDriver{version: 11040, devices: 1}, needs: providerNeeds},
			want: "the NVIDIA driver supports CUDA 11.4; this onnxruntime's CUDA provider needs CUDA 12 (update the driver)"},
		{name: "CUDA libraries missing", env: fakeCUDA{drv: oneGPU, needs: providerNeeds}, inDir: []string{"libcudart.so.12"},
			want: "~CUDA libraries missing: libcublasLt.so.12, libcublas.so.12, libcurand.so.10, libcudnn.so.9 (not in "},
		{name: "everything beside the core", env: fakeCUDA{drv: oneGPU, needs: providerNeeds},
			inDir:   []string{"libcudart.so.12", "libcublasLt.so.12", "libcublas.so.12", "libcurand.so.10", "libcudnn.so.9", "libnvrtc.so.12", "libcufft.so.11"},
			wantLds: []string{"libcublasLt.so.12", "libcublas.so.12", "libcurand.so.10", "libcudart.so.12", "libcudnn.so.9", "libnvrtc.so.12", "libcufft.so.11"}},
		{name: "CUDA installed system-wide", env: fakeCUDA{drv: oneGPU, needs: providerNeeds,
			system: []string{"libcudart.so.12", "libcublasLt.so.12", "libcublas.so.12", "libcurand.so.10", "libcudnn.so.9"}},
			wantLds: []string{"libcublasLt.so.12", "libcublas.so.12", "libcurand.so.10", "libcudart.so.12", "libcudnn.so.9"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range tc.inDir {
				if err := os.WriteFile(filepath.Join(dir, f), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got := whyNoCUDA(&tc.env, filepath.Join(dir, "libonnxruntime.so"), tc.id)
			if part, ok := strings.CutPrefix(tc.want, "~"); ok && !strings.Contains(got, part) || !ok && got != tc.want {
				t.Errorf("reason %q, want %q", got, tc.want)
			}
			if tc.want == "" && !slices.Equal(tc.env.loaded, tc.wantLds) {
				t.Errorf("loaded %v, want %v in that order", tc.env.loaded, tc.wantLds)
			}
		})
	}
}

// On this machine, as it is: the reason follows from whether the dynamic
// loader can find libcuda.so.1 at all (ldconfig's cache, $LD_LIBRARY_PATH),
// looked up here without the code under test.
func TestWhyNoCUDAOnThisMachine(t *testing.T) {
	lib := repoLibrary(t)
	if _, err := Acquire(lib); err != nil {
		t.Fatal(err)
	}
	defer Release()
	why := whyNoCUDA(machineCUDA{}, lib, 0)
	t.Logf("this machine: %q", why)
	if !driverFindable() {
		if why != "no CUDA device (driver libcuda.so.1 not found)" {
			t.Errorf("no libcuda.so.1 here, yet the reason is %q", why)
		}
		return
	}
	if _, err := os.Stat("/dev/nvidia0"); err != nil && why != "no CUDA device (CUDA driver present, no GPU)" &&
		!strings.HasPrefix(why, "no usable CUDA device") {
		t.Errorf("a driver without /dev/nvidia0, yet the reason is %q", why)
	}
}

func driverFindable() bool {
	out, _ := exec.Command("ldconfig", "-p").Output()
	if strings.Contains(string(out), "libcuda.so.1 ") {
		return true
	}
	for _, d := range filepath.SplitList(os.Getenv("LD_LIBRARY_PATH")) {
		if _, err := os.Stat(filepath.Join(d, "libcuda.so.1")); err == nil {
			return true
		}
	}
	return false
}

// The real loader and ELF reader, on a library built here: present in the
// provider's directory it loads; one of the provider's libraries that
// exists nowhere is reported by name; a file that is no library is
// reported as missing too (it cannot serve).
func TestLoadCUDALibrariesWithTheRealLoader(t *testing.T) {
	dir := t.TempDir()
	cc := exec.Command("gcc", "-shared", "-fPIC", "-o", filepath.Join(dir, "libcushoaltest.so.1"), "-x", "c", "-",
		"-Wl,--no-as-needed", "-lm")
	cc.Stdin = strings.NewReader("int shoal_cuda_test(void) { return 1; }\n")
	if out, err := cc.CombinedOutput(); err != nil {
		t.Fatalf("gcc (cgo needs it anyway): %v\n%s", err, out)
	}
	needs, err := elfNeeded(filepath.Join(dir, "libcushoaltest.so.1"))
	if err != nil || !slices.Contains(needs, "libm.so.6") {
		t.Fatalf("DT_NEEDED = %v, %v; want libm.so.6 among them", needs, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "libcunotelf.so.1"), []byte("not a library"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := loadCUDALibraries(machineCUDA{}, dir, []string{"libcushoaltest.so.1", "libcunotelf.so.1", "libcushoalnowhere.so.7", "libm.so.6"})
	for i, m := range missing {
		if name, detail, ok := strings.Cut(m, " ("); ok {
			if !strings.Contains(detail, "invalid ELF header") && !strings.Contains(detail, "file too short") {
				t.Errorf("%s: detail %q does not say why the file is no library", name, detail)
			}
			missing[i] = name
		}
	}
	want := []string{"libcunotelf.so.1", "libcushoalnowhere.so.7", "libcudnn.so.9"}
	if driverFindable() { // a CUDA machine may well have cuDNN installed
		want = want[:2]
		missing = slices.DeleteFunc(missing, func(s string) bool { return s == "libcudnn.so.9" })
	}
	if !slices.Equal(missing, want) {
		t.Errorf("missing %v, want %v", missing, want)
	}
	if _, err := elfNeeded(filepath.Join(dir, "absent.so")); !os.IsNotExist(err) {
		t.Errorf("absent provider: err = %v, want not-exist", err)
	}
}

// An engine asked for auto on a machine without CUDA runs on CPU and keeps
// the one-line reason for the log and /v1/status; asked for cuda, it
// refuses with the same reason.
func TestOpenStatesWhyNotCUDA(t *testing.T) {
	if driverFindable() {
		t.Log("this machine has a CUDA driver: the fallback is not exercised here")
		return
	}
	e := openEngine(t)
	if e.Device() != DeviceCPU || e.DeviceReason() != "no CUDA device (driver libcuda.so.1 not found)" {
		t.Errorf("device %s, reason %q", e.Device(), e.DeviceReason())
	}
	_, err := Open(Config{Library: repoLibrary(t), Device: DeviceCUDA})
	if err == nil || err.Error() != "CUDA execution provider unavailable: no CUDA device (driver libcuda.so.1 not found)" {
		t.Errorf("--device cuda: %v", err)
	}
}

func TestFindLibraryPrefersTheGPUBuild(t *testing.T) {
	t.Setenv(LibraryEnv, "")
	t.Chdir(t.TempDir())
	for _, p := range []string{DefaultLibraryPath, GPULibraryPath} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := FindLibrary(""); err != nil || !strings.HasSuffix(got, GPULibraryPath) {
		t.Errorf("with both builds: %q, %v; want the GPU build", got, err)
	}
	if err := os.Remove(GPULibraryPath); err != nil {
		t.Fatal(err)
	}
	if got, err := FindLibrary(""); err != nil || !strings.HasSuffix(got, DefaultLibraryPath) {
		t.Errorf("CPU build only: %q, %v; want it", got, err)
	}
}
