//go:build unix && !aix

package node

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// lockFile is the data directory's lock, held by the one process that uses
// the directory.
const lockFile = "lock"

// ErrDataDirInUse means another process holds the data directory.
var ErrDataDirInUse = errors.New("data directory in use")

// inUseError says who holds the directory and what to do; it is
// ErrDataDirInUse to errors.Is.
type inUseError struct{ dir, owner string }

func (e *inUseError) Error() string {
	return fmt.Sprintf("data directory %s is in use by another gpunet process%s: stop it, or pass another --data", e.dir, e.owner)
}

func (e *inUseError) Unwrap() error { return ErrDataDirInUse }

// dirLock is an exclusive flock on DATA/lock. The kernel drops it when the
// process dies, however it dies, so a crash never leaves a stale lock to
// clean up by hand (a pid file alone would). flock, not fcntl: its locks
// belong to the open file, so a second open in the same process conflicts
// too, as two nodes in one test process do.
type dirLock struct{ f *os.File }

// lockDataDir takes dir's lock without waiting, creating dir if needed. The
// file holds the owner's pid, for the error another process prints.
func lockDataDir(dir string) (*dirLock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating data directory: %w", err)
	}
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, &inUseError{dir: dir, owner: ownerPID(path)}
		}
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	// The pid is advice for a person reading the error; the lock itself is
	// the flock, so a failure to write it is not fatal.
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &dirLock{f: f}, nil
}

// ownerPID is " (pid N)" from the lock file, or "" if it holds no pid.
func ownerPID(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return ""
	}
	return fmt.Sprintf(" (pid %d)", pid)
}

// release drops the lock. The file stays: removing it would let a process
// that opened it just before lock a file no one else can see any more, while
// a third creates and locks a new one.
func (l *dirLock) release() error {
	if l == nil {
		return nil
	}
	_ = l.f.Truncate(0)
	return l.f.Close() // closing the last descriptor drops the flock
}
