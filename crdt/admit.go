package crdt

// admit decides whether the bytes stored under key are a record this
// replica shows to anyone: every read path (Get, List, the dispatcher)
// goes through it, so the rules for what enters the visible state live in
// one place. Today it checks size, schema and required fields
// (DecodeRecord); the error says why a record was refused.
func (r *Replica) admit(key string, value []byte) (Record, error) {
	return DecodeRecord(value)
}
