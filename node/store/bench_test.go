package store

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"
)

// BenchmarkGetHit measures a local cache hit: the index lookup, reading the
// manifest and one PNG-sized block from pebble, and re-hashing both. A result
// just stored is read from pebble's memtable; "flushed" reads it from an
// sstable on disk (through pebble's block cache), as an older result is.
func BenchmarkGetHit(b *testing.B) {
	for _, flushed := range []bool{false, true} {
		name := "memtable"
		if flushed {
			name = "flushed"
		}
		b.Run(name, func(b *testing.B) {
			ctx := context.Background()
			s, err := Open(b.TempDir(), WithLogger(slog.New(slog.DiscardHandler)))
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			const size = 300 << 10
			f := makeResult(b, newKey(b), "a benchmark", "k", randBlock(1, size))
			mustPut(b, s, f)
			if flushed {
				if err := s.ds.DB.Flush(); err != nil {
					b.Fatal(err)
				}
			}

			b.SetBytes(size)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.Get(ctx, f.task); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkPutSync measures what syncing costs Put: each round stores one
// result in a store that syncs (the default) and one in a store opened
// WithoutSync, both in the same temporary directory's file system, so the
// two figures and their ratio come from the same run and the same noise.
// ns/op covers both puts and building the results; the figures to read
// are synced-ns/put, unsynced-ns/put and synced/unsynced.
func BenchmarkPutSync(b *testing.B) {
	for _, size := range []int{3 << 10, 177 << 10} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			ctx := context.Background()
			quiet := WithLogger(slog.New(slog.DiscardHandler))
			synced, err := Open(b.TempDir(), quiet)
			if err != nil {
				b.Fatal(err)
			}
			defer synced.Close()
			unsynced, err := Open(b.TempDir(), quiet, WithoutSync())
			if err != nil {
				b.Fatal(err)
			}
			defer unsynced.Close()
			key := newKey(b)
			block := randBlock(1, size)
			var tSync, tNoSync time.Duration
			n := 0
			for b.Loop() {
				f := makeResult(b, key, fmt.Sprint("put ", n), "k", block)
				n++
				for _, st := range []struct {
					s *Store
					t *time.Duration
				}{{synced, &tSync}, {unsynced, &tNoSync}} {
					t0 := time.Now()
					if _, err := st.s.Put(ctx, f.manifest, f.blocks); err != nil {
						b.Fatal(err)
					}
					*st.t += time.Since(t0)
				}
			}
			b.ReportMetric(float64(tSync.Nanoseconds())/float64(n), "synced-ns/put")
			b.ReportMetric(float64(tNoSync.Nanoseconds())/float64(n), "unsynced-ns/put")
			b.ReportMetric(float64(tSync)/float64(tNoSync), "synced/unsynced")
		})
	}
}

// BenchmarkOpen measures Open of a store of 64 MiB (PNG-sized results),
// most of it in tables on disk: Open reads every record once so that pebble
// checks every block (doc.go, Damage). The page cache is warm after the
// first round, so this is the CPU's part; a cold start adds reading the
// store's bytes from disk.
func BenchmarkOpen(b *testing.B) {
	const size, total = 177 << 10, 64 << 20
	dir := b.TempDir()
	quiet := WithLogger(slog.New(slog.DiscardHandler))
	s, err := Open(dir, quiet, WithoutSync())
	if err != nil {
		b.Fatal(err)
	}
	key := newKey(b)
	for i := range total / size {
		mustPut(b, s, makeResult(b, key, fmt.Sprint("open ", i), "k", randBlock(uint64(i), size)))
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(total)
	for b.Loop() {
		s, err := Open(dir, quiet)
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
