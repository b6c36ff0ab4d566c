package errs

import (
	"errors"
	"fmt"
	"io"
	"testing"
)

func TestMarkKeepsTheMessageAndMatchesBoth(t *testing.T) {
	sentinel := errors.New("sentinel")
	err := Mark(sentinel, fmt.Errorf("reading: %w", io.ErrUnexpectedEOF))
	if err.Error() != "reading: unexpected EOF" {
		t.Errorf("message %q", err)
	}
	if !errors.Is(err, sentinel) || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("%v does not match both the sentinel and its cause", err)
	}
	if errors.Is(err, io.EOF) {
		t.Error("matches an unrelated error")
	}
	if Mark(sentinel, nil) != nil {
		t.Error("Mark(nil) is not nil")
	}
}
