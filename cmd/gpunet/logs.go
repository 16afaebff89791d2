package main

import (
	"context"
	"io"
	"log/slog"
	"slices"

	golog "github.com/ipfs/go-log/v2"
	"github.com/libp2p/go-libp2p/gologshim"
	"go.uber.org/zap/zapcore"
)

// newLogHandler is the handler of this process's log lines: key=value
// text or one JSON object a line (--log-format, log_format in the file).
func newLogHandler(w io.Writer, format string, lvl slog.Level) slog.Handler {
	opts := &slog.HandlerOptions{Level: lvl}
	if format == "json" {
		return slog.NewJSONHandler(w, opts)
	}
	return slog.NewTextHandler(w, opts)
}

// routeLibp2pLogs sends the logs of go-libp2p and its companions through
// h at lvl, so that an operator reads one stream in one format, each
// line of theirs with a "logger" attribute naming its subsystem.
//
// There are two routes, for two kinds of logger: go-libp2p itself logs
// with log/slog through gologshim, which takes a handler (set here before
// the node starts: gologshim binds a logger to its handler at the
// logger's first line); the DHT, kbucket, boxo and the datastore log
// through go-log, which is zap underneath, so zapSlogCore turns its
// entries into slog records. go-libp2p-pubsub has its own copy of
// gologshim with no such hook: its lines (errors only, unless
// GOLOG_LOG_LEVEL says otherwise) stay in go-log's own format.
func routeLibp2pLogs(h slog.Handler, lvl slog.Level) {
	gologshim.SetDefaultHandler(h)
	golog.SetPrimaryCore(&zapSlogCore{h: h})
	// go-log filters by level per subsystem before the core sees an
	// entry, and its default is error: open it to ours.
	_ = golog.SetLogLevel("*", goLogLevel(lvl))
	if lvl > slog.LevelDebug {
		for sub, min := range quietSubsystems {
			_ = golog.SetLogLevel(sub, goLogLevel(max(lvl, min)))
		}
	}
}

// quietSubsystems are go-log subsystems held at a stricter level than the
// rest except at debug, each for a stated reason.
var quietSubsystems = map[string]slog.Level{
	// The DHT warns "failed when refreshing routing table" whenever its
	// table is empty: at every start of a lone daemon and in every one-shot
	// client whose bootstrap peer does not answer, where it would break
	// the one-line error (docs/usage.md, "Errors and exit status") with
	// nothing the node's own lines do not already say.
	"dht/RtRefreshManager": slog.LevelError,
	// The sweeping provider (node/sweep.go) logs every batch and every
	// keyspace region it reprovides at info: routine, and on a busy host
	// several lines a second.
	"dht/provider": slog.LevelWarn,
}

// goLogLevel is the go-log level name that lets through what lvl does.
func goLogLevel(lvl slog.Level) string {
	switch {
	case lvl < slog.LevelInfo:
		return "debug"
	case lvl < slog.LevelWarn:
		return "info"
	case lvl < slog.LevelError:
		return "warn"
	}
	return "error"
}

// zapSlogCore is a zapcore.Core that hands every entry to a slog.Handler.
type zapSlogCore struct {
	h slog.Handler
}

var _ zapcore.Core = (*zapSlogCore)(nil)

func (c *zapSlogCore) Enabled(l zapcore.Level) bool {
	return c.h.Enabled(context.Background(), slogLevel(l))
}

func (c *zapSlogCore) With(fs []zapcore.Field) zapcore.Core {
	return &zapSlogCore{h: c.h.WithAttrs(zapAttrs(fs))}
}

func (c *zapSlogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *zapSlogCore) Write(e zapcore.Entry, fs []zapcore.Field) error {
	r := slog.NewRecord(e.Time, slogLevel(e.Level), e.Message, 0)
	if e.LoggerName != "" {
		r.AddAttrs(slog.String("logger", e.LoggerName))
	}
	r.AddAttrs(zapAttrs(fs)...)
	return c.h.Handle(context.Background(), r)
}

func (c *zapSlogCore) Sync() error { return nil }

// slogLevel maps zap's levels onto slog's; zap's panic and fatal levels
// are errors here (zap itself still panics or exits after writing).
func slogLevel(l zapcore.Level) slog.Level {
	switch {
	case l <= zapcore.DebugLevel:
		return slog.LevelDebug
	case l == zapcore.InfoLevel:
		return slog.LevelInfo
	case l == zapcore.WarnLevel:
		return slog.LevelWarn
	}
	return slog.LevelError
}

// zapAttrs turns zap fields into slog attributes, through zap's own map
// encoder, so that every field type (errors, durations, objects) is
// rendered as zap would render it. A field may add more than one key (an
// error adds its verbose form too); those are sorted.
func zapAttrs(fs []zapcore.Field) []slog.Attr {
	attrs := make([]slog.Attr, 0, len(fs))
	for _, f := range fs {
		enc := zapcore.NewMapObjectEncoder()
		f.AddTo(enc)
		keys := make([]string, 0, len(enc.Fields))
		for k := range enc.Fields {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			attrs = append(attrs, slog.Any(k, enc.Fields[k]))
		}
	}
	return attrs
}
