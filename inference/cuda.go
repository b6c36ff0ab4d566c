package inference

import (
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	ort "github.com/yalue/onnxruntime_go"
)

// Why a peer does not run on CUDA is decided from the machine upwards: the
// NVIDIA driver and a GPU first, then the onnxruntime build, its CUDA
// provider and the CUDA libraries that provider loads. A machine without a
// GPU is told exactly that, whatever onnxruntime it has; one with a GPU is
// told the missing piece by name. Only when every piece is there does a
// probe session (Engine.probeCUDA) have the last word.

// cudaProviderLib is the CUDA execution provider onnxruntime loads from the
// directory of its core library.
const cudaProviderLib = "libonnxruntime_providers_cuda.so"

// cudaErrorNoDevice is CUDA_ERROR_NO_DEVICE, cuInit's answer on a machine
// whose driver is installed but has no GPU (or none visible to it).
const cudaErrorNoDevice = 100

// cudaDriver is what the NVIDIA driver (libcuda.so.1) says.
type cudaDriver struct {
	loadErr    string // dlerror when libcuda.so.1 does not load; "" when it does
	notFound   bool   // loadErr is "no such file": no driver installed
	initResult int    // cuInit's CUresult, 0 on success
	initName   string // its name, e.g. CUDA_ERROR_NO_DEVICE
	version    int    // cuDriverGetVersion: 12040 means CUDA 12.4
	devices    int    // cuDeviceGetCount
}

// cudaEnv is what the device choice asks of the machine; the tests fake it.
type cudaEnv interface {
	// driver loads libcuda.so.1 and asks it for its GPUs.
	driver() cudaDriver
	// coreCUDA is nil when the onnxruntime core accepts CUDA provider
	// options, i.e. was built with the CUDA provider bridge.
	coreCUDA() error
	// needed lists a shared library's DT_NEEDED entries.
	needed(path string) ([]string, error)
	// load dlopens a library by path, or by name from the system's
	// library path when name has no slash.
	load(name string) error
}

// whyNoCUDA says why sessions cannot run on CUDA device id with the
// onnxruntime library lib, or "" when nothing on the machine rules it out.
// When it returns "", the CUDA libraries the provider needs are loaded.
func whyNoCUDA(env cudaEnv, lib string, id int) string {
	d := env.driver()
	if why := whyNoDevice(d, id); why != "" {
		return why
	}
	if err := env.coreCUDA(); err != nil {
		return fmt.Sprintf("onnxruntime library %s is built without CUDA (%v); `make setup-gpu` installs one with it", lib, err)
	}
	dir := filepath.Dir(lib)
	provider := filepath.Join(dir, cudaProviderLib)
	needs, err := env.needed(provider)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Sprintf("no CUDA provider beside onnxruntime library %s (%s missing; `make setup-gpu` installs a build that has one)", lib, cudaProviderLib)
	}
	if err != nil {
		return fmt.Sprintf("CUDA provider %s unreadable: %v", provider, err)
	}
	if why := driverTooOld(d, needs); why != "" {
		return why
	}
	if missing := loadCUDALibraries(env, dir, needs); len(missing) > 0 {
		return fmt.Sprintf("CUDA libraries missing: %s (not in %s nor on the system's library path; `make setup-gpu` installs them)",
			strings.Join(missing, ", "), dir)
	}
	return ""
}

// whyNoDevice reads the driver's answer.
func whyNoDevice(d cudaDriver, id int) string {
	switch {
	case d.loadErr != "" && d.notFound:
		return "no CUDA device (driver libcuda.so.1 not found)"
	case d.loadErr != "":
		return "no CUDA device (driver libcuda.so.1 does not load: " + d.loadErr + ")"
	case d.initResult == cudaErrorNoDevice, d.initResult == 0 && d.devices == 0:
		return "no CUDA device (CUDA driver present, no GPU)"
	case d.initResult != 0:
		name := d.initName
		if name == "" {
			name = "CUresult " + strconv.Itoa(d.initResult)
		}
		return fmt.Sprintf("no usable CUDA device (the driver's cuInit fails: %s)", name)
	case id < 0 || id >= d.devices:
		return fmt.Sprintf("CUDA device %d asked for; this machine has %d (0 to %d)", id, d.devices, d.devices-1)
	}
	return ""
}

// driverTooOld compares the driver's CUDA version with the major version
// of the CUDA runtime the provider links (libcudart.so.N): within a major
// version newer runtimes run on older drivers, across one they do not.
func driverTooOld(d cudaDriver, needs []string) string {
	for _, n := range needs {
		major, ok := strings.CutPrefix(n, "libcudart.so.")
		if !ok {
			continue
		}
		m, err := strconv.Atoi(major)
		if err == nil && d.version > 0 && d.version < m*1000 {
			return fmt.Sprintf("the NVIDIA driver supports CUDA %d.%d; this onnxruntime's CUDA provider needs CUDA %d (update the driver)",
				d.version/1000, d.version%1000/10, m)
		}
	}
	return ""
}

// cudaLibraries are the CUDA libraries to load before onnxruntime loads its
// provider: the provider's own DT_NEEDED ones but the driver (checked on
// its own), and cuDNN 9, which the provider dlopens by name (onnxruntime's
// CUDA builds since 1.19 use cuDNN 9). NVRTC and cuFFT, also dlopened,
// serve only a few operators: they are loaded when present, never reported
// missing. Their majors follow the CUDA runtime's: NVRTC's is the same,
// cuFFT's one less (cuFFT 11 ships with CUDA 12).
func cudaLibraries(needs []string) (required, optional []string) {
	for _, n := range needs {
		if n != "libcuda.so.1" && (strings.HasPrefix(n, "libcu") || strings.HasPrefix(n, "libnv")) {
			required = append(required, n)
		}
		if major, ok := strings.CutPrefix(n, "libcudart.so."); ok {
			optional = append(optional, "libnvrtc.so."+major)
			if m, err := strconv.Atoi(major); err == nil {
				optional = append(optional, "libcufft.so."+strconv.Itoa(m-1))
			}
		}
	}
	return append(required, "libcudnn.so.9"), optional
}

// loadCUDALibraries loads each library from dir when it is there, else by
// name from the system's library path, and returns those that load from
// neither. Why it is needed: the provider has no RUNPATH, so the dynamic
// loader would not look in dir for them; once loaded, they are found by
// their SONAME when onnxruntime loads the provider.
func loadCUDALibraries(env cudaEnv, dir string, needs []string) []string {
	required, optional := cudaLibraries(needs)
	var missing []string
	for _, name := range required {
		path := filepath.Join(dir, name)
		if _, err := os.Stat(path); err == nil {
			if err := env.load(path); err != nil {
				missing = append(missing, fmt.Sprintf("%s (%v)", name, err)) // there, but no library
			}
		} else if err := env.load(name); err != nil {
			missing = append(missing, name)
		}
	}
	for _, name := range optional {
		path := filepath.Join(dir, name)
		if _, err := os.Stat(path); err != nil {
			path = name
		}
		_ = env.load(path) // an operator that needs it says so when it runs
	}
	return missing
}

// machineCUDA is the real machine.
type machineCUDA struct{}

func (machineCUDA) driver() cudaDriver { return probeDriver() }

func (machineCUDA) coreCUDA() error {
	opts, err := ort.NewCUDAProviderOptions()
	if err != nil {
		return err
	}
	return opts.Destroy()
}

func (machineCUDA) needed(path string) ([]string, error) { return elfNeeded(path) }

func (machineCUDA) load(name string) error { return dlopenGlobal(name) }

// elfNeeded reads a shared library's DT_NEEDED entries, as ldd would list
// its direct dependencies, without loading it.
func elfNeeded(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	needs, err := f.ImportedLibraries()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return needs, nil
}
