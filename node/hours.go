package node

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// LendHours is the daily window of local time in which a host takes work:
// its owner lends the GPU at night, say, and has it back by day. Start and
// End are minutes after midnight; the window runs from Start up to, not
// including, End, and wraps past midnight when End is earlier than Start
// (22:00-07:00). Start == End, the zero value included, means every hour.
type LendHours struct {
	Start, End int
}

// ParseLendHours reads "HH:MM-HH:MM" (24-hour clock, local time), e.g.
// "22:00-07:00"; "24:00" is midnight, so "18:00-24:00" reads as meant.
// The error is one line that says what to write instead.
func ParseLendHours(s string) (LendHours, error) {
	bad := func() (LendHours, error) {
		return LendHours{}, fmt.Errorf("lending hours %q: want HH:MM-HH:MM in local time, e.g. 22:00-07:00", s)
	}
	from, to, ok := strings.Cut(strings.TrimSpace(s), "-")
	if !ok {
		return bad()
	}
	start, ok1 := parseClock(from)
	end, ok2 := parseClock(to)
	if !ok1 || !ok2 {
		return bad()
	}
	return LendHours{Start: start, End: end}, nil
}

// parseClock reads H:MM or HH:MM as minutes after midnight, 24:00 as 0.
func parseClock(s string) (int, bool) {
	h, m, ok := strings.Cut(strings.TrimSpace(s), ":")
	if !ok || len(h) < 1 || len(h) > 2 || len(m) != 2 || !digits(h) || !digits(m) {
		return 0, false
	}
	hh, err1 := strconv.Atoi(h)
	mm, err2 := strconv.Atoi(m)
	switch {
	case err1 != nil || err2 != nil || hh < 0 || mm < 0 || mm > 59 || hh > 24:
		return 0, false
	case hh == 24 && mm != 0:
		return 0, false
	}
	return (hh*60 + mm) % (24 * 60), true
}

func digits(s string) bool {
	return strings.Trim(s, "0123456789") == ""
}

// Always reports whether the window is every hour of the day.
func (h LendHours) Always() bool { return h.Start == h.End }

// Contains reports whether t, read on its own clock (a time from
// time.Now is local time), falls inside the window.
func (h LendHours) Contains(t time.Time) bool {
	m := t.Hour()*60 + t.Minute()
	switch {
	case h.Always():
		return true
	case h.Start < h.End:
		return h.Start <= m && m < h.End
	default: // wraps past midnight
		return m >= h.Start || m < h.End
	}
}

func (h LendHours) valid() bool {
	return h.Start >= 0 && h.Start < 24*60 && h.End >= 0 && h.End < 24*60
}

// String is the window as ParseLendHours reads it.
func (h LendHours) String() string {
	return fmt.Sprintf("%02d:%02d-%02d:%02d", h.Start/60, h.Start%60, h.End/60, h.End%60)
}

// hoursCheckEvery is how often a host looks at the clock against its
// lending hours: a window is set to the minute, so half a minute late is
// at worst a few tasks' difference, for one clock read.
const hoursCheckEvery = 30 * time.Second

// startHours keeps a host with lending hours paused outside them: it
// checks at once, so a host started out of hours never takes a task, and
// then every hoursCheckEvery until the node closes.
func (n *Node) startHours() {
	if n.serve == nil || n.cfg.LendHours.Always() {
		return
	}
	n.checkHours()
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		tick := time.NewTicker(hoursCheckEvery)
		defer tick.Stop()
		for {
			select {
			case <-n.ctx.Done():
				return
			case <-tick.C:
				n.checkHours()
			}
		}
	}()
}

// checkHours pauses or resumes the host on the clock; the owner's own
// pause is separate and left as it is.
func (n *Node) checkHours() {
	now := time.Now
	if n.cfg.now != nil {
		now = n.cfg.now
	}
	n.serve.setOffHours(!n.cfg.LendHours.Contains(now()), n.cfg.LendHours)
}
