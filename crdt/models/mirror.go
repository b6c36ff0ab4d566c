package models

import (
	"sort"
	"strings"

	"github.com/shoal-mesh/shoal/crdt"
)

// mirror is Run's copy of the registry's records, by model and key: what
// a List of Prefix would answer, read once at each full re-read (start,
// every reevaluateEvery, a trust change, a lost subscription) and kept up
// to date in between from the events Run receives, which carry the record
// admission shows for their key (or a delete when it shows none).
// Evaluating a model on a change then costs no read of its history from
// the store: listing a model of 120 records was 4 ms of each subscriber's
// 16 ms between an activation and its watch stream reporting it, with
// nine peer processes on two cores.
//
// The changes no hook reports (crdt's "Events for changes no hook
// reports") reach the mirror at the next full re-read, as they reached
// Run's diff before. Only Run uses a mirror; it needs no lock.
type mirror struct {
	models map[string]map[string]crdt.Entry
	// gen is the state cache's generation (the trust set) the mirror was
	// read under: a state evaluated from it is cached only while that
	// generation holds.
	gen uint64
}

// modelOf returns the model a registry key belongs to.
func modelOf(key string) (string, bool) {
	model, _, ok := strings.Cut(strings.TrimPrefix(key, Prefix), "/")
	return model, ok
}

// byModel groups entries by model.
func byModel(entries []crdt.Entry) map[string][]crdt.Entry {
	out := map[string][]crdt.Entry{}
	for _, e := range entries {
		model, _ := modelOf(e.Key)
		out[model] = append(out[model], e)
	}
	return out
}

// load replaces the mirror's records with a full read made under gen.
func (m *mirror) load(models map[string][]crdt.Entry, gen uint64) {
	m.models, m.gen = map[string]map[string]crdt.Entry{}, gen
	for model, es := range models {
		keys := make(map[string]crdt.Entry, len(es))
		for _, e := range es {
			keys[e.Key] = e
		}
		m.models[model] = keys
	}
}

// apply folds one event into the mirror and returns its model's records,
// ordered by key as List orders them.
func (m *mirror) apply(model string, ev crdt.Event) []crdt.Entry {
	if m.models == nil {
		m.models = map[string]map[string]crdt.Entry{}
	}
	keys := m.models[model]
	if keys == nil {
		keys = map[string]crdt.Entry{}
		m.models[model] = keys
	}
	if ev.Type == crdt.EventPut {
		keys[ev.Key] = crdt.Entry{Key: ev.Key, Record: ev.Record}
	} else {
		delete(keys, ev.Key)
	}
	out := make([]crdt.Entry, 0, len(keys))
	for _, e := range keys {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}
