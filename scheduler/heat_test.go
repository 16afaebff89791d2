package scheduler

import (
	"math"
	"testing"
)

func TestHeatHorizon(t *testing.T) {
	cases := []struct {
		tasks, slots int
		util, span   float64
	}{
		{0, 1, 1, 3 * 1000},           // idle: it runs at once, three service times
		{1, 1, 1, 4 * 1000},           // behind one running task
		{3, 1, 1, 6 * 1000},           // behind one running, two queued
		{0, 4, 0.25, 3 * 1000},        // one of four slots busy with it
		{5, 4, 1, (2.0/4 + 3) * 1000}, // two ahead of it over four slots
		{0, 0, 1, 3 * 1000},           // no slots reported counts as one
	}
	for _, c := range cases {
		u, s := HeatHorizon(c.tasks, c.slots, 1000)
		if math.Abs(u-c.util) > 1e-12 || math.Abs(s-c.span) > 1e-9 {
			t.Errorf("HeatHorizon(%d, %d, 1000) = %v, %v; want %v, %v", c.tasks, c.slots, u, s, c.util, c.span)
		}
	}
}
