package inference

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef int (*shoal_cu_init_fn)(unsigned int);
typedef int (*shoal_cu_int_fn)(int *);
typedef int (*shoal_cu_name_fn)(int, const char **);

// shoal_dlopen loads a library into the global namespace; on failure it
// copies dlerror() into err (dlerror's buffer is per thread, and the Go
// caller may read it on another).
static int shoal_dlopen(const char *name, char *err, size_t n) {
	if (dlopen(name, RTLD_NOW | RTLD_GLOBAL)) return 0;
	const char *e = dlerror();
	snprintf(err, n, "%s", e ? e : "unknown dlopen error");
	return -1;
}

// shoal_cuda_driver asks the driver API for its version and its devices.
// Returns -1 when libcuda.so.1 does not load (err says why), -2 when it
// lacks a function, else 0 with *init the result of cuInit(0).
static int shoal_cuda_driver(int *init, char *name, size_t name_n, int *version, int *count, char *err, size_t err_n) {
	void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
	if (!h) {
		const char *e = dlerror();
		snprintf(err, err_n, "%s", e ? e : "unknown dlopen error");
		return -1;
	}
	shoal_cu_init_fn cu_init = (shoal_cu_init_fn)dlsym(h, "cuInit");
	shoal_cu_int_fn cu_version = (shoal_cu_int_fn)dlsym(h, "cuDriverGetVersion");
	shoal_cu_int_fn cu_count = (shoal_cu_int_fn)dlsym(h, "cuDeviceGetCount");
	shoal_cu_name_fn cu_name = (shoal_cu_name_fn)dlsym(h, "cuGetErrorName");
	if (!cu_init || !cu_version || !cu_count) {
		snprintf(err, err_n, "libcuda.so.1 lacks cuInit, cuDriverGetVersion or cuDeviceGetCount");
		return -2;
	}
	*version = 0;
	cu_version(version); // answers before cuInit, with the driver's CUDA version
	*init = cu_init(0);
	if (*init != 0) {
		const char *s = NULL;
		if (cu_name && cu_name(*init, &s) == 0 && s) snprintf(name, name_n, "%s", s);
		return 0;
	}
	*count = 0;
	int r = cu_count(count);
	if (r != 0) {
		*init = r;
		const char *s = NULL;
		if (cu_name && cu_name(r, &s) == 0 && s) snprintf(name, name_n, "%s", s);
	}
	return 0;
}
*/
import "C"

import (
	"errors"
	"strings"
	"unsafe"
)

// probeDriver loads the NVIDIA driver library and asks it for its GPUs.
// The handle stays open: onnxruntime's CUDA provider needs the driver
// loaded anyway.
func probeDriver() cudaDriver {
	var init, version, count C.int
	var name, errb [256]C.char
	r := C.shoal_cuda_driver(&init, &name[0], C.size_t(len(name)), &version, &count, &errb[0], C.size_t(len(errb)))
	if r != 0 {
		msg := C.GoString(&errb[0])
		// dlerror's text is all dlopen gives: ENOENT reads "No such file".
		return cudaDriver{loadErr: msg, notFound: r == -1 && strings.Contains(msg, "No such file")}
	}
	return cudaDriver{initResult: int(init), initName: C.GoString(&name[0]), version: int(version), devices: int(count)}
}

// dlopenGlobal loads a shared library with RTLD_NOW|RTLD_GLOBAL.
func dlopenGlobal(name string) error {
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	var errb [512]C.char
	if C.shoal_dlopen(cname, &errb[0], C.size_t(len(errb))) != 0 {
		return errors.New(C.GoString(&errb[0]))
	}
	return nil
}
