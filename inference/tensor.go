package inference

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"unsafe"

	ort "github.com/yalue/onnxruntime_go"
)

// Datatype is an OIP v2 tensor datatype name and how onnxruntime holds it.
type Datatype struct {
	Name string // OIP name: FP32, INT64, BYTES, ...
	ORT  ort.TensorElementDataType
	Size int // bytes per element; 0 for BYTES
}

var datatypes = []Datatype{
	{"BOOL", ort.TensorElementDataTypeBool, 1},
	{"UINT8", ort.TensorElementDataTypeUint8, 1},
	{"UINT16", ort.TensorElementDataTypeUint16, 2},
	{"UINT32", ort.TensorElementDataTypeUint32, 4},
	{"UINT64", ort.TensorElementDataTypeUint64, 8},
	{"INT8", ort.TensorElementDataTypeInt8, 1},
	{"INT16", ort.TensorElementDataTypeInt16, 2},
	{"INT32", ort.TensorElementDataTypeInt32, 4},
	{"INT64", ort.TensorElementDataTypeInt64, 8},
	{"FP16", ort.TensorElementDataTypeFloat16, 2},
	{"FP32", ort.TensorElementDataTypeFloat, 4},
	{"FP64", ort.TensorElementDataTypeDouble, 8},
	{"BYTES", ort.TensorElementDataTypeString, 0},
}

func datatypeByORT(t ort.TensorElementDataType) (Datatype, bool) {
	for _, d := range datatypes {
		if d.ORT == t {
			return d, true
		}
	}
	return Datatype{}, false
}

func datatypeByName(name string) (Datatype, bool) {
	for _, d := range datatypes {
		if d.Name == name {
			return d, true
		}
	}
	return Datatype{}, false
}

// tensor is one decoded input: raw little-endian element bytes (or the
// strings of a BYTES tensor) ready to hand to onnxruntime.
type tensor struct {
	name    string
	dt      Datatype
	shape   []int64
	raw     []byte
	strings []string
}

// maxElements bounds one tensor so that a shape cannot make the peer
// allocate more than the request body could ever have carried.
const maxElements = 1 << 28

func checkShape(shape []int64) (int64, error) {
	n := int64(1)
	for _, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("negative dimension %d", d)
		}
		if d > 0 && n > maxElements/d {
			return 0, fmt.Errorf("shape %v is too large", shape)
		}
		n *= d
	}
	return n, nil
}

// decodeInput validates one request input against the model's metadata
// and decodes its data.
func decodeInput(in RequestInput, meta TensorMetadata) (*tensor, error) {
	if in.Datatype != meta.Datatype {
		return nil, badRequest("input %q: datatype %s, the model expects %s", in.Name, orNone(in.Datatype), meta.Datatype)
	}
	dt, _ := datatypeByName(meta.Datatype)
	if len(in.Shape) != len(meta.Shape) {
		return nil, badRequest("input %q: shape %v has %d dimensions, the model expects %d (%v)", in.Name, in.Shape, len(in.Shape), len(meta.Shape), meta.Shape)
	}
	for i, d := range meta.Shape {
		if d >= 0 && in.Shape[i] != d {
			return nil, badRequest("input %q: shape %v, the model expects %v (dimension %d must be %d)", in.Name, in.Shape, meta.Shape, i, d)
		}
	}
	n, err := checkShape(in.Shape)
	if err != nil {
		return nil, badRequest("input %q: %v", in.Name, err)
	}
	if n == 0 {
		return nil, badRequest("input %q: shape %v has no elements", in.Name, in.Shape)
	}
	t := &tensor{name: in.Name, dt: dt, shape: in.Shape}
	if in.hasBinary {
		if err := decodeBinary(t, in.binary, n); err != nil {
			return nil, badRequest("input %q: %v", in.Name, err)
		}
		return t, nil
	}
	if _, ok := in.Parameters["binary_data_size"]; ok {
		return nil, badRequest("input %q: binary_data_size without binary data (send %s)", in.Name, HeaderInferenceHeaderLength)
	}
	if len(bytes.TrimSpace(in.Data)) == 0 {
		return nil, badRequest("input %q: no data", in.Name)
	}
	if dt.Name == "BYTES" {
		var s []string
		if err := json.Unmarshal(in.Data, &s); err != nil {
			vals, ferr := flatten(in.Data)
			if ferr != nil {
				return nil, badRequest("input %q: data: %v", in.Name, ferr)
			}
			s = make([]string, len(vals))
			for i, v := range vals {
				str, ok := v.(string)
				if !ok {
					return nil, badRequest("input %q: element %d is not a string", in.Name, i)
				}
				s[i] = str
			}
		}
		if int64(len(s)) != n {
			return nil, badRequest("input %q: %d elements for shape %v, which needs %d", in.Name, len(s), in.Shape, n)
		}
		t.strings = s
		return t, nil
	}
	t.raw = make([]byte, int(n)*dt.Size)
	if count, ok := fastDecode(in.Data, dt, t.raw); ok {
		if count != n {
			return nil, badRequest("input %q: %d elements for shape %v, which needs %d", in.Name, count, in.Shape, n)
		}
		return t, nil
	}
	vals, err := flatten(in.Data)
	if err != nil {
		return nil, badRequest("input %q: data: %v", in.Name, err)
	}
	if int64(len(vals)) != n {
		return nil, badRequest("input %q: %d elements for shape %v, which needs %d", in.Name, len(vals), in.Shape, n)
	}
	for i, v := range vals {
		if err := putElement(t.raw[i*dt.Size:], dt, v); err != nil {
			return nil, badRequest("input %q: element %d: %v", in.Name, i, err)
		}
	}
	return t, nil
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// fastDecode parses a JSON array (flat or nested) of numbers, or of
// booleans for BOOL, straight into raw without building a Go value per
// element: JSON tensors are large and encoding/json's generic decoding
// costs several times the model's run. It reports false for anything
// else (strings, objects, nulls, out-of-range values), and the caller
// falls back to the general path, which explains the problem.
// The data has already been validated as JSON by the request decoder.
func fastDecode(data []byte, dt Datatype, raw []byte) (int64, bool) {
	var count int64
	max := int64(len(raw) / dt.Size)
	for i := 0; i < len(data); {
		c := data[i]
		switch {
		case c == '[' || c == ']' || c == ',' || c == ' ' || c == '\n' || c == '\t' || c == '\r':
			i++
			continue
		case c == 't' || c == 'f':
			if dt.Name != "BOOL" {
				return 0, false
			}
			v := byte(0)
			if c == 't' {
				v, i = 1, i+4
			} else {
				i += 5
			}
			if count < max {
				raw[count] = v
			}
			count++
			continue
		case c == '-' || (c >= '0' && c <= '9'):
		default:
			return 0, false
		}
		j := i + 1
		for j < len(data) && (data[j] >= '0' && data[j] <= '9' || data[j] == '.' || data[j] == 'e' || data[j] == 'E' || data[j] == '+' || data[j] == '-') {
			j++
		}
		if count < max {
			if putNumber(raw[count*int64(dt.Size):], dt, data[i:j]) != nil {
				return 0, false
			}
		}
		count++
		i = j
	}
	return count, true
}

// putNumber stores one JSON number token as element type dt.
func putNumber(b []byte, dt Datatype, tok []byte) error {
	s := unsafeString(tok)
	switch dt.Name {
	case "FP32":
		f, err := strconv.ParseFloat(s, 32)
		if err != nil {
			return err
		}
		binary.LittleEndian.PutUint32(b, math.Float32bits(float32(f)))
		return nil
	case "BOOL":
		return putElement(b, dt, json.Number(s))
	}
	return putElement(b, dt, json.Number(s))
}

// flatten decodes flat or nested JSON arrays into their elements in
// row-major order. Numbers stay json.Number so that 64-bit integers keep
// their precision.
func flatten(data json.RawMessage) ([]any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if _, ok := v.([]any); !ok {
		// A bare scalar is accepted for rank-0 and one-element tensors.
		return []any{v}, nil
	}
	var out []any
	var walk func(x any, depth int) error
	walk = func(x any, depth int) error {
		if depth > 32 {
			return fmt.Errorf("arrays nested deeper than 32")
		}
		if arr, ok := x.([]any); ok {
			for _, e := range arr {
				if err := walk(e, depth+1); err != nil {
					return err
				}
			}
			return nil
		}
		out = append(out, x)
		return nil
	}
	return out, walk(v, 0)
}

func putElement(b []byte, dt Datatype, v any) error {
	if dt.Name == "BOOL" {
		switch x := v.(type) {
		case bool:
			if x {
				b[0] = 1
			} else {
				b[0] = 0
			}
			return nil
		case json.Number:
			if x == "0" || x == "1" {
				b[0] = byte(x[0] - '0')
				return nil
			}
		}
		return fmt.Errorf("%v is not a BOOL (true, false, 0 or 1)", v)
	}
	num, ok := v.(json.Number)
	if !ok {
		return fmt.Errorf("%v is not a number", jsonish(v))
	}
	switch dt.Name {
	case "FP16", "FP32", "FP64":
		f, err := strconv.ParseFloat(string(num), 64)
		if err != nil {
			return fmt.Errorf("%s is not a %s", num, dt.Name)
		}
		switch dt.Name {
		case "FP16":
			binary.LittleEndian.PutUint16(b, float32ToHalf(float32(f)))
		case "FP32":
			// Round once, from the decimal text, as the fast path does.
			f32, _ := strconv.ParseFloat(string(num), 32)
			binary.LittleEndian.PutUint32(b, math.Float32bits(float32(f32)))
		default:
			binary.LittleEndian.PutUint64(b, math.Float64bits(f))
		}
		return nil
	case "UINT8", "UINT16", "UINT32", "UINT64":
		u, err := strconv.ParseUint(string(num), 10, dt.Size*8)
		if err != nil {
			return fmt.Errorf("%s is not a %s", num, dt.Name)
		}
		putUint(b, dt.Size, u)
		return nil
	default: // INT8 … INT64
		i, err := strconv.ParseInt(string(num), 10, dt.Size*8)
		if err != nil {
			return fmt.Errorf("%s is not an %s", num, dt.Name)
		}
		putUint(b, dt.Size, uint64(i))
		return nil
	}
}

func jsonish(v any) string {
	b, _ := json.Marshal(v)
	if len(b) > 40 {
		b = append(b[:40], "..."...)
	}
	return string(b)
}

func putUint(b []byte, size int, u uint64) {
	switch size {
	case 1:
		b[0] = byte(u)
	case 2:
		binary.LittleEndian.PutUint16(b, uint16(u))
	case 4:
		binary.LittleEndian.PutUint32(b, uint32(u))
	default:
		binary.LittleEndian.PutUint64(b, u)
	}
}

// ortValue hands the tensor to onnxruntime. The returned value aliases
// t.raw, which must outlive it.
func (t *tensor) ortValue() (ort.Value, error) {
	if t.dt.Name == "BYTES" {
		st, err := ort.NewStringTensor(ort.NewShape(t.shape...))
		if err != nil {
			return nil, err
		}
		if err := st.SetContents(t.strings); err != nil {
			st.Destroy()
			return nil, err
		}
		return st, nil
	}
	if len(t.shape) == 0 {
		return scalarValue(t.dt, t.raw)
	}
	return ort.NewCustomDataTensor(ort.NewShape(t.shape...), t.raw, t.dt.ORT)
}

// scalarValue builds a rank-0 tensor: onnxruntime_go only makes those
// through its typed Scalar.
func scalarValue(dt Datatype, raw []byte) (ort.Value, error) {
	switch dt.Name {
	case "BOOL":
		return ort.NewScalar(raw[0] != 0)
	case "UINT8":
		return ort.NewScalar(raw[0])
	case "INT8":
		return ort.NewScalar(int8(raw[0]))
	case "UINT16":
		return ort.NewScalar(binary.LittleEndian.Uint16(raw))
	case "INT16":
		return ort.NewScalar(int16(binary.LittleEndian.Uint16(raw)))
	case "UINT32":
		return ort.NewScalar(binary.LittleEndian.Uint32(raw))
	case "INT32":
		return ort.NewScalar(int32(binary.LittleEndian.Uint32(raw)))
	case "UINT64":
		return ort.NewScalar(binary.LittleEndian.Uint64(raw))
	case "INT64":
		return ort.NewScalar(int64(binary.LittleEndian.Uint64(raw)))
	case "FP32":
		return ort.NewScalar(math.Float32frombits(binary.LittleEndian.Uint32(raw)))
	case "FP64":
		return ort.NewScalar(math.Float64frombits(binary.LittleEndian.Uint64(raw)))
	}
	return nil, fmt.Errorf("rank-0 %s tensors are not supported; send shape [1] if the model allows it", dt.Name)
}

// canonical appends the tensor's identity (name, datatype, shape, data) to
// b in a form that is equal exactly when the model sees the same input:
// the result cache keys on it.
func (t *tensor) canonical(b []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(t.name)))
	b = append(b, t.name...)
	b = append(b, t.dt.Name...)
	b = append(b, 0)
	b = binary.AppendUvarint(b, uint64(len(t.shape)))
	for _, d := range t.shape {
		b = binary.AppendUvarint(b, uint64(d))
	}
	if t.dt.Name == "BYTES" {
		for _, s := range t.strings {
			b = binary.AppendUvarint(b, uint64(len(s)))
			b = append(b, s...)
		}
		return b
	}
	b = binary.AppendUvarint(b, uint64(len(t.raw)))
	return append(b, t.raw...)
}

// encodeOutput turns an onnxruntime output into a response tensor.
func encodeOutput(name string, v ort.Value) (ResponseOutput, error) {
	out, err := outputData(name, v)
	out.Data = finiteData(out.Data)
	return out, err
}

// outputData reads an onnxruntime output into a response tensor whose
// Data is a typed, flat slice ([]float32, []int64, []string, …), floats
// not yet through finite: a batched run splits it before JSON care.
func outputData(name string, v ort.Value) (ResponseOutput, error) {
	shape := []int64(v.GetShape())
	if shape == nil {
		shape = []int64{}
	}
	out := ResponseOutput{Name: name, Shape: shape}
	switch x := v.(type) {
	case *ort.Tensor[float32]:
		out.Datatype, out.Data = "FP32", x.GetData()
	case *ort.Tensor[float64]:
		out.Datatype, out.Data = "FP64", x.GetData()
	case *ort.Tensor[int64]:
		out.Datatype, out.Data = "INT64", x.GetData()
	case *ort.Tensor[int32]:
		out.Datatype, out.Data = "INT32", x.GetData()
	case *ort.Tensor[int16]:
		out.Datatype, out.Data = "INT16", x.GetData()
	case *ort.Tensor[int8]:
		out.Datatype, out.Data = "INT8", x.GetData()
	case *ort.Tensor[uint64]:
		out.Datatype, out.Data = "UINT64", x.GetData()
	case *ort.Tensor[uint32]:
		out.Datatype, out.Data = "UINT32", x.GetData()
	case *ort.Tensor[uint16]:
		out.Datatype, out.Data = "UINT16", x.GetData()
	case *ort.Tensor[uint8]:
		// []uint8 would marshal as base64; OIP wants numbers.
		d := x.GetData()
		n := make([]uint16, len(d))
		for i, e := range d {
			n[i] = uint16(e)
		}
		out.Datatype, out.Data = "UINT8", n
	case *ort.Tensor[bool]:
		out.Datatype, out.Data = "BOOL", x.GetData()
	case *ort.Scalar[float32]:
		out.Datatype, out.Data = "FP32", []float32{x.GetData()}
	case *ort.Scalar[float64]:
		out.Datatype, out.Data = "FP64", []float64{x.GetData()}
	case *ort.Scalar[int64]:
		out.Datatype, out.Data = "INT64", []int64{x.GetData()}
	case *ort.Scalar[int32]:
		out.Datatype, out.Data = "INT32", []int32{x.GetData()}
	case *ort.Scalar[int16]:
		out.Datatype, out.Data = "INT16", []int16{x.GetData()}
	case *ort.Scalar[int8]:
		out.Datatype, out.Data = "INT8", []int8{x.GetData()}
	case *ort.Scalar[uint64]:
		out.Datatype, out.Data = "UINT64", []uint64{x.GetData()}
	case *ort.Scalar[uint32]:
		out.Datatype, out.Data = "UINT32", []uint32{x.GetData()}
	case *ort.Scalar[uint16]:
		out.Datatype, out.Data = "UINT16", []uint16{x.GetData()}
	case *ort.Scalar[uint8]:
		out.Datatype, out.Data = "UINT8", []uint16{uint16(x.GetData())}
	case *ort.Scalar[bool]:
		out.Datatype, out.Data = "BOOL", []bool{x.GetData()}
	case *ort.StringTensor:
		s, err := x.GetContents()
		if err != nil {
			return out, err
		}
		out.Datatype, out.Data = "BYTES", s
	case *ort.CustomDataTensor:
		dt, ok := datatypeByORT(ort.TensorElementDataType(x.DataType()))
		if !ok || dt.Name != "FP16" {
			return out, fmt.Errorf("output %q: element type %d is not supported", name, x.DataType())
		}
		raw := x.GetData()
		f := make([]float32, len(raw)/2)
		for i := range f {
			f[i] = halfToFloat32(binary.LittleEndian.Uint16(raw[2*i:]))
		}
		out.Datatype, out.Data = "FP16", f
	default:
		return out, fmt.Errorf("output %q: value kind %T is not supported", name, v)
	}
	return out, nil
}

// finiteData applies finite to float data and returns other data as is.
func finiteData(data any) any {
	switch d := data.(type) {
	case []float32:
		return finite(d)
	case []float64:
		return finite(d)
	}
	return data
}

// finite returns f, or, when f holds NaN or ±Inf (which JSON cannot
// carry), a copy with those elements as null.
func finite[F float32 | float64](f []F) any {
	bad := func(x F) bool { return math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) }
	if !slices.ContainsFunc(f, bad) {
		return f
	}
	out := make([]any, len(f))
	for i, y := range f {
		if !bad(y) {
			out[i] = y
		}
	}
	return out
}

// float32ToHalf converts to IEEE 754 binary16, rounding to nearest even.
func float32ToHalf(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int((b >> 23) & 0xff)
	mant := b & 0x7fffff
	switch {
	case exp == 0xff: // Inf or NaN
		if mant != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	case exp-127+15 >= 0x1f: // overflow
		return sign | 0x7c00
	case exp-127+15 <= 0: // subnormal or zero
		e := exp - 127 + 15
		if e < -10 {
			return sign
		}
		mant |= 0x800000
		shift := uint32(14 - e)
		half := uint16(mant >> shift)
		rem := mant & ((1 << shift) - 1)
		mid := uint32(1) << (shift - 1)
		if rem > mid || (rem == mid && half&1 == 1) {
			half++
		}
		return sign | half
	}
	e := uint16(exp - 127 + 15)
	half := sign | e<<10 | uint16(mant>>13)
	rem := mant & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && half&1 == 1) {
		half++ // may carry into the exponent, which is the right result
	}
	return half
}

func halfToFloat32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case exp == 0:
		if mant == 0 {
			return math.Float32frombits(sign)
		}
		// subnormal: normalise
		e := uint32(127 - 15 + 1)
		for mant&0x400 == 0 {
			mant <<= 1
			e--
		}
		mant &= 0x3ff
		return math.Float32frombits(sign | e<<23 | mant<<13)
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | mant<<13)
}

// unsafeString views b as a string for parsing, without copying. The
// string must not outlive b.
func unsafeString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }
