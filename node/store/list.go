package store

import (
	"cmp"
	"context"
	"slices"
	"strings"
	"time"

	"github.com/gpunet/gpunet/protocol"
)

// List describes every stored result, most recently used first. Prompt and
// Host come from the manifests; a manifest that cannot be read leaves them
// empty (Get on that result reports and drops it).
func (s *Store) List(ctx context.Context) ([]Entry, error) {
	if err := s.rlockOpen(ctx); err != nil {
		return nil, err
	}
	defer s.mu.RUnlock()
	out := make([]Entry, 0, len(s.entries))
	for _, e := range s.entries {
		if e.isBlock() {
			continue // an input image, not a result
		}
		out = append(out, Entry{
			TaskCID: e.task, ResultCID: e.result, Bytes: e.bytes(), Pinned: e.pinned, Verified: e.verified, Quiet: e.quiet,
			LastAccess: time.UnixMilli(e.lastAccess.Load()),
			Created:    time.UnixMilli(e.created),
		})
	}
	// Under the read lock so no manifest is removed midway; they are small
	// (at most MaxManifestBytes) and List is not on a hot path.
	for i := range out {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		mb, err := s.readVerified(ctx, manifestKey(out[i].ResultCID), out[i].ResultCID)
		var m protocol.Manifest
		if err == nil {
			err = protocol.Unmarshal(mb, &m)
		}
		if err != nil {
			s.log.Warn("listing: unreadable manifest", "result", out[i].ResultCID, "err", err)
			continue
		}
		out[i].Prompt, out[i].Host = m.Task.Prompt, m.Host
	}
	slices.SortFunc(out, func(a, b Entry) int {
		return cmp.Or(
			b.LastAccess.Compare(a.LastAccess),
			strings.Compare(a.ResultCID.KeyString(), b.ResultCID.KeyString()),
		)
	})
	return out, nil
}
