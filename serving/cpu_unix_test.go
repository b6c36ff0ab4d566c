//go:build unix

package serving

import (
	"syscall"
	"time"
)

// processCPU is the CPU time the process used so far, every thread
// counted (onnxruntime's own included).
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
