package serving

import (
	"context"
	"log/slog"
	"time"

	"github.com/shoal-mesh/shoal/api"
	"github.com/shoal-mesh/shoal/crdt"
	"github.com/shoal-mesh/shoal/crdt/models"
	"github.com/shoal-mesh/shoal/inference/resultcache"
)

// Cache flushes are replicated records (design §1): every peer drops its
// cached results of the scope older than the flush's HLC. Flushes owns
// writing them and applying them, from the state and as they arrive.

const kindCacheFlush = "cache.flush"

// FlushPrefix is the key prefix of flush records.
const FlushPrefix = "/shoal/cache/"

func cacheFlushKey(scope string) string { return FlushPrefix + scope + "/flush" }

// Flushes replicates and applies result-cache flushes.
type Flushes struct {
	replica *crdt.Replica
	cache   *resultcache.Cache // nil when the cache is off
	log     *slog.Logger
}

// NewFlushes returns the flushes of cache (nil: nothing to apply).
func NewFlushes(replica *crdt.Replica, cache *resultcache.Cache, log *slog.Logger) *Flushes {
	return &Flushes{replica: replica, cache: cache, log: log}
}

// Flush replicates a flush of model's cached results ("" for all).
func (f *Flushes) Flush(ctx context.Context, model string) (api.CacheFlush, crdt.Write, error) {
	scope := api.CacheFlushAll
	if model != "" {
		if err := models.CheckName("model", model); err != nil {
			return api.CacheFlush{}, crdt.Write{}, err
		}
		scope = model
	}
	fl := api.CacheFlush{Scope: scope, HLC: f.replica.Clock().Now()}
	wr, err := f.replica.Put(ctx, cacheFlushKey(scope), kindCacheFlush, fl)
	if err == nil {
		f.apply(fl)
	}
	return fl, wr, err
}

func (f *Flushes) apply(fl api.CacheFlush) {
	if f.cache == nil {
		return
	}
	model := fl.Scope
	if model == api.CacheFlushAll {
		model = ""
	}
	f.cache.Flush(model, time.Unix(0, fl.HLC.Wall))
}

// Follow applies flush records already in the state, then the ones that
// arrive on sub (a subscription to FlushPrefix), until ctx ends.
func (f *Flushes) Follow(ctx context.Context, sub *crdt.Subscription) {
	defer sub.Close()
	if entries, err := f.replica.List(ctx, "/shoal/cache"); err == nil {
		for _, e := range entries {
			var fl api.CacheFlush
			if e.Record.Kind == kindCacheFlush && e.Record.DecodeBody(&fl) == nil {
				f.apply(fl)
			}
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-sub.Done():
			return
		case ev := <-sub.C():
			var fl api.CacheFlush
			if ev.Type == crdt.EventPut && ev.Record.Kind == kindCacheFlush && ev.Record.DecodeBody(&fl) == nil {
				f.log.Info("result cache flushed", "scope", fl.Scope, "hlc", fl.HLC.String())
				f.apply(fl)
			}
		}
	}
}
