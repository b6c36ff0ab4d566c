package models

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/crdt/sign"
)

// Record kinds.
const (
	KindVersion = "model.version"
	KindCurrent = "model.current"
)

// Rejection reasons, the label values of shoal_rejected_records_total.
const (
	ReasonMalformed    = "malformed"
	ReasonBadSignature = "bad_signature"
	ReasonUntrusted    = "untrusted"
	ReasonKeyMismatch  = "key_mismatch"
	// ReasonClockSkew: an activation stamped further ahead of this peer's
	// clock than the replica's MaxClockSkew. It is reconsidered as the
	// clock advances, so a publisher whose clock runs a little fast only
	// waits; one stamped a year ahead cannot pin the current version.
	ReasonClockSkew = "clock_skew"
	// ReasonOversize: a record larger than crdt.MaxRecordSize.
	ReasonOversize = "oversize"
)

// Reasons lists every rejection reason.
var Reasons = []string{ReasonMalformed, ReasonBadSignature, ReasonUntrusted, ReasonKeyMismatch, ReasonClockSkew, ReasonOversize}

// Sentinel errors.
var (
	ErrBadName        = errors.New("bad model name or version")
	ErrUnknownModel   = errors.New("unknown model")
	ErrUnknownVersion = errors.New("unknown model version")
	ErrDuplicate      = errors.New("version already published with other content")
	ErrNoPrevious     = errors.New("no previous version to roll back to")
	// ErrBadSetting: a manifest's serving setting is out of its range. It
	// is a malformed record to replicate (crdt.ErrBadRecord).
	ErrBadSetting = fmt.Errorf("%w: model setting out of range", crdt.ErrBadRecord)
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// CheckName validates a model name or version string: they become key
// segments, so no '/', and bounded.
func CheckName(kind, s string) error {
	if !nameRE.MatchString(s) {
		return fmt.Errorf("%w: %s %q: use letters, digits, '.', '_' and '-' (at most 128)", ErrBadName, kind, s)
	}
	return nil
}

// Manifest names exact artifact bytes: model@version is the CID and the
// sha256 below, signed by the publisher. Immutable once written.
type Manifest struct {
	Model     string      `json:"model"`
	Version   string      `json:"version"`
	CID       string      `json:"cid"`
	SHA256    string      `json:"sha256"`
	Size      int64       `json:"size"`
	MediaType string      `json:"media_type"`
	Publisher PublisherID `json:"publisher"`
	HLC       crdt.HLC    `json:"hlc"`
	// Prefetch asks peers to fetch and verify the artifact before it is
	// activated.
	Prefetch bool `json:"prefetch,omitempty"`
	// NoCache opts the model out of the result cache (outputs that are
	// not a function of the inputs).
	NoCache bool `json:"no_cache,omitempty"`
	// MaxBatchSize turns on dynamic batching: requests for this version
	// that arrive together run as one inference of at most this many
	// rows (dimension 0). 0: every request runs alone.
	MaxBatchSize int `json:"max_batch_size,omitempty"`
	// MaxQueueDelayUS bounds, in microseconds, how long a queued request
	// waits for others to fill its batch (Triton's
	// max_queue_delay_microseconds); see serving's batcher for when a
	// request waits at all. Needs MaxBatchSize.
	MaxQueueDelayUS int `json:"max_queue_delay_us,omitempty"`
	// Warmup is an inference request (OIP v2 JSON) that peers run before
	// the version goes live, for models whose dynamic dimensions need
	// particular sizes. Empty: peers synthesise one.
	Warmup    json.RawMessage `json:"warmup,omitempty"`
	Signature string          `json:"signature,omitempty"`
}

// MediaTypeONNX marks artifacts that peers load into onnxruntime.
const MediaTypeONNX = "application/vnd.onnx"

// MaxWarmup bounds a manifest's warm-up request (records stay small).
const MaxWarmup = 64 << 10

// Limits of the batching settings. A batch is one onnxruntime run: its
// input is the sum of its requests', so the bound keeps one run within
// what a peer can hold; a request should not queue longer than a second
// for company.
const (
	MaxBatchSizeLimit    = 1024
	MaxQueueDelayUSLimit = 1_000_000
)

// Validate checks what a publisher controls: the names, the warm-up
// request's size and the serving settings' ranges. Errors name the
// manifest key and wrap ErrBadName or ErrBadSetting.
func (m Manifest) Validate() error {
	if err := CheckName("model", m.Model); err != nil {
		return err
	}
	if err := CheckName("version", m.Version); err != nil {
		return err
	}
	if len(m.Warmup) > MaxWarmup {
		return fmt.Errorf("%w: warmup: %d bytes, at most %d", ErrBadSetting, len(m.Warmup), MaxWarmup)
	}
	if m.MaxBatchSize < 0 || m.MaxBatchSize > MaxBatchSizeLimit {
		return fmt.Errorf("%w: max_batch_size %d: use 0 (no batching) to %d", ErrBadSetting, m.MaxBatchSize, MaxBatchSizeLimit)
	}
	if m.MaxQueueDelayUS < 0 || m.MaxQueueDelayUS > MaxQueueDelayUSLimit {
		return fmt.Errorf("%w: max_queue_delay_us %d: use 0 to %d (1 s)", ErrBadSetting, m.MaxQueueDelayUS, MaxQueueDelayUSLimit)
	}
	if m.MaxQueueDelayUS > 0 && m.MaxBatchSize == 0 {
		return fmt.Errorf("%w: max_queue_delay_us %d without max_batch_size: a delay only applies to batching", ErrBadSetting, m.MaxQueueDelayUS)
	}
	return nil
}

// Batching returns the manifest's batching settings as a peer applies
// them: the batch size (0: no batching) and the queue delay, clamped to
// the limits. Peers do not reject a signed manifest over its settings
// (a later release may allow more); they bound what they do with it.
func (m Manifest) Batching() (maxRows int, delay time.Duration) {
	maxRows = min(max(m.MaxBatchSize, 0), MaxBatchSizeLimit)
	if maxRows == 0 {
		return 0, 0
	}
	us := min(max(m.MaxQueueDelayUS, 0), MaxQueueDelayUSLimit)
	return maxRows, time.Duration(us) * time.Microsecond
}

// IsONNX reports whether the artifact is an ONNX model to serve.
func (m Manifest) IsONNX() bool { return m.MediaType == MediaTypeONNX }

// Activation is one publisher's current-version register value.
type Activation struct {
	Model     string      `json:"model"`
	Version   string      `json:"version"`
	Publisher PublisherID `json:"publisher"`
	HLC       crdt.HLC    `json:"hlc"`
	// Previous is the effective version when this activation was written;
	// rollback activates it again.
	Previous  string `json:"previous,omitempty"`
	Signature string `json:"signature,omitempty"`
}

func signingBytes(kind string, v any) []byte {
	b, _ := json.Marshal(v)
	return append([]byte("shoal/"+kind+"/v1\n"), b...)
}

func (m Manifest) unsigned() Manifest     { m.Signature = ""; return m }
func (a Activation) unsigned() Activation { a.Signature = ""; return a }

// Sign fills in the signature.
func (m *Manifest) Sign(p *Publisher) {
	m.Publisher = p.ID()
	m.Signature = base64.StdEncoding.EncodeToString(p.Sign(signingBytes(KindVersion, m.unsigned())))
}

// Sign fills in the signature.
func (a *Activation) Sign(p *Publisher) {
	a.Publisher = p.ID()
	a.Signature = base64.StdEncoding.EncodeToString(p.Sign(signingBytes(KindCurrent, a.unsigned())))
}

// verify checks a base64 signature; package sign memoises successful
// checks, since the registry evaluates a model's records on every read.
func verify(pub PublisherID, sig string, msg []byte) error {
	s, err := base64.StdEncoding.DecodeString(sig)
	if err != nil {
		return sign.ErrSignature
	}
	return sign.Verify(pub, msg, s)
}

// Verify checks the manifest's signature against its publisher key.
func (m Manifest) Verify() error {
	return verify(m.Publisher, m.Signature, signingBytes(KindVersion, m.unsigned()))
}

// Verify checks the activation's signature against its publisher key.
func (a Activation) Verify() error {
	return verify(a.Publisher, a.Signature, signingBytes(KindCurrent, a.unsigned()))
}

// Ref returns "model@version".
func (m Manifest) Ref() string { return m.Model + "@" + m.Version }
