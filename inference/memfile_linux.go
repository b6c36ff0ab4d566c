package inference

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// memFile holds data in an anonymous in-memory file and returns a path
// that opens it, for onnxruntime calls that take only a path. Nothing
// touches the disk (which may be the full one).
func memFile(name string, data []byte) (path string, cleanup func(), err error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		return tempFile(name, data)
	}
	f := os.NewFile(uintptr(fd), name)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return "", nil, err
	}
	return fmt.Sprintf("/proc/self/fd/%d", fd), func() { f.Close() }, nil
}
