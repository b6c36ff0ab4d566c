package main

import (
	"fmt"
	"math"
	"reflect"
	"slices"

	"github.com/shoal-mesh/shoal/inference"
)

// tolerance bounds |got - want| by atol + rtol·|want| (numpy's allclose).
type tolerance struct{ rtol, atol float64 }

func (t tolerance) String() string { return fmt.Sprintf("rtol %g, atol %g", t.rtol, t.atol) }

// diff is how far one device's outputs are from the other's.
type diff struct {
	maxAbs, maxRel float64 // over float elements; NaN and ±Inf must match
	problem        string  // "" when within tolerance
}

// compare checks the device's outputs against the CPU's: same names,
// datatypes and shapes; floats within tol; everything else equal.
func compare(cpu, dev []inference.ResponseOutput, tol tolerance) diff {
	var d diff
	if len(cpu) != len(dev) {
		d.problem = fmt.Sprintf("%d outputs, CPU has %d", len(dev), len(cpu))
		return d
	}
	for i, want := range cpu {
		got := dev[i]
		if got.Name != want.Name || got.Datatype != want.Datatype || !slices.Equal(got.Shape, want.Shape) {
			d.problem = fmt.Sprintf("output %s %s %v, CPU has %s %s %v", got.Name, got.Datatype, got.Shape, want.Name, want.Datatype, want.Shape)
			return d
		}
		if p := d.add(want, got, tol); p != "" && d.problem == "" {
			d.problem = p
		}
	}
	return d
}

// add folds one output's element differences into d.
func (d *diff) add(want, got inference.ResponseOutput, tol tolerance) string {
	w, wok := floats(want.Data)
	g, gok := floats(got.Data)
	if !wok || !gok {
		if !reflect.DeepEqual(want.Data, got.Data) {
			return fmt.Sprintf("output %s: values differ (%s, compared exactly)", want.Name, want.Datatype)
		}
		return ""
	}
	problem := ""
	for i := range w {
		a, b := g[i], w[i]
		if math.IsNaN(a) || math.IsNaN(b) || math.IsInf(a, 0) || math.IsInf(b, 0) {
			if !(math.IsNaN(a) && math.IsNaN(b)) && a != b && problem == "" {
				problem = fmt.Sprintf("output %s: element %d is %g, CPU %g", want.Name, i, a, b)
			}
			continue
		}
		abs := math.Abs(a - b)
		d.maxAbs = math.Max(d.maxAbs, abs)
		if b != 0 {
			d.maxRel = math.Max(d.maxRel, abs/math.Abs(b))
		}
		if abs > tol.atol+tol.rtol*math.Abs(b) && problem == "" {
			problem = fmt.Sprintf("output %s: element %d is %g, CPU %g (%s)", want.Name, i, a, b, tol)
		}
	}
	return problem
}

// floats reads float output data as float64: the engine gives []float32
// or []float64, or []any with nil for NaN and ±Inf (which JSON lacks).
func floats(data any) ([]float64, bool) {
	switch x := data.(type) {
	case []float32:
		out := make([]float64, len(x))
		for i, f := range x {
			out[i] = float64(f)
		}
		return out, true
	case []float64:
		return x, true
	case []any:
		out := make([]float64, len(x))
		for i, e := range x {
			switch f := e.(type) {
			case nil:
				out[i] = math.NaN()
			case float32:
				out[i] = float64(f)
			case float64:
				out[i] = f
			default:
				return nil, false
			}
		}
		return out, true
	}
	return nil, false
}
