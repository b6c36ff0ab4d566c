package api

import "github.com/shoal-mesh/shoal/crdt"

// Cache flushes are replicated records (design §1): every peer drops its
// cached results of the scope older than the flush's HLC.

// CacheFlushAll is the scope of a flush of every model.
const CacheFlushAll = "_all"

// CacheFlush is the record at /shoal/cache/<scope>/flush and the answer
// of POST /v1/cache/flush.
type CacheFlush struct {
	Scope string   `json:"scope"`
	HLC   crdt.HLC `json:"hlc"`
}
