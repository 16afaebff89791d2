//go:build !linux

package scheduler

import (
	"testing"
	"time"
)

// cpuLoop runs f in b.Loop and reports the fastest single op; thread CPU
// time is measured on Linux only.
func cpuLoop(b *testing.B, f func()) {
	fastest := time.Duration(1 << 62)
	for b.Loop() {
		t := time.Now()
		f()
		fastest = min(fastest, time.Since(t))
	}
	b.ReportMetric(float64(fastest), "min-ns/op")
}
