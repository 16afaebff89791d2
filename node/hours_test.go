package node

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpunet/gpunet/kernel"
	"github.com/gpunet/gpunet/protocol"
	"github.com/ipfs/go-cid"
)

func TestParseLendHours(t *testing.T) {
	good := []struct {
		in   string
		want LendHours
	}{
		{"22:00-07:00", LendHours{22 * 60, 7 * 60}},
		{"9:30-17:05", LendHours{9*60 + 30, 17*60 + 5}},
		{" 08:00 - 18:00 ", LendHours{8 * 60, 18 * 60}},
		{"18:00-24:00", LendHours{18 * 60, 0}},
		{"00:00-00:00", LendHours{}},
	}
	for _, c := range good {
		got, err := ParseLendHours(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseLendHours(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	for _, in := range []string{"", "22:00", "22-07", "22:00-07", "25:00-07:00", "22:60-07:00", "24:30-07:00",
		"+1:00-07:00", "22:00-07:00-08:00", "10pm-7am", "220:00-07:00", "-1:00-07:00"} {
		_, err := ParseLendHours(in)
		if err == nil {
			t.Errorf("ParseLendHours(%q) accepted", in)
			continue
		}
		if msg := err.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, "HH:MM-HH:MM") {
			t.Errorf("ParseLendHours(%q): %q, want one line that shows the format", in, msg)
		}
	}
	if s := (LendHours{22 * 60, 7*60 + 5}).String(); s != "22:00-07:05" {
		t.Errorf("String() = %q", s)
	}
}

func TestLendHoursContains(t *testing.T) {
	at := func(h, m int) time.Time { return time.Date(2026, 11, 30, h, m, 0, 0, time.UTC) }
	night, day, always := LendHours{22 * 60, 7 * 60}, LendHours{9 * 60, 17 * 60}, LendHours{6 * 60, 6 * 60}
	cases := []struct {
		h    LendHours
		t    time.Time
		want bool
	}{
		{night, at(21, 59), false},
		{night, at(22, 0), true}, // the start is inside
		{night, at(23, 59), true},
		{night, at(0, 0), true}, // wraps past midnight
		{night, at(6, 59), true},
		{night, at(7, 0), false}, // the end is not
		{night, at(12, 0), false},
		{day, at(8, 59), false},
		{day, at(9, 0), true},
		{day, at(16, 59), true},
		{day, at(17, 0), false},
		{day, at(23, 0), false},
		{always, at(3, 0), true}, // equal start and end: every hour
		{always, at(6, 0), true},
		{LendHours{}, at(12, 0), true},
	}
	for _, c := range cases {
		if got := c.h.Contains(c.t); got != c.want {
			t.Errorf("%v contains %s: %v, want %v", c.h, c.t.Format("15:04"), got, c.want)
		}
	}
}

// fakeClock is a clock a test turns by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// TestLendHoursPauseHost: a host started outside its lending hours takes
// no work and says why; the hours beginning resume it, but never undo the
// owner's own pause, and the owner's resume outside the hours does not
// override them.
func TestLendHoursPauseHost(t *testing.T) {
	clock := &fakeClock{t: time.Date(2026, 11, 30, 12, 0, 0, 0, time.Local)}
	cfg := loopbackConfig()
	cfg.Kernel = kernel.Sketch{}
	cfg.LendHours = LendHours{22 * 60, 7 * 60}
	cfg.now = clock.Now
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()

	// state is the status's pause fields and whether the governor, which
	// admission and the beacon's "accepting" read, holds work back.
	type state struct{ paused, offHours, held bool }
	check := func(when string, want state) {
		t.Helper()
		st := n.Status(ctx)
		n.serve.mu.Lock()
		held := n.serve.gov.Paused()
		n.serve.mu.Unlock()
		if got := (state{st.Paused, st.OffHours, held}); got != want {
			t.Errorf("%s: paused=%v off_hours=%v held=%v, want %+v", when, got.paused, got.offHours, got.held, want)
		}
		if st.LendHours != "22:00-07:00" {
			t.Errorf("%s: lend_hours %q, want 22:00-07:00", when, st.LendHours)
		}
	}
	check("started at noon", state{offHours: true, held: true})
	_, err = n.serve.admit("peer", "", protocol.Task{Prompt: "x"}, cid.Cid{})
	if !errors.Is(err, protocol.ErrPaused) || !strings.Contains(err.Error(), "lending hours (22:00-07:00") {
		t.Errorf("a task out of hours: %v, want a paused refusal that names the lending hours", err)
	}

	clock.Set(time.Date(2026, 11, 30, 22, 30, 0, 0, time.Local))
	n.checkHours()
	check("the hours begin", state{})

	n.Pause()
	clock.Set(time.Date(2026, 12, 1, 7, 0, 0, 0, time.Local))
	n.checkHours()
	check("owner's pause, then the hours end", state{paused: true, offHours: true, held: true})
	_, err = n.serve.admit("peer", "", protocol.Task{Prompt: "x"}, cid.Cid{})
	if err == nil || !strings.Contains(err.Error(), "owner paused") {
		t.Errorf("a task paused both ways: %v, want the owner's pause named first", err)
	}
	clock.Set(time.Date(2026, 12, 1, 22, 0, 0, 0, time.Local))
	n.checkHours()
	check("the hours begin again: the owner's pause stays", state{paused: true, held: true})

	clock.Set(time.Date(2026, 12, 2, 12, 0, 0, 0, time.Local))
	n.checkHours()
	n.Resume()
	check("the owner resumes out of hours", state{offHours: true, held: true})
	clock.Set(time.Date(2026, 12, 2, 23, 0, 0, 0, time.Local))
	n.checkHours()
	check("the hours begin after the owner's resume", state{})
}
