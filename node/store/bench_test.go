package store

import (
	"context"
	"log/slog"
	"testing"
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
