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
	"time"

	"github.com/dgraph-io/badger/v4/options"
	"github.com/ipfs/boxo/blockstore"
	ds "github.com/ipfs/go-datastore"
	"github.com/ipfs/go-datastore/namespace"
	badger4 "github.com/ipfs/go-ds-badger4"
	"golang.org/x/sys/unix"
)

// Sentinel errors callers can test with errors.Is.
var (
	// ErrLocked: another process (another peer) holds the data directory.
	ErrLocked = errors.New("data directory is locked by another process")
	// ErrUnwritable: the data directory cannot be created or written.
	ErrUnwritable = errors.New("data directory is not writable")
	// ErrDiskFull: the data directory's file system has less free space
	// than the reserve (Config.MinFree) a write would leave.
	ErrDiskFull = errors.New("disk full")
	// ErrEncryptionKey: the data directory was written with another
	// encryption key, or with none while one was given (or the reverse).
	ErrEncryptionKey = errors.New("wrong encryption key for the data directory")
)

// Config configures a Store. Zero values take the documented defaults,
// sized for an edge gateway rather than a server.
type Config struct {
	// Dir is the data directory; Badger lives in Dir/badger. Required.
	Dir string
	// Badger runs without a sync per write; Sync makes everything written
	// so far durable, and the replica calls it before acknowledging each of
	// its own writes (crdt.Config.Sync), so a power cut loses no
	// acknowledged write — only other peers' writes merged since the last
	// sync, which the mesh has. NoSync makes Sync a no-op, trading even
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
	// EncryptionKey, when set (16, 24 or 32 bytes: AES-128/192/256),
	// encrypts everything Badger writes — records, documents, artifact
	// blocks. The same key is needed to open the directory again; a
	// directory written without one cannot be opened with one, nor the
	// reverse.
	EncryptionKey []byte
	// MinFree is the free space the peer keeps in reserve: CheckSpace
	// refuses a write that would leave less. Badger writes its memtables
	// through mmap, where a full disk is a SIGBUS rather than an error, so
	// the reserve must cover a memtable flush and replicated writes that
	// keep arriving. Default 64 MiB; negative turns the check off.
	MinFree int64
	// Logger; defaults to slog.Default().
	Logger *slog.Logger
}

// Store is a peer's open database.
type Store struct {
	dir     string
	db      *badger4.Datastore
	lock    *os.File // held while open (see lockDir)
	bs      blockstore.Blockstore
	unclean bool
	minFree int64
	noSync  bool
	log     *slog.Logger
	reclaim reclaimer // flattens after bulk deletes (reclaim.go)
}

// BlocksPrefix is the key prefix of the blockstore inside the datastore.
var BlocksPrefix = ds.NewKey("/blocks")

const runningMarker = "RUNNING"

// valueThreshold is the size from which Badger keeps a value in its value
// log rather than in the LSM tree. Badger's default (1 MiB) kept every
// 256 KiB artifact chunk in the tree, so a 20 MiB fetch filled a
// memtable every 64 chunks and was copied again by each flush and
// compaction: two thirds of a fetching peer's CPU in a profile. Records
// and delta blocks (about a kilobyte) stay in the tree; the space of a
// deleted chunk comes back through value-log GC (GCInterval) instead of
// compaction.
const valueThreshold = 64 << 10

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
	if cfg.MinFree == 0 {
		cfg.MinFree = DefaultMinFree
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
		WithSyncWrites(false).
		WithMemTableSize(cfg.MemTableSize).
		WithBlockCacheSize(cfg.BlockCacheSize).
		WithValueLogFileSize(cfg.ValueLogFileSize).
		WithNumMemtables(2).
		WithCompactL0OnClose(true). // what a prune deleted leaves the disk at least at a stop (reclaim.go)
		WithValueThreshold(valueThreshold).
		WithCompression(options.None)
	if len(cfg.EncryptionKey) > 0 {
		// Badger needs an index cache when blocks are encrypted.
		opts.Options = opts.Options.WithEncryptionKey(cfg.EncryptionKey).WithIndexCacheSize(16 << 20)
	}
	lock, err := lockDir(cfg.Dir)
	if err != nil {
		return nil, err
	}
	db, err := openBadger(cfg, opts)
	if err != nil {
		lock.Close()
		return nil, err
	}
	s := &Store{dir: cfg.Dir, db: db, lock: lock, minFree: cfg.MinFree, noSync: cfg.NoSync, log: cfg.Logger}
	// The marker exists only while a peer runs: finding it at start means
	// the last run ended without Close (kill -9, power cut).
	marker := filepath.Join(cfg.Dir, runningMarker)
	if _, err := os.Stat(marker); err == nil {
		s.unclean = true
	}
	if err := os.WriteFile(marker, []byte(fmt.Sprintf("%d\n", os.Getpid())), 0o600); err != nil {
		db.Close()
		lock.Close()
		return nil, fmt.Errorf("%w: %v", ErrUnwritable, err)
	}
	s.bs = guardedBlockstore{blockstore.NewBlockstore(namespace.Wrap(db, BlocksPrefix), blockstore.NoPrefix()), s}
	return s, nil
}

// openBadger opens the datastore after checking the encryption key
// against the data dir's fingerprint, and records the fingerprint.
func openBadger(cfg Config, opts badger4.Options) (*badger4.Datastore, error) {
	if err := checkKey(cfg.Dir, cfg.EncryptionKey); err != nil {
		return nil, err
	}
	path := filepath.Join(cfg.Dir, "badger")
	db, err := badger4.NewDatastore(path, &opts)
	switch {
	case errors.Is(err, os.ErrPermission):
		return nil, fmt.Errorf("%w: %s: %v", ErrUnwritable, cfg.Dir, err)
	case err != nil:
		return nil, fmt.Errorf("open badger in %s: %w", path, err)
	}
	if err := recordKey(cfg.Dir, cfg.EncryptionKey); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// closeTimeout bounds Close.
const closeTimeout = 20 * time.Second

// DefaultMinFree is Config.MinFree's default.
const DefaultMinFree = 64 << 20

// FreeBytes returns the space left to an unprivileged writer on the data
// directory's file system.
func (s *Store) FreeBytes() (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(s.dir, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", s.dir, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// MinFree returns the reserve (negative: no check).
func (s *Store) MinFree() int64 { return s.minFree }

// CheckSpace returns an ErrDiskFull error when writing need more bytes
// would leave less than the reserve free. Reads never need it.
func (s *Store) CheckSpace(need int64) error {
	short, free, err := s.short(need, s.minFree)
	if err != nil {
		return err
	}
	if short {
		return fmt.Errorf("%w: %s has %d MiB free, a write of %d MiB would cut into the %d MiB reserve", ErrDiskFull,
			s.dir, free>>20, (max(need, 0)+(1<<20)-1)>>20, s.minFree>>20)
	}
	return nil
}

// short reports whether writing need bytes would leave less than keep
// free, and the free space; never with the check off (MinFree < 0).
func (s *Store) short(need, keep int64) (bool, int64, error) {
	if s.minFree < 0 {
		return false, 0, nil
	}
	free, err := s.FreeBytes()
	if err != nil {
		return false, 0, err
	}
	return free-max(need, 0) < keep, free, nil
}

// Dir returns the data directory.
func (s *Store) Dir() string { return s.dir }

// Datastore returns the peer's datastore.
func (s *Store) Datastore() ds.Batching { return s.db }

// Blockstore returns the content-addressed block store.
func (s *Store) Blockstore() blockstore.Blockstore { return s.bs }

// Unclean reports whether the previous run ended without a clean Close.
func (s *Store) Unclean() bool { return s.unclean }

// Sync makes everything written so far durable (a no-op with NoSync).
func (s *Store) Sync(ctx context.Context) error {
	if s.noSync {
		return nil
	}
	return s.db.Sync(ctx, ds.NewKey("/"))
}

// Close syncs and closes the database and marks the shutdown clean.
func (s *Store) Close() error {
	s.stopReclaim()
	err := s.db.Sync(context.Background(), ds.NewKey("/"))
	// Badger retries a failing memtable flush forever (a vanished or full
	// disk), which would hang the peer's shutdown. Bound it: every write it
	// acknowledged is in its write-ahead log already, replayed at the next
	// start, and the RUNNING marker stays to say the close was not clean.
	closed := make(chan error, 1)
	go func() { closed <- s.db.Close() }()
	select {
	case cerr := <-closed:
		if cerr != nil {
			err = errors.Join(err, cerr)
		}
		// Badger let go of its files: so may the lock. (A Badger that
		// did not close keeps the lock to the end of the process.)
		s.lock.Close()
	case <-time.After(closeTimeout):
		err = errors.Join(err, fmt.Errorf("badger did not close within %v (disk errors?); its write-ahead log is replayed at the next start", closeTimeout))
	}
	if err == nil {
		os.Remove(filepath.Join(s.dir, runningMarker))
	}
	return err
}
