package models

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/shoal-mesh/shoal/crdt"
)

func TestSignaturesVerifyAndTamperingIsCaughtAfterCaching(t *testing.T) {
	pub, err := NewPublisherKey(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	m := Manifest{Model: "cls", Version: "v1", CID: "bafy", SHA256: "00", Size: 3, MediaType: MediaTypeONNX,
		Warmup: json.RawMessage(`{"inputs":[]}`)}
	m.Sign(pub)
	for i := 0; i < 2; i++ { // the second check is answered from the memo
		if err := m.Verify(); err != nil {
			t.Fatalf("check %d: %v", i, err)
		}
	}
	for name, tamper := range map[string]func(*Manifest){
		"cid":      func(m *Manifest) { m.CID = "bafz" },
		"no_cache": func(m *Manifest) { m.NoCache = true },
		"batch":    func(m *Manifest) { m.MaxBatchSize = 8 },
		"delay":    func(m *Manifest) { m.MaxQueueDelayUS = 500 },
		"warmup":   func(m *Manifest) { m.Warmup = json.RawMessage(`{"inputs":[{}]}`) },
		"media":    func(m *Manifest) { m.MediaType = "application/octet-stream" },
	} {
		bad := m
		tamper(&bad)
		if err := bad.Verify(); err == nil {
			t.Errorf("tampered %s verifies", name)
		}
	}
	other, err := NewPublisherKey(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	forged := m
	forged.Publisher = other.ID()
	if err := forged.Verify(); err == nil {
		t.Error("a signature verifies under another publisher's key")
	}
	if !m.IsONNX() {
		t.Error("IsONNX false for " + MediaTypeONNX)
	}
}

// TestValidateNamesTheKeyOutOfRange: each setting's bounds, errors that
// name the manifest key and are malformed records (a 400 at the API).
func TestValidateNamesTheKeyOutOfRange(t *testing.T) {
	ok := Manifest{Model: "cls", Version: "v1"}
	for name, m := range map[string]Manifest{
		"plain":     ok,
		"batch":     {Model: "cls", Version: "v1", MaxBatchSize: 64},
		"max batch": {Model: "cls", Version: "v1", MaxBatchSize: MaxBatchSizeLimit, MaxQueueDelayUS: MaxQueueDelayUSLimit},
	} {
		if err := m.Validate(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	for _, tc := range []struct {
		m   Manifest
		key string
	}{
		{Manifest{Model: "cls", Version: "v1", MaxBatchSize: -1}, "max_batch_size"},
		{Manifest{Model: "cls", Version: "v1", MaxBatchSize: MaxBatchSizeLimit + 1}, "max_batch_size"},
		{Manifest{Model: "cls", Version: "v1", MaxBatchSize: 8, MaxQueueDelayUS: -1}, "max_queue_delay_us"},
		{Manifest{Model: "cls", Version: "v1", MaxBatchSize: 8, MaxQueueDelayUS: MaxQueueDelayUSLimit + 1}, "max_queue_delay_us"},
		{Manifest{Model: "cls", Version: "v1", MaxQueueDelayUS: 100}, "max_queue_delay_us"},
		{Manifest{Model: "cls", Version: "v1", Warmup: make(json.RawMessage, MaxWarmup+1)}, "warmup"},
	} {
		err := tc.m.Validate()
		if !errors.Is(err, ErrBadSetting) || !errors.Is(err, crdt.ErrBadRecord) || !strings.Contains(err.Error(), tc.key) {
			t.Errorf("%+v: %v, want ErrBadSetting naming %s", tc.m, err, tc.key)
		}
	}
	if err := (Manifest{Model: "a/b", Version: "v1"}).Validate(); !errors.Is(err, ErrBadName) {
		t.Errorf("bad name: %v", err)
	}
}

func TestBatchingIsClampedAndOffByDefault(t *testing.T) {
	for _, tc := range []struct {
		m     Manifest
		rows  int
		delay time.Duration
	}{
		{Manifest{}, 0, 0},
		{Manifest{MaxQueueDelayUS: 500}, 0, 0},
		{Manifest{MaxBatchSize: 8}, 8, 0},
		{Manifest{MaxBatchSize: 8, MaxQueueDelayUS: 500}, 8, 500 * time.Microsecond},
		// A signed manifest from a release with wider limits is bounded.
		{Manifest{MaxBatchSize: 1 << 20, MaxQueueDelayUS: 1 << 30}, MaxBatchSizeLimit, time.Second},
		{Manifest{MaxBatchSize: -3}, 0, 0},
	} {
		rows, delay := tc.m.Batching()
		if rows != tc.rows || delay != tc.delay {
			t.Errorf("%+v: Batching() = %d, %v; want %d, %v", tc.m, rows, delay, tc.rows, tc.delay)
		}
	}
}
