package node

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/libp2p/go-libp2p/core/crypto"
)

const identityFile = "identity.key"

// loadIdentity reads the node's Ed25519 key from dir, creating it on first
// use. The file is written 0600 and atomically (temp file + rename), so a
// crash never leaves a half-written key that would change the peer ID.
//
// Its errors reach a person starting a daemon, so each names the file or
// directory at fault and what to do about it.
func loadIdentity(dir string) (crypto.PrivKey, error) {
	if fi, err := os.Stat(dir); err == nil && !fi.IsDir() {
		return nil, fmt.Errorf("data directory %s is a file, not a directory: pass --data a directory (it is created if missing)", dir)
	}
	path := filepath.Join(dir, identityFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		k, err := crypto.UnmarshalPrivateKey(b)
		if err != nil {
			// Not deleted for the person: it is the peer's identity, and
			// a backup may restore it.
			return nil, fmt.Errorf("identity key %s is corrupt (%v): move it aside, e.g. mv %s %s.bad, and gpunet makes a new identity (a new peer ID)",
				path, err, path, path)
		}
		return k, nil
	case errors.Is(err, fs.ErrPermission):
		return nil, fmt.Errorf("cannot read identity key %s: permission denied: run gpunet as the user who owns it, or pass another --data", path)
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("reading identity key: %w", err)
	}
	k, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		return nil, fmt.Errorf("generating identity: %w", err)
	}
	b, err = crypto.MarshalPrivateKey(k)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, dataDirError(dir, "creating data directory", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return nil, dataDirError(dir, "writing identity key", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return nil, dataDirError(dir, "writing identity key", err)
	}
	return k, nil
}

// dataDirError wraps a failure to write in the data directory, saying what
// to do when the cause is one a person can fix.
func dataDirError(dir, doing string, err error) error {
	switch {
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("%s: data directory %s is not writable (%w): fix its permissions, or pass another --data", doing, dir, err)
	case errors.Is(err, syscall.EROFS):
		return fmt.Errorf("%s: data directory %s is on a read-only file system (%w): pass --data a writable directory", doing, dir, err)
	}
	return fmt.Errorf("%s in %s: %w", doing, dir, err)
}
