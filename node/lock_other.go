//go:build !unix || aix

package node

import (
	"errors"
	"fmt"
	"os"
)

// ErrDataDirInUse means another process holds the data directory.
var ErrDataDirInUse = errors.New("data directory in use")

// dirLock is a no-op where flock is missing (Windows, Plan 9, AIX, wasm).
// A pid file would outlive a crash and lock the owner out of their own
// directory, which is worse than no lock; there the listen port, which no
// longer admits a second process (newHost), is the only guard, and two
// daemons with different --listen can share a directory.
type dirLock struct{}

func lockDataDir(dir string) (*dirLock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating data directory: %w", err)
	}
	return &dirLock{}, nil
}

func (l *dirLock) release() error { return nil }
