package models

import (
	"encoding/json"
	"testing"
	"time"
)

// FuzzManifestVerify: arbitrary manifest bodies never panic the checks,
// and nothing but the signed original verifies.
func FuzzManifestVerify(f *testing.F) {
	pub, err := NewPublisherKey(f.TempDir(), false)
	if err != nil {
		f.Fatal(err)
	}
	m := Manifest{Model: "cls", Version: "v1", CID: "bafy", SHA256: "00", Size: 3, MediaType: MediaTypeONNX, MaxBatchSize: 16, MaxQueueDelayUS: 200}
	m.Sign(pub)
	signed, _ := json.Marshal(m)
	f.Add(signed)
	f.Add([]byte(`{"model":"x","publisher":"ed25519:zz","signature":"AA=="}`))
	f.Add([]byte(`{"warmup":{"inputs":[]},"publisher":"ed25519:00"}`))
	f.Add([]byte(`{"model":"cls","max_batch_size":-1,"max_queue_delay_us":9999999999}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var got Manifest
		if json.Unmarshal(body, &got) != nil {
			return
		}
		_ = CheckName("model", got.Model)
		_ = got.IsONNX()
		_ = got.Validate()
		if rows, delay := got.Batching(); rows < 0 || rows > MaxBatchSizeLimit || delay < 0 || delay > time.Second {
			t.Fatalf("Batching() = %d, %v for %s", rows, delay, body)
		}
		if got.Verify() == nil {
			again, _ := json.Marshal(got)
			var canon Manifest
			json.Unmarshal(again, &canon)
			if canon.Model != m.Model || canon.Version != m.Version || canon.CID != m.CID || canon.SHA256 != m.SHA256 ||
				canon.Size != m.Size || canon.MediaType != m.MediaType || canon.NoCache != m.NoCache || canon.MaxBatchSize != m.MaxBatchSize ||
				canon.MaxQueueDelayUS != m.MaxQueueDelayUS || len(canon.Warmup) != 0 {
				t.Fatalf("a manifest other than the signed one verifies: %s", body)
			}
		}
	})
}
