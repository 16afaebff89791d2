package store

import (
	"errors"
	"log/slog"
	"time"
)

// DefaultBudget is 1 GiB: room for about 3,000 results of one 512x512 PNG
// (~300 KiB), so a node answers popular prompts from disk, yet small next to
// the model weights a host keeps anyway (several GiB), so lending a GPU does
// not quietly fill a disk. It matches node.DefaultConfig's StoreBudget.
const DefaultBudget int64 = 1 << 30

// Option configures Open.
type Option func(*config)

type config struct {
	budget int64
	now    func() time.Time
	logger *slog.Logger
	noSync bool
}

func defaultConfig() config {
	return config{
		budget: DefaultBudget,
		now:    time.Now,
		logger: nil, // filled in by validate, so WithLogger(nil) means the default too
	}
}

func (c *config) validate() error {
	if c.budget <= 0 {
		return errors.New("store budget must be positive: pass WithBudget a size in bytes")
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.logger == nil {
		c.logger = slog.Default().With("subsystem", "store")
	}
	return nil
}

// WithBudget bounds the bytes of manifests and blocks the store keeps before
// it evicts least-recently-used, unpinned results. Default DefaultBudget.
func WithBudget(bytes int64) Option { return func(c *config) { c.budget = bytes } }

// WithClock sets the clock used for last-access and created times, so tests
// can order LRU eviction exactly. Default time.Now.
func WithClock(now func() time.Time) Option { return func(c *config) { c.now = now } }

// WithLogger sets the store's logger; pebble's own messages go to it too
// (routine ones at Debug). Default slog.Default with subsystem=store.
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// WithoutSync makes Put return before its write is on disk, as every other
// write of the store does: for a store that does not outlive its process (a
// node with no data directory keeps its store in a temporary directory it
// removes), where waiting for the disk buys nothing. A process killed then
// loses the results it stored last. Default: Put syncs (doc.go, Durability).
func WithoutSync() Option { return func(c *config) { c.noSync = true } }
