package reach

import (
	"errors"
	"log/slog"
	"strings"
	"testing"

	ma "github.com/multiformats/go-multiaddr"
)

func addrs(t *testing.T, ss ...string) []ma.Multiaddr {
	t.Helper()
	var out []ma.Multiaddr
	for _, s := range ss {
		out = append(out, ma.StringCast(s))
	}
	return out
}

func TestPlanWithSwarmKeyIsTCPOnly(t *testing.T) {
	key, _ := DecodeSwarmKey(EncodeSwarmKey(make32()))
	var logged strings.Builder
	log := slog.New(slog.NewTextHandler(&logged, nil))

	p, err := NewPlan(Settings{PSK: key, Log: log}, addrs(t, "/ip4/0.0.0.0/tcp/4747", "/ip4/0.0.0.0/udp/4747/quic-v1"))
	if err != nil {
		t.Fatal(err)
	}
	if p.QUIC || len(p.Listen) != 1 || p.Listen[0].String() != "/ip4/0.0.0.0/tcp/4747" {
		t.Fatalf("QUIC %v, listen %v: want TCP only", p.QUIC, p.Listen)
	}
	if !strings.Contains(logged.String(), "not listening on QUIC") {
		t.Errorf("dropping QUIC was not logged: %q", logged.String())
	}

	_, err = NewPlan(Settings{PSK: key, Log: log}, addrs(t, "/ip4/127.0.0.1/udp/0/quic-v1"))
	if !errors.Is(err, ErrQUICPrivate) || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "listen on TCP") {
		t.Fatalf("QUIC-only with a key: %v", err)
	}

	p, err = NewPlan(Settings{Log: log}, addrs(t, "/ip4/127.0.0.1/udp/0/quic-v1"))
	if err != nil || !p.QUIC || len(p.Listen) != 1 {
		t.Fatalf("without a key QUIC stays: %v %v", p, err)
	}
}

func make32() []byte {
	k := make([]byte, 32)
	for i := range k {
		k[i] = byte(i + 1)
	}
	return k
}

func TestParseReachability(t *testing.T) {
	for in, want := range map[string]Reachability{"": Unknown, "auto": Unknown, "Public": Public, "private": Private} {
		if got, err := ParseReachability(in); err != nil || got != want {
			t.Errorf("%q: %v %v", in, got, err)
		}
	}
	if _, err := ParseReachability("nat"); err == nil {
		t.Error("nat accepted")
	}
}

func TestExplainDialError(t *testing.T) {
	neg := errors.New("failed to dial: all dials failed\n * [/ip4/1.2.3.4/tcp/1] failed to negotiate security protocol: EOF")
	if got := ExplainDialError(neg, false).Error(); !strings.Contains(got, "private swarm or uses another swarm key") {
		t.Errorf("without a key: %s", got)
	}
	if got := ExplainDialError(neg, true).Error(); !strings.Contains(got, "not in this private swarm") {
		t.Errorf("with a key: %s", got)
	}
	other := errors.New("connection refused")
	if ExplainDialError(other, true) != other || ExplainDialError(nil, true) != nil {
		t.Error("other errors must pass through")
	}
}
