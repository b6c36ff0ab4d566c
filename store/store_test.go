package store

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	blocks "github.com/ipfs/go-block-format"
	ds "github.com/ipfs/go-datastore"
)

func TestOpenLockedAndUnclean(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if s.Unclean() {
		t.Error("a fresh directory reported an unclean shutdown")
	}
	if _, err := Open(Config{Dir: dir}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open of a held directory: err = %v, want ErrLocked", err)
	}
	ctx := context.Background()
	if err := s.Datastore().Put(ctx, ds.NewKey("/k"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	blk := blocks.NewBlock([]byte("block bytes"))
	if err := s.Blockstore().Put(ctx, blk); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = Open(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if s.Unclean() {
		t.Error("clean Close reported as unclean")
	}
	if v, err := s.Datastore().Get(ctx, ds.NewKey("/k")); err != nil || string(v) != "v" {
		t.Errorf("value after reopen = %q, %v", v, err)
	}
	if got, err := s.Blockstore().Get(ctx, blk.Cid()); err != nil || string(got.RawData()) != "block bytes" {
		t.Errorf("block after reopen: %v", err)
	}
	// Simulate a crash: the process's lock goes with it, the marker
	// stays behind.
	if err := s.db.Close(); err != nil {
		t.Fatal(err)
	}
	s.lock.Close()
	s, err = Open(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !s.Unclean() {
		t.Error("a run that ended without Close was not reported unclean")
	}
}

func TestOpenUnwritable(t *testing.T) {
	if os.Geteuid() == 0 {
		// root ignores permission bits; use a path under a regular file.
		f := filepath.Join(t.TempDir(), "file")
		os.WriteFile(f, nil, 0o600)
		if _, err := Open(Config{Dir: filepath.Join(f, "data")}); !errors.Is(err, ErrUnwritable) {
			t.Fatalf("err = %v, want ErrUnwritable", err)
		}
		return
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o500)
	defer os.Chmod(dir, 0o700)
	if _, err := Open(Config{Dir: filepath.Join(dir, "data")}); !errors.Is(err, ErrUnwritable) {
		t.Fatalf("err = %v, want ErrUnwritable", err)
	}
}

// TestEncryptionKeyIsChecked: a data dir opens only with the key it was
// created with (or without one, if it was created without), and a wrong
// key is ErrEncryptionKey before Badger touches anything.
func TestEncryptionKeyIsChecked(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	other := bytes.Repeat([]byte{9}, 32)
	enc, plain := t.TempDir(), t.TempDir()
	for dir, k := range map[string][]byte{enc: key, plain: nil} {
		s, err := Open(Config{Dir: dir, EncryptionKey: k, NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	for name, tc := range map[string]struct {
		dir string
		key []byte
		ok  bool
	}{
		"encrypted, its key": {enc, key, true}, "encrypted, no key": {enc, nil, false}, "encrypted, another key": {enc, other, false},
		"plain, no key": {plain, nil, true}, "plain, a key": {plain, key, false},
	} {
		s, err := Open(Config{Dir: tc.dir, EncryptionKey: tc.key, NoSync: true})
		if tc.ok != (err == nil) || (!tc.ok && !errors.Is(err, ErrEncryptionKey)) {
			t.Errorf("%s: err = %v", name, err)
		}
		if s != nil {
			s.Close()
		}
	}
}

// TestBlocksRespectTheReserve: blocks other peers send count against the
// disk reserve: in its upper half they are still stored (replicated
// records keep arriving while the API refuses writes), below its lower
// half they are refused with ErrDiskFull and nothing is stored.
func TestBlocksRespectTheReserve(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Config{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	free, err := s.FreeBytes()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ok := blocks.NewBlock([]byte("fits"))
	if err := s.Blockstore().Put(ctx, ok); err != nil {
		t.Fatalf("a block well inside the free space: %v", err)
	}
	s.minFree = free + free/2 // free is inside the reserve's upper half
	if err := s.CheckSpace(1); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("CheckSpace inside the reserve: %v", err)
	}
	upper := blocks.NewBlock([]byte("inside the reserve's upper half"))
	if err := s.Blockstore().Put(ctx, upper); err != nil {
		t.Fatalf("a block in the reserve's upper half: %v", err)
	}
	s.minFree = 2*free + 1<<30 // half the reserve is now more than the disk has
	refused := blocks.NewBlock([]byte("past the reserve"))
	if err := s.Blockstore().Put(ctx, refused); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("Put past the reserve: err = %v, want ErrDiskFull", err)
	}
	if err := s.Blockstore().PutMany(ctx, []blocks.Block{refused}); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("PutMany past the reserve: err = %v, want ErrDiskFull", err)
	}
	if has, _ := s.Blockstore().Has(ctx, refused.Cid()); has {
		t.Error("a refused block was stored")
	}
	if has, _ := s.Blockstore().Has(ctx, ok.Cid()); !has {
		t.Error("the block stored before is gone")
	}
}
