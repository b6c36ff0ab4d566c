// Package store is a peer's persistent storage: one Badger database
// (through go-ds-badger4) holding both the replicated state's datastore
// and the content-addressed blockstore, plus the bitswap exchange and DAG
// service that move blocks between peers.
//
// One database per peer keeps a single lock, a single fsync policy and a
// single place to back up; the blockstore lives under its own key prefix.
package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4/options"
	"github.com/ipfs/boxo/blockstore"
	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/namespace"
	badger4 "github.com/ipfs/go-ds-badger4"
)

// Sentinel errors callers can test with errors.Is.
var (
	// ErrLocked: another process (another peer) holds the data directory.
	ErrLocked = errors.New("data directory is locked by another process")
	// ErrUnwritable: the data directory cannot be created or written.
	ErrUnwritable = errors.New("data directory is not writable")
)

// Config configures a Store. Zero values take the documented defaults,
// sized for an edge gateway rather than a server.
type Config struct {
	// Dir is the data directory; Badger lives in Dir/badger. Required.
	Dir string
	// SyncWrites fsyncs every write before acknowledging it, so a power
	// cut loses no acknowledged write. Default true; set NoSync to trade
	// that for speed (tests, benchmarks).
	NoSync bool
	// MemTableSize is Badger's memtable size. Default 16 MiB.
	MemTableSize int64
	// BlockCacheSize is Badger's block cache. Default 32 MiB.
	BlockCacheSize int64
	// ValueLogFileSize bounds one value-log file. Default 256 MiB.
	ValueLogFileSize int64
	// GCInterval between value-log GC cycles. Default 10m.
	GCInterval time.Duration
	// Logger; defaults to slog.Default().
	Logger *slog.Logger
}

// Store is a peer's open database.
type Store struct {
	dir     string
	db      *badger4.Datastore
	bs      blockstore.Blockstore
	unclean bool
	log     *slog.Logger
}

// BlocksPrefix is the key prefix of the blockstore inside the datastore.
var BlocksPrefix = ds.NewKey("/blocks")

const runningMarker = "RUNNING"

// Open opens (creating if needed) the store in cfg.Dir.
func Open(cfg Config) (*Store, error) {
	if cfg.Dir == "" {
		return nil, fmt.Errorf("store: Config.Dir is required")
	}
	if cfg.MemTableSize <= 0 {
		cfg.MemTableSize = 16 << 20
	}
	if cfg.BlockCacheSize <= 0 {
		cfg.BlockCacheSize = 32 << 20
	}
	if cfg.ValueLogFileSize <= 0 {
		cfg.ValueLogFileSize = 256 << 20
	}
	if cfg.GCInterval <= 0 {
		cfg.GCInterval = 10 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrUnwritable, cfg.Dir, err)
	}
	probe, err := os.CreateTemp(cfg.Dir, ".probe-*")
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrUnwritable, cfg.Dir, err)
	}
	probe.Close()
	os.Remove(probe.Name())

	opts := badger4.DefaultOptions
	opts.GcInterval = cfg.GCInterval
	opts.Options = opts.Options.
		WithSyncWrites(!cfg.NoSync).
		WithMemTableSize(cfg.MemTableSize).
		WithBlockCacheSize(cfg.BlockCacheSize).
		WithValueLogFileSize(cfg.ValueLogFileSize).
		WithNumMemtables(2).
		WithCompression(options.None)
	path := filepath.Join(cfg.Dir, "badger")
	db, err := badger4.NewDatastore(path, &opts)
	if err != nil {
		if strings.Contains(err.Error(), "Cannot acquire directory lock") {
			return nil, fmt.Errorf("%w: %s", ErrLocked, cfg.Dir)
		}
		if errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("%w: %s: %v", ErrUnwritable, cfg.Dir, err)
		}
		return nil, fmt.Errorf("open badger in %s: %w", path, err)
	}
	s := &Store{dir: cfg.Dir, db: db, log: cfg.Logger}
	// The marker exists only while a peer runs: finding it at start means
	// the last run ended without Close (kill -9, power cut).
	marker := filepath.Join(cfg.Dir, runningMarker)
	if _, err := os.Stat(marker); err == nil {
		s.unclean = true
	}
	if err := os.WriteFile(marker, []byte(fmt.Sprintf("%d\n", os.Getpid())), 0o600); err != nil {
		db.Close()
		return nil, fmt.Errorf("%w: %v", ErrUnwritable, err)
	}
	s.bs = blockstore.NewBlockstore(namespace.Wrap(db, BlocksPrefix), blockstore.NoPrefix())
	return s, nil
}

// Dir returns the data directory.
func (s *Store) Dir() string { return s.dir }

// Datastore returns the peer's datastore.
func (s *Store) Datastore() ds.Batching { return s.db }

// Blockstore returns the content-addressed block store.
func (s *Store) Blockstore() blockstore.Blockstore { return s.bs }

// Unclean reports whether the previous run ended without a clean Close.
func (s *Store) Unclean() bool { return s.unclean }

// Sync flushes everything to disk.
func (s *Store) Sync(ctx context.Context) error { return s.db.Sync(ctx, ds.NewKey("/")) }

// Close syncs and closes the database and marks the shutdown clean.
func (s *Store) Close() error {
	err := s.db.Sync(context.Background(), ds.NewKey("/"))
	if cerr := s.db.Close(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if err == nil {
		os.Remove(filepath.Join(s.dir, runningMarker))
	}
	return err
}
