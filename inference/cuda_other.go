//go:build !linux

package inference

import "errors"

// Shoal's CUDA path (the Maven onnxruntime_gpu build, NVIDIA's wheels) is
// Linux x86-64 only; elsewhere the device choice says so and runs on CPU.
var errCUDALinuxOnly = errors.New("CUDA is supported on Linux only")

func probeDriver() cudaDriver { return cudaDriver{loadErr: errCUDALinuxOnly.Error()} }

func dlopenGlobal(string) error { return errCUDALinuxOnly }
