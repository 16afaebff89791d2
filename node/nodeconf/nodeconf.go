package nodeconf

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
	ma "github.com/multiformats/go-multiaddr"
)

// FileName is the configuration file's name inside the data directory.
const FileName = "config.toml"

// File is the configuration file. The toml tags are its keys; a key with
// a dot (host.slots) is a key of a table ([host] slots = ...). Every key
// is also a flag of gpunet daemon or host, except store.budget.
type File struct {
	Bootstrap []string `toml:"bootstrap"`
	Listen    []string `toml:"listen"`
	API       string   `toml:"api"`
	MDNS      bool     `toml:"mdns"`
	LogLevel  string   `toml:"log_level"`
	LogFormat string   `toml:"log_format"`
	Store     Store    `toml:"store"`
	Host      Host     `toml:"host"`
	Gateway   Gateway  `toml:"gateway"`
}

// Store is the [store] table: the results store.
type Store struct {
	Budget Size `toml:"budget"`
}

// Host is the [host] table: read by gpunet host only.
type Host struct {
	Kernel       string   `toml:"kernel"`
	KernelCmd    string   `toml:"kernel_cmd"`
	KernelModels []string `toml:"kernel_models"`
	GPU          string   `toml:"gpu"`
	Slots        int      `toml:"slots"`
	Queue        int      `toml:"queue"`
	MaxTemp      float64  `toml:"max_temp"`
	RateLimit    float64  `toml:"rate_limit"`
	Hours        string   `toml:"hours"` // lending hours, HH:MM-HH:MM local time; "": every hour
	// Backends are image backends the host serves, each KIND=URL[,OPT=V…]
	// as --backend takes it (docs/kernels.md, "Bring your own backend").
	Backends []string `toml:"backends"`
}

// Gateway is the [gateway] table: the OpenAI routes served beyond
// loopback to the holders of API keys (docs/openai.md, "Gateway"). Both
// keys or neither: a listen address without keys would be an open API,
// and keys without an address serve nothing.
type Gateway struct {
	Listen string `toml:"listen"` // HOST:PORT; "": no gateway
	// APIKeys is the keys file. Load makes a relative path relative to
	// the configuration file's directory, not to wherever the daemon was
	// started, so that the file means the same from any directory.
	APIKeys string `toml:"api_keys"`
}

// Defaults is what a daemon or host runs with when neither the file nor a
// flag says otherwise. The reasons for each value are where the value is
// used: node.DefaultConfig, node.DefaultAPIAddr, node.DefaultListenAddrs
// and the flags of gpunet host.
func Defaults() File {
	return File{
		Bootstrap: []string{},
		Listen: []string{
			"/ip4/0.0.0.0/tcp/4747",
			"/ip4/0.0.0.0/udp/4747/quic-v1",
			"/ip6/::/tcp/4747",
			"/ip6/::/udp/4747/quic-v1",
		},
		API:       "127.0.0.1:7447",
		MDNS:      true,
		LogLevel:  "info",
		LogFormat: "text",
		Store:     Store{Budget: 1 * GiB},
		Host: Host{
			Kernel:       "sketch",
			KernelModels: []string{},
			Backends:     []string{},
			GPU:          "auto",
			Slots:        1,
			Queue:        8,
			RateLimit:    10,
		},
	}
}

// Validate checks what can be checked without a node: the syntax of
// addresses and the range of numbers. Which kernel or GPU exists is for
// gpunet host to find out when it opens them.
func (f File) Validate() error {
	var errs []error
	bad := func(key string, v any, want string) {
		errs = append(errs, fmt.Errorf("%s = %v: %s", key, v, want))
	}
	for _, s := range f.Listen {
		if _, err := ma.NewMultiaddr(s); err != nil {
			bad("listen", fmt.Sprintf("%q", s), "not a multiaddr: want e.g. /ip4/0.0.0.0/tcp/4747")
		}
	}
	for _, s := range f.Bootstrap {
		m, err := ma.NewMultiaddr(s)
		if err != nil {
			bad("bootstrap", fmt.Sprintf("%q", s), `not a multiaddr: copy the address a running daemon prints after "join with:"`)
			continue
		}
		if _, last := ma.SplitLast(m); last == nil || last.Protocol().Code != ma.P_P2P {
			bad("bootstrap", fmt.Sprintf("%q", s), "does not end in /p2p/PEER_ID, so the peer cannot be authenticated")
		}
	}
	if _, _, err := net.SplitHostPort(f.API); err != nil {
		bad("api", fmt.Sprintf("%q", f.API), "want HOST:PORT, e.g. 127.0.0.1:7447")
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(f.LogLevel)); err != nil {
		bad("log_level", fmt.Sprintf("%q", f.LogLevel), "want debug, info, warn or error")
	}
	if f.LogFormat != "text" && f.LogFormat != "json" {
		bad("log_format", fmt.Sprintf("%q", f.LogFormat), "want text or json")
	}
	if f.Store.Budget <= 0 {
		bad("store.budget", f.Store.Budget, "want a positive size, e.g. \"1GiB\"")
	}
	if f.Host.Slots < 1 {
		bad("host.slots", f.Host.Slots, "want at least 1")
	}
	if f.Host.Queue < 0 {
		bad("host.queue", f.Host.Queue, "want 0 or more")
	}
	if f.Host.MaxTemp < 0 || f.Host.MaxTemp > 120 {
		bad("host.max_temp", f.Host.MaxTemp, "want 0 (the GPU's own limit less 5 °C) or up to 120")
	}
	if f.Host.RateLimit < 0 {
		bad("host.rate_limit", f.Host.RateLimit, "want 0 (unlimited) or more")
	}
	if f.Host.Hours != "" && !validHours(f.Host.Hours) {
		bad("host.hours", fmt.Sprintf("%q", f.Host.Hours), `want HH:MM-HH:MM in local time, e.g. "22:00-07:00", or "" for every hour`)
	}
	gw := f.Gateway
	switch {
	case gw.Listen != "" && gw.APIKeys == "":
		errs = append(errs, errors.New("gateway.listen without gateway.api_keys would be an open API: set api_keys to a keys file (`gpunet gateway-key new --name NAME` makes a key)"))
	case gw.Listen == "" && gw.APIKeys != "":
		errs = append(errs, errors.New(`gateway.api_keys without gateway.listen serves nothing: set listen = "HOST:PORT", or remove api_keys`))
	}
	if gw.Listen != "" {
		if _, _, err := net.SplitHostPort(gw.Listen); err != nil {
			bad("gateway.listen", fmt.Sprintf("%q", gw.Listen), "want HOST:PORT, e.g. 127.0.0.1:8080 (behind a TLS proxy)")
		}
	}
	return errors.Join(errs...)
}

// Source says where a setting's value came from.
type Source string

// The sources, weakest first: a flag beats the file, which beats the
// environment (only --data has one, $GPUNET_HOME, and the file lives in
// the data directory, so it cannot set it), which beats the default.
const (
	FromDefault Source = "default"
	FromEnv     Source = "env"
	FromFile    Source = "file"
	FromFlag    Source = "flag"
)

// Setting is one key of the effective configuration.
type Setting struct {
	Key    string `json:"key"`
	Value  any    `json:"value"`
	Source Source `json:"source"`
}

// Merge lays the file under the flags. base holds the flags' values,
// given or default; given says whether the flag of a key was given on the
// command line. For each key: a given flag wins, else a key the file
// defines (md), else base's default. It returns the winning values and
// every key with its value and source, in the file's order.
func Merge(base File, given func(key string) bool, file File, md toml.MetaData) (File, []Setting) {
	out := base
	var settings []Setting
	walk(reflect.ValueOf(&out).Elem(), reflect.ValueOf(file), nil, func(path []string, dst, src reflect.Value) {
		key := strings.Join(path, ".")
		s := Setting{Key: key, Source: FromDefault}
		switch {
		case given(key):
			s.Source = FromFlag
		case md.IsDefined(path...):
			dst.Set(src)
			s.Source = FromFile
		}
		s.Value = dst.Interface()
		settings = append(settings, s)
	})
	return out, settings
}

// Keys lists every key of the file, in order.
func Keys() []string {
	var keys []string
	f := Defaults()
	walk(reflect.ValueOf(&f).Elem(), reflect.ValueOf(f), nil, func(path []string, _, _ reflect.Value) {
		keys = append(keys, strings.Join(path, "."))
	})
	return keys
}

// walk calls leaf for every key of File: dst and src are the same field
// of two Files. Tables (structs other than Size) are descended into.
func walk(dst, src reflect.Value, path []string, leaf func(path []string, dst, src reflect.Value)) {
	t := dst.Type()
	for i := range t.NumField() {
		p := append(slices.Clip(path), t.Field(i).Tag.Get("toml"))
		if t.Field(i).Type.Kind() == reflect.Struct {
			walk(dst.Field(i), src.Field(i), p, leaf)
			continue
		}
		leaf(p, dst.Field(i), src.Field(i))
	}
}
