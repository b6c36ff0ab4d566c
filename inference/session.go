package inference

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"sync"
	"time"

	ort "github.com/yalue/onnxruntime_go"
)

// ErrRetired means the session was swapped out and drained; callers look
// up the model's current session again.
var ErrRetired = errors.New("session retired")

// Session is one loaded model version. Inferences run concurrently
// (onnxruntime sessions are safe for concurrent Run). A retired session
// takes no new requests, finishes the ones it has, then closes: that is
// what lets a version swap drop nothing.
type Session struct {
	Ref
	LoadTime   time.Duration
	WarmupTime time.Duration

	device  string
	inputs  []TensorMetadata
	outputs []TensorMetadata
	s       *ort.DynamicAdvancedSession

	mu       sync.Mutex
	inflight int
	retired  bool
	closed   bool
	drained  chan struct{}
}

// Inputs and Outputs are the model's tensors as onnxruntime reports them.
func (s *Session) Inputs() []TensorMetadata  { return s.inputs }
func (s *Session) Outputs() []TensorMetadata { return s.outputs }

// Device is where the session runs.
func (s *Session) Device() string { return s.device }

// Metadata is the OIP v2 model metadata of this version.
func (s *Session) Metadata() ModelMetadata {
	return ModelMetadata{Name: s.Model, Versions: []string{s.Version}, Platform: "onnxruntime_onnx", Inputs: s.inputs, Outputs: s.outputs}
}

// Acquire takes a reference for one request; false means the session is
// retired. Every true Acquire needs a Release.
func (s *Session) Acquire() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.retired {
		return false
	}
	s.inflight++
	return true
}

// Release ends a request; the last one out of a retired session closes it.
func (s *Session) Release() {
	s.mu.Lock()
	s.inflight--
	last := s.retired && s.inflight == 0
	s.mu.Unlock()
	if last {
		s.close()
	}
}

// Retire stops new requests and closes the session once in-flight ones
// are done. Drained is closed then.
func (s *Session) Retire() {
	s.mu.Lock()
	if s.retired {
		s.mu.Unlock()
		return
	}
	s.retired = true
	idle := s.inflight == 0
	s.mu.Unlock()
	if idle {
		s.close()
	}
}

// Drained is closed when a retired session has closed.
func (s *Session) Drained() <-chan struct{} { return s.drained }

func (s *Session) close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()
	s.s.Destroy()
	close(s.drained)
}

// Prepared is a validated, decoded request, ready to run.
type Prepared struct {
	inputs  []*tensor // in the session's input order
	outputs []int     // indexes into the session's outputs, in request order
}

// Canonical is the request's identity for the result cache: two requests
// with equal Canonical bytes compute the same outputs on one version.
func (p *Prepared) Canonical() []byte {
	var b []byte
	for _, t := range p.inputs {
		b = t.canonical(b)
	}
	for _, o := range p.outputs {
		b = append(b, byte(o>>8), byte(o))
	}
	return b
}

// Prepare checks a request against the model's inputs and outputs and
// decodes its tensors. Errors wrap ErrBadRequest.
func (s *Session) Prepare(req *InferRequest) (*Prepared, error) {
	if len(req.Inputs) == 0 {
		return nil, badRequest("no inputs; the model takes %s", describe(s.inputs))
	}
	byName := map[string]RequestInput{}
	for _, in := range req.Inputs {
		if _, dup := byName[in.Name]; dup {
			return nil, badRequest("input %q given twice", in.Name)
		}
		byName[in.Name] = in
	}
	p := &Prepared{}
	for _, meta := range s.inputs {
		in, ok := byName[meta.Name]
		if !ok {
			return nil, badRequest("missing input %q; the model takes %s", meta.Name, describe(s.inputs))
		}
		delete(byName, meta.Name)
		t, err := decodeInput(in, meta)
		if err != nil {
			return nil, err
		}
		p.inputs = append(p.inputs, t)
	}
	for name := range byName {
		return nil, badRequest("unknown input %q; the model takes %s", name, describe(s.inputs))
	}
	if len(req.Outputs) == 0 {
		for i := range s.outputs {
			p.outputs = append(p.outputs, i)
		}
		return p, nil
	}
	seen := map[string]bool{}
	for _, o := range req.Outputs {
		if seen[o.Name] {
			return nil, badRequest("output %q requested twice", o.Name)
		}
		seen[o.Name] = true
		idx := -1
		for i, m := range s.outputs {
			if m.Name == o.Name {
				idx = i
			}
		}
		if idx < 0 {
			return nil, badRequest("unknown output %q; the model gives %s", o.Name, describe(s.outputs))
		}
		p.outputs = append(p.outputs, idx)
	}
	return p, nil
}

func describe(ms []TensorMetadata) string {
	parts := make([]string, len(ms))
	for i, m := range ms {
		parts[i] = fmt.Sprintf("%s %s%v", m.Name, m.Datatype, m.Shape)
	}
	sort.Strings(parts)
	return fmt.Sprint(parts)
}

// Run computes the prepared request's outputs. The session must be
// acquired.
func (s *Session) Run(ctx context.Context, p *Prepared) ([]ResponseOutput, error) {
	values := make([]ort.Value, len(p.inputs))
	defer destroyAll(values)
	for i, t := range p.inputs {
		v, err := t.ortValue()
		if err != nil {
			return nil, badRequest("input %q: %v", t.name, err)
		}
		values[i] = v
	}
	outs, err := s.run(ctx, values)
	if err != nil {
		return nil, err
	}
	defer destroyAll(outs)
	res := make([]ResponseOutput, 0, len(p.outputs))
	for _, idx := range p.outputs {
		o, err := encodeOutput(s.outputs[idx].Name, outs[idx])
		if err != nil {
			return nil, err
		}
		res = append(res, o)
	}
	return res, nil
}

func (s *Session) run(ctx context.Context, inputs []ort.Value) ([]ort.Value, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	opts, err := ort.NewRunOptions()
	if err != nil {
		return nil, err
	}
	// A cancelled request terminates its run. The options are destroyed
	// only once a terminate that already started has finished with them.
	terminated := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(terminated)
		opts.Terminate()
	})
	defer func() {
		if !stop() {
			<-terminated
		}
		opts.Destroy()
	}()
	outs := make([]ort.Value, len(s.outputs))
	// Some outputs are allocated here because onnxruntime_go v1.27 cannot
	// wrap them itself: FP16 (it copies one byte per element for types it
	// has no Go type for) and rank-0 outputs (its tensors need at least
	// one dimension). Both need their shape up front.
	for i, m := range s.outputs {
		var err error
		switch {
		case len(m.Shape) == 0:
			outs[i], err = emptyScalar(m)
		case m.Datatype == "FP16":
			var n int64
			n, err = checkShape(m.Shape)
			for _, d := range m.Shape {
				if d < 0 {
					err = fmt.Errorf("output %q is FP16 with a dynamic shape %v, which onnxruntime_go v1.27 cannot return", m.Name, m.Shape)
				}
			}
			if err == nil {
				outs[i], err = ort.NewCustomDataTensor(ort.NewShape(m.Shape...), make([]byte, max(2*n, 2)), ort.TensorElementDataTypeFloat16)
			}
		}
		if err != nil {
			destroyAll(outs)
			return nil, err
		}
	}
	if err := s.s.RunWithOptions(inputs, outs, opts); err != nil {
		destroyAll(outs)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("onnxruntime: %w", err)
	}
	return outs, nil
}

// warmUp runs one inference on zeros. Dynamic dimensions have no size in
// the model, so it tries a few: all 1, then batch 1 and 32 or 64 for the
// others (image models refuse 1×1 inputs). The first that runs proves the
// session works on this device.
func (s *Session) warmUp(ctx context.Context, req *InferRequest) error {
	if req != nil {
		p, err := s.Prepare(req)
		if err != nil {
			return fmt.Errorf("the warm-up request does not fit the model: %w", err)
		}
		_, err = s.Run(ctx, p)
		return err
	}
	var last error
	for _, fill := range [][2]int64{{1, 1}, {1, 32}, {1, 64}} {
		p := &Prepared{}
		for _, m := range s.inputs {
			shape := make([]int64, len(m.Shape))
			for i, d := range m.Shape {
				switch {
				case d >= 0:
					shape[i] = d
				case i == 0:
					shape[i] = fill[0]
				default:
					shape[i] = fill[1]
				}
			}
			dt, _ := datatypeByName(m.Datatype)
			n, err := checkShape(shape)
			if err != nil || n == 0 {
				return fmt.Errorf("input %s: cannot build a warm-up tensor for shape %v", m.Name, m.Shape)
			}
			t := &tensor{name: m.Name, dt: dt, shape: shape}
			if dt.Name == "BYTES" {
				t.strings = make([]string, n)
			} else {
				t.raw = make([]byte, int(n)*dt.Size)
			}
			p.inputs = append(p.inputs, t)
		}
		for i := range s.outputs {
			p.outputs = append(p.outputs, i)
		}
		if _, last = s.Run(ctx, p); last == nil {
			return nil
		}
	}
	return last
}

// destroyAll releases values, skipping nil ones, including the typed nil
// pointers onnxruntime_go leaves in outputs it failed to convert.
func destroyAll(vs []ort.Value) {
	for _, v := range vs {
		if v == nil {
			continue
		}
		if rv := reflect.ValueOf(v); rv.Kind() == reflect.Pointer && rv.IsNil() {
			continue
		}
		v.Destroy()
	}
}

// emptyScalar allocates a rank-0 output of m's datatype.
func emptyScalar(m TensorMetadata) (ort.Value, error) {
	switch m.Datatype {
	case "BOOL":
		return ort.NewEmptyScalar[bool]()
	case "UINT8":
		return ort.NewEmptyScalar[uint8]()
	case "INT8":
		return ort.NewEmptyScalar[int8]()
	case "UINT16":
		return ort.NewEmptyScalar[uint16]()
	case "INT16":
		return ort.NewEmptyScalar[int16]()
	case "UINT32":
		return ort.NewEmptyScalar[uint32]()
	case "INT32":
		return ort.NewEmptyScalar[int32]()
	case "UINT64":
		return ort.NewEmptyScalar[uint64]()
	case "INT64":
		return ort.NewEmptyScalar[int64]()
	case "FP32":
		return ort.NewEmptyScalar[float32]()
	case "FP64":
		return ort.NewEmptyScalar[float64]()
	}
	return nil, fmt.Errorf("output %q is a rank-0 %s, which onnxruntime_go v1.27 cannot return", m.Name, m.Datatype)
}
