package nodeconf

import (
	"strconv"
	"strings"
)

// validHours checks the syntax of host.hours, "HH:MM-HH:MM" with 24:00 as
// midnight. It repeats node.ParseLendHours, which gpunet host applies to
// the value, because this package must not import node (doc.go); the
// tests of both hold the same cases.
func validHours(s string) bool {
	from, to, ok := strings.Cut(strings.TrimSpace(s), "-")
	return ok && validClock(from) && validClock(to)
}

func validClock(s string) bool {
	h, m, ok := strings.Cut(strings.TrimSpace(s), ":")
	if !ok || len(h) < 1 || len(h) > 2 || len(m) != 2 || strings.Trim(h+m, "0123456789") != "" {
		return false
	}
	hh, _ := strconv.Atoi(h)
	mm, _ := strconv.Atoi(m)
	return mm <= 59 && (hh < 24 || hh == 24 && mm == 0)
}
