package inference

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/shoal-mesh/shoal/inference/onnxmodel"
)

// Devices accepted by Config.Device.
const (
	DeviceAuto = "auto"
	DeviceCPU  = "cpu"
	DeviceCUDA = "cuda"
)

// Sentinel errors.
var (
	// ErrNoCUDA means --device cuda was asked for and the CUDA execution
	// provider could not run a model here.
	ErrNoCUDA = errors.New("CUDA execution provider unavailable")
	// ErrLoad means onnxruntime could not create a session from the bytes.
	ErrLoad = errors.New("model does not load")
	// ErrWarmup means the warm-up inference failed.
	ErrWarmup = errors.New("model warm-up failed")
)

// Config configures an Engine. The zero value is usable: default library
// search, device auto, onnxruntime's default thread counts.
type Config struct {
	// Library is the onnxruntime shared library; "" searches the default
	// places (see FindLibrary).
	Library string
	// Device is auto (CUDA when its provider loads and a GPU is present,
	// else CPU), cpu or cuda (fail when CUDA is unavailable). Default auto.
	Device string
	// CUDADeviceID selects the GPU. Default 0.
	CUDADeviceID int
	// IntraOpThreads bounds the threads one inference uses; 0 means
	// one per core (runtime.NumCPU, threads not pinned).
	IntraOpThreads int
	// Logger receives engine logs; default slog.Default().
	Logger *slog.Logger
}

// Engine creates sessions on one device. Every engine in a process shares
// the process's onnxruntime environment.
type Engine struct {
	cfg          Config
	log          *slog.Logger
	library      string
	version      string
	device       string
	deviceReason string
}

// Open initialises onnxruntime and picks the device.
func Open(cfg Config) (*Engine, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	switch cfg.Device {
	case "":
		cfg.Device = DeviceAuto
	case DeviceAuto, DeviceCPU, DeviceCUDA:
	default:
		return nil, fmt.Errorf("device %q: use auto, cpu or cuda", cfg.Device)
	}
	if cfg.IntraOpThreads < 0 {
		return nil, fmt.Errorf("intra-op threads %d: must be 0 (default) or more", cfg.IntraOpThreads)
	}
	lib, err := FindLibrary(cfg.Library)
	if err != nil {
		return nil, err
	}
	version, err := Acquire(lib)
	if err != nil {
		return nil, err
	}
	e := &Engine{cfg: cfg, log: cfg.Logger, library: lib, version: version, device: DeviceCPU}
	if cfg.Device != DeviceCPU {
		if why := e.whyNotCUDA(); why != "" {
			if cfg.Device == DeviceCUDA {
				Release()
				return nil, fmt.Errorf("%w: %s", ErrNoCUDA, why)
			}
			e.deviceReason = why
		} else {
			e.device = DeviceCUDA
		}
	}
	e.log.Info("inference engine ready", "onnxruntime", version, "library", lib,
		"device", e.device, "requested", cfg.Device, "why_not_cuda", e.deviceReason,
		"intra_op_threads", cfg.IntraOpThreads)
	return e, nil
}

// whyNotCUDA says why sessions cannot run on CUDA here, "" when they can:
// first what the machine shows (driver, GPU, onnxruntime build, provider,
// CUDA libraries; see whyNoCUDA), then a probe session, since only a real
// session proves the whole chain works.
func (e *Engine) whyNotCUDA() string {
	if why := whyNoCUDA(machineCUDA{}, e.library, e.cfg.CUDADeviceID); why != "" {
		return why
	}
	if err := e.probeCUDA(); err != nil {
		return "the CUDA provider fails a probe session: " + err.Error()
	}
	return ""
}

// probeCUDA runs a one-operator model on the CUDA provider.
func (e *Engine) probeCUDA() error {
	opts, err := ort.NewSessionOptions()
	if err != nil {
		return err
	}
	defer opts.Destroy()
	if err := e.appendCUDA(opts); err != nil {
		return err
	}
	s, err := ort.NewDynamicAdvancedSessionWithONNXData(onnxmodel.Identity(onnxmodel.Float, []int64{1}), []string{"x"}, []string{"y"}, opts)
	if err != nil {
		return err
	}
	return s.Destroy()
}

func (e *Engine) appendCUDA(opts *ort.SessionOptions) error {
	cuda, err := ort.NewCUDAProviderOptions()
	if err != nil {
		return err
	}
	defer cuda.Destroy()
	if err := cuda.Update(map[string]string{"device_id": fmt.Sprint(e.cfg.CUDADeviceID)}); err != nil {
		return err
	}
	return opts.AppendExecutionProviderCUDA(cuda)
}

// Device is the device sessions run on: cpu or cuda.
func (e *Engine) Device() string { return e.device }

// DeviceReason says why auto did not pick CUDA ("" when it did or was not
// asked to).
func (e *Engine) DeviceReason() string { return e.deviceReason }

// Version is the onnxruntime version.
func (e *Engine) Version() string { return e.version }

// Library is the path of the onnxruntime library in use.
func (e *Engine) Library() string { return e.library }

// Close releases the engine's hold on the environment. Sessions must be
// closed first.
func (e *Engine) Close() error { return Release() }

// Ref names the artifact a session was created from.
type Ref struct {
	Model   string `json:"model"`
	Version string `json:"version"`
	CID     string `json:"cid"`
}

func (r Ref) String() string { return r.Model + "@" + r.Version }

// Load creates a session from verified model bytes and warms it up: it
// returns only sessions that have run an inference on this device. warmup
// is the request to warm up with; nil synthesises zeros (see warmUp),
// which suits models whose dynamic dimensions take any size.
func (e *Engine) Load(ctx context.Context, ref Ref, data []byte, warmup *InferRequest) (*Session, error) {
	start := time.Now()
	// Creating a session is normally well under a second; one was seen to
	// take more than 30 s on a loaded machine, inside onnxruntime. Say so
	// while it happens rather than only in the load time afterwards.
	slow := time.AfterFunc(slowLoad, func() {
		e.log.Warn("model session still being created by onnxruntime", "model", ref.Model, "version", ref.Version, "after", slowLoad)
	})
	defer slow.Stop()
	inputs, outputs, err := probeIO(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrLoad, ref, err)
	}
	s := &Session{Ref: ref, device: e.device, drained: make(chan struct{})}
	for _, in := range inputs {
		m, err := tensorMeta(in)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: input %v", ErrLoad, ref, err)
		}
		s.inputs = append(s.inputs, m)
	}
	for _, out := range outputs {
		m, err := tensorMeta(out)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: output %v", ErrLoad, ref, err)
		}
		s.outputs = append(s.outputs, m)
	}
	opts, err := ort.NewSessionOptions()
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrLoad, ref, err)
	}
	defer opts.Destroy()
	// Failed runs come back as Go errors and are logged here with their
	// request; onnxruntime's own copies on stderr would only be noise.
	if err := opts.SetLogSeverityLevel(ort.LoggingLevelFatal); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrLoad, ref, err)
	}
	if err := ApplyThreading(opts, e.cfg.IntraOpThreads); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrLoad, ref, err)
	}
	if e.device == DeviceCUDA {
		if err := e.appendCUDA(opts); err != nil {
			return nil, fmt.Errorf("%w: %s: CUDA provider: %v", ErrLoad, ref, err)
		}
	}
	s.s, err = ort.NewDynamicAdvancedSessionWithONNXData(data, names(s.inputs), names(s.outputs), opts)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrLoad, ref, err)
	}
	slow.Stop()
	s.LoadTime = time.Since(start)
	wstart := time.Now()
	if err := s.warmUp(ctx, warmup); err != nil {
		s.s.Destroy()
		return nil, fmt.Errorf("%w: %s: %v", ErrWarmup, ref, err)
	}
	s.WarmupTime = time.Since(wstart)
	e.log.Info("model session ready", "model", ref.Model, "version", ref.Version, "device", e.device,
		"load_ms", s.LoadTime.Milliseconds(), "warmup_ms", s.WarmupTime.Milliseconds())
	return s, nil
}

// slowLoad is when Load warns that onnxruntime is still creating a session.
const slowLoad = 10 * time.Second

// LoadFile is Load from a file on disk, for tools and benchmarks.
func (e *Engine) LoadFile(ctx context.Context, ref Ref, path string, warmup *InferRequest) (*Session, error) {
	data, err := os.ReadFile(filepath.Clean(path))
	if err != nil {
		return nil, err
	}
	return e.Load(ctx, ref, data, warmup)
}

// ApplyThreading sets the thread options every Shoal session uses:
// intraOp threads per inference (0: one per core, unpinned)
// and no spinning. onnxruntime's worker threads spin-wait after a run by
// default, which wins microseconds in a benchmark loop but, on a gateway,
// burns the cores the HTTP server, replication and other models need.
func ApplyThreading(opts *ort.SessionOptions, intraOp int) error {
	// 0 means one thread per core, and is passed to onnxruntime as that
	// count: left at its own default, onnxruntime also pins each thread to
	// a core, which on a gateway's shared cores buys nothing (and the
	// stalls of OrtCreateSession seen on loaded test machines were all in
	// sessions made with the default options; see probeIO).
	if intraOp == 0 {
		intraOp = runtime.NumCPU()
	}
	if err := opts.SetIntraOpNumThreads(intraOp); err != nil {
		return err
	}
	return opts.AddSessionConfigEntry("session.intra_op.allow_spinning", "0")
}

// probeIO reads a model's inputs and outputs through a throwaway session
// with minimal, explicit options: one thread (so no thread pool is made and
// torn down for it), no graph optimisation. onnxruntime_go's in-memory
// variant of this call uses onnxruntime's default options; the variant
// that takes options takes a path, so the bytes go through an in-memory
// file. (The rare session creation that takes more than 30 s on loaded
// test machines happens with these options too; see Load.)
func probeIO(data []byte) ([]ort.InputOutputInfo, []ort.InputOutputInfo, error) {
	opts, err := ort.NewSessionOptions()
	if err != nil {
		return nil, nil, err
	}
	defer opts.Destroy()
	for _, set := range []func() error{
		func() error { return opts.SetIntraOpNumThreads(1) },
		func() error { return opts.SetInterOpNumThreads(1) },
		func() error { return opts.SetGraphOptimizationLevel(ort.GraphOptimizationLevelDisableAll) },
		func() error { return opts.SetLogSeverityLevel(ort.LoggingLevelFatal) },
	} {
		if err := set(); err != nil {
			return nil, nil, err
		}
	}
	path, cleanup, err := memFile("shoal-model.onnx", data)
	if err != nil {
		return nil, nil, fmt.Errorf("staging the model for inspection: %v", err)
	}
	defer cleanup()
	ins, outs, err := ort.GetInputOutputInfoWithOptions(path, opts)
	if err != nil {
		// onnxruntime names the staging path, which means nothing to the
		// operator reading the version's load error.
		return nil, nil, errors.New(strings.ReplaceAll(err.Error(), path, "the artifact"))
	}
	return ins, outs, nil
}

// tempFile writes data to a temporary file; cleanup removes it.
func tempFile(name string, data []byte) (path string, cleanup func(), err error) {
	f, err := os.CreateTemp("", "*-"+name)
	if err != nil {
		return "", nil, err
	}
	cleanup = func() { os.Remove(f.Name()) }
	if _, err := f.Write(data); err != nil {
		f.Close()
		cleanup()
		return "", nil, err
	}
	if err := f.Close(); err != nil {
		cleanup()
		return "", nil, err
	}
	return f.Name(), cleanup, nil
}

func tensorMeta(info ort.InputOutputInfo) (TensorMetadata, error) {
	if info.OrtValueType != ort.ONNXTypeTensor {
		return TensorMetadata{}, fmt.Errorf("%q is a %s; only tensors are supported", info.Name, info.OrtValueType)
	}
	dt, ok := datatypeByORT(info.DataType)
	if !ok {
		return TensorMetadata{}, fmt.Errorf("%q has element type %s, which Shoal does not serve", info.Name, info.DataType)
	}
	shape := []int64(info.Dimensions)
	if shape == nil {
		shape = []int64{}
	}
	return TensorMetadata{Name: info.Name, Datatype: dt.Name, Shape: shape}, nil
}

func names(ms []TensorMetadata) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Name
	}
	return out
}
