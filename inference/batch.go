package inference

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"

	ort "github.com/yalue/onnxruntime_go"
)

// Dynamic batching support: several prepared requests run as one
// inference, their inputs concatenated along the first (batch) dimension
// and every output split back by the rows each request contributed. The
// queueing (which requests, when) is the serving layer's; this file only
// knows how to join and split.

// ErrNotSplittable means a batched run returned an output whose first
// dimension is not the batch's total rows: the model does not treat
// dimension 0 as independent rows, and its requests must run alone.
var ErrNotSplittable = errors.New("outputs do not split back into the batch's requests")

// Batchable reports whether requests to s may be joined: every input and
// every output has a dynamic first dimension (a model with a fixed batch
// dimension, or rank-0 tensors, cannot take several requests), and no
// output is FP16 (onnxruntime_go v1.27 needs those shapes up front, see
// run). Whether a model really treats rows independently is only known
// by running it: RunBatch checks the outputs' row counts.
func (s *Session) Batchable() bool {
	for _, ms := range [][]TensorMetadata{s.inputs, s.outputs} {
		for _, m := range ms {
			if len(m.Shape) == 0 || m.Shape[0] >= 0 || m.Datatype == "FP16" {
				return false
			}
		}
	}
	return len(s.inputs) > 0
}

// BatchKey returns the request's rows (its size along dimension 0) and a
// key that is equal exactly for requests that may be joined: the same
// datatypes and dimensions past the first for every input, and the same
// outputs asked for. ok is false when the inputs disagree on their first
// dimension (which rows would go together is then unknown).
func (p *Prepared) BatchKey() (rows int, key string, ok bool) {
	if len(p.inputs) == 0 || len(p.inputs[0].shape) == 0 {
		return 0, "", false
	}
	var b []byte
	for _, t := range p.inputs {
		if len(t.shape) == 0 || t.shape[0] != p.inputs[0].shape[0] {
			return 0, "", false
		}
		b = append(b, t.dt.Name...)
		b = binary.AppendUvarint(b, uint64(len(t.shape)))
		for _, d := range t.shape[1:] {
			b = binary.AppendUvarint(b, uint64(d))
		}
	}
	b = append(b, '/')
	for _, o := range p.outputs {
		b = binary.AppendUvarint(b, uint64(o))
	}
	return int(p.inputs[0].shape[0]), string(b), true
}

// RunBatch runs ps as one inference and returns each request's outputs,
// element for element what it would get alone (when the model's rows are
// independent, which is what batching it asserts). The requests must
// share one BatchKey. An output that does not have one row per input row
// fails the whole batch with ErrNotSplittable; the caller then runs the
// requests alone. ctx governs the one run: a caller joining requests
// with their own deadlines gives it a context none of them can cancel
// alone. The session must be acquired.
func (s *Session) RunBatch(ctx context.Context, ps []*Prepared) ([][]ResponseOutput, error) {
	if len(ps) == 0 {
		return nil, nil
	}
	rows := make([]int64, len(ps))
	var total int64
	for i, p := range ps {
		r, _, ok := p.BatchKey()
		if !ok {
			return nil, fmt.Errorf("request %d cannot be batched", i)
		}
		rows[i], total = int64(r), total+int64(r)
	}
	values := make([]ort.Value, len(ps[0].inputs))
	defer destroyAll(values)
	for i := range ps[0].inputs {
		t, err := joinInput(ps, i, total)
		if err != nil {
			return nil, err
		}
		if values[i], err = t.ortValue(); err != nil {
			return nil, badRequest("input %q: %v", t.name, err)
		}
	}
	outs, err := s.run(ctx, values)
	if err != nil {
		return nil, err
	}
	defer destroyAll(outs)
	res := make([][]ResponseOutput, len(ps))
	for _, idx := range ps[0].outputs {
		whole, err := outputData(s.outputs[idx].Name, outs[idx])
		if err != nil {
			return nil, err
		}
		parts, err := splitOutput(whole, rows, total)
		if err != nil {
			return nil, err
		}
		for j := range res {
			res[j] = append(res[j], parts[j])
		}
	}
	return res, nil
}

// joinInput concatenates input i of every request along dimension 0.
func joinInput(ps []*Prepared, i int, total int64) (*tensor, error) {
	first := ps[0].inputs[i]
	joined := &tensor{name: first.name, dt: first.dt, shape: append([]int64{total}, first.shape[1:]...)}
	for j, p := range ps {
		t := p.inputs[i]
		if t.name != first.name || t.dt != first.dt || !equalDims(t.shape[1:], first.shape[1:]) {
			return nil, fmt.Errorf("input %q of request %d is %s%v, the batch's is %s%v", t.name, j, t.dt.Name, t.shape, first.dt.Name, first.shape)
		}
	}
	if first.dt.Name == "BYTES" {
		for _, p := range ps {
			joined.strings = append(joined.strings, p.inputs[i].strings...)
		}
		return joined, nil
	}
	size := 0
	for _, p := range ps {
		size += len(p.inputs[i].raw)
	}
	joined.raw = make([]byte, 0, size)
	for _, p := range ps {
		joined.raw = append(joined.raw, p.inputs[i].raw...)
	}
	return joined, nil
}

func equalDims(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// splitOutput cuts a batched output into one output per request, rows[j]
// rows each, in order. The parts share whole's data, each capped at its
// own end so that no append can reach another request's rows.
func splitOutput(whole ResponseOutput, rows []int64, total int64) ([]ResponseOutput, error) {
	data := reflect.ValueOf(whole.Data)
	if len(whole.Shape) == 0 || whole.Shape[0] != total || data.Kind() != reflect.Slice || int64(data.Len())%total != 0 {
		return nil, fmt.Errorf("%w: output %q has shape %v for %d rows in", ErrNotSplittable, whole.Name, whole.Shape, total)
	}
	per := int64(data.Len()) / total
	parts := make([]ResponseOutput, len(rows))
	var off int64
	for j, r := range rows {
		shape := append([]int64{r}, whole.Shape[1:]...)
		part := data.Slice3(int(off*per), int((off+r)*per), int((off+r)*per)).Interface()
		parts[j] = ResponseOutput{Name: whole.Name, Shape: shape, Datatype: whole.Datatype, Data: finiteData(part)}
		off += r
	}
	return parts, nil
}
