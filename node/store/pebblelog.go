package store

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/cockroachdb/pebble/v2"
)

// pebbleLogger routes pebble's messages into the store's logger instead of
// go-log's global one. Pebble reports routine work (WAL recovery, flushes,
// compactions) through Infof: noise for an operator, so it goes to Debug.
type pebbleLogger struct{ l *slog.Logger }

var _ pebble.Logger = pebbleLogger{}

func (p pebbleLogger) Infof(format string, args ...any) {
	if p.l.Enabled(context.Background(), slog.LevelDebug) {
		p.l.Debug(fmt.Sprintf(format, args...), "component", "pebble")
	}
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
}

// Fatalf is called on a broken invariant inside pebble, which expects it not
// to return; pebble's default logger exits the process. Panicking instead
// lets the store turn it into an ErrCorrupt where the store called pebble
// (Store.catch). Damage on disk does not come here: the store's event
// listener reports it instead of pebble's default, which calls Fatalf.
func (p pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.l.Error(msg, "component", "pebble")
	panic("pebble: " + msg)
}
