package peer

import "strings"

// errorsContain reports whether err's message contains s. Some libraries
// (libp2p's listeners among them) flatten the errno into text.
func errorsContain(err error, s string) bool {
	return err != nil && strings.Contains(err.Error(), s)
}
