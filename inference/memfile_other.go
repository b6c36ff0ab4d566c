//go:build !linux

package inference

// memFile holds data in a temporary file (see memfile_linux.go).
func memFile(name string, data []byte) (path string, cleanup func(), err error) {
	return tempFile(name, data)
}
