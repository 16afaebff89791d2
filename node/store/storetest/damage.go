// Package storetest holds helpers for tests of the results store and of
// what uses it: damaging a store on disk as a failing disk would.
package storetest

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// DamageTable overwrites 21 bytes in the middle of the largest pebble table
// in dir, as issue 8 found a store, and returns the table's path. Data
// blocks come first in a table, so the middle is a data block's: pebble's
// checksum of that block no longer matches.
func DamageTable(t testing.TB, dir string) string {
	t.Helper()
	ssts, err := filepath.Glob(filepath.Join(dir, "*.sst"))
	if err != nil || len(ssts) == 0 {
		t.Fatalf("no table in %s (%v): closing the store should have flushed one", dir, err)
	}
	var path string
	var size int64
	for _, p := range ssts {
		if fi, err := os.Stat(p); err == nil && fi.Size() > size {
			path, size = p, fi.Size()
		}
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xAA}, 21), size/2); err != nil {
		t.Fatal(err)
	}
	return path
}
