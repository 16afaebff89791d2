package scheduler

import (
	"runtime"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// threadCPU is the calling thread's CPU time in nanoseconds.
func threadCPU() int64 {
	const clockThreadCPUTimeID = 3
	var ts syscall.Timespec
	syscall.Syscall(syscall.SYS_CLOCK_GETTIME, clockThreadCPUTimeID, uintptr(unsafe.Pointer(&ts)), 0)
	return ts.Nano()
}

// cpuLoop runs f in b.Loop and reports, besides wall-clock ns/op, the
// thread's CPU time per op and the fastest single op: on a machine shared
// with other work, wall time counts the time the benchmark waited for a
// core, and the fastest op is the nearest to what it costs on a quiet one.
func cpuLoop(b *testing.B, f func()) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	n, start, fastest := 0, threadCPU(), time.Duration(1<<62)
	for b.Loop() {
		t := time.Now()
		f()
		fastest = min(fastest, time.Since(t))
		n++
	}
	b.ReportMetric(float64(threadCPU()-start)/float64(n), "cpu-ns/op")
	b.ReportMetric(float64(fastest), "min-ns/op")
}
