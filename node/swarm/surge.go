package swarm

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/gpunet/gpunet/node"
	"github.com/gpunet/gpunet/protocol"
)

// SurgeOptions describe a surge: many more tasks than the swarm has slots,
// all submitted at once by several submitters spread over the swarm's
// clients.
type SurgeOptions struct {
	// Tasks in all, every one distinct (no cache can answer it).
	Tasks int
	// Submitters share the tasks evenly; submitter i submits through
	// client i mod len(Clients), under its own identity.
	Submitters int
	// Width, Height and Steps size every task.
	Width, Height, Steps uint32
	// Timeout is each task's deadline, as a submitter would set it.
	Timeout time.Duration
	// Prefix makes the prompts distinct from another run's on the same swarm.
	Prefix string
}

// SurgeReport is what a surge did. Waits run from submission to the task's
// start on a GPU (its first "running" event); Jain's index is over the
// submitters' mean time to result, each submitter having sent the same
// number of tasks at the same moment: 1 when they are served alike, 1/n
// when one submitter is served and the others wait.
type SurgeReport struct {
	Tasks      int     `json:"tasks"`
	Submitters int     `json:"submitters"`
	Slots      int     `json:"slots"`
	Completed  int     `json:"completed"`
	Failed     int     `json:"failed"`
	WaitP50Ms  float64 `json:"wait_p50_ms"`
	WaitP99Ms  float64 `json:"wait_p99_ms"`
	DoneP50Ms  float64 `json:"done_p50_ms"`
	DoneP99Ms  float64 `json:"done_p99_ms"`
	Refusals   float64 `json:"refusals_per_task"`
	Jain       float64 `json:"jain_fairness"`
	ElapsedS   float64 `json:"elapsed_s"`
	FirstError string  `json:"first_error,omitempty"`
}

// Surge submits o.Tasks distinct tasks at once and waits for every one of
// them to finish or fail. It needs at least one client (AddClient).
func (s *Swarm) Surge(ctx context.Context, o SurgeOptions) (*SurgeReport, error) {
	if len(s.Clients) == 0 {
		return nil, errors.New("surge needs at least one client")
	}
	if o.Tasks < 1 || o.Submitters < 1 || o.Submitters > o.Tasks {
		return nil, fmt.Errorf("surge: want tasks >= submitters >= 1, got %d tasks, %d submitters", o.Tasks, o.Submitters)
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Minute
	}
	type outcome struct {
		sub      int
		wait     time.Duration // to the first running event; -1 if never
		done     time.Duration
		refusals int
		err      error
	}
	outs := make([]outcome, o.Tasks)
	start := time.Now()
	var wg sync.WaitGroup
	// Submitter by submitter, so that a first-come-first-served swarm would
	// serve the first submitter's tasks before anyone else's.
	for i := range outs {
		sub := i * o.Submitters / o.Tasks
		out := &outs[i]
		out.sub, out.wait = sub, -1
		c := s.Clients[sub%len(s.Clients)]
		task := protocol.Task{Prompt: fmt.Sprintf("%ssurge task %d from submitter %d", o.Prefix, i, sub),
			Width: o.Width, Height: o.Height, Steps: o.Steps}
		wg.Add(1)
		go func() {
			defer wg.Done()
			tctx, cancel := context.WithTimeout(ctx, o.Timeout)
			defer cancel()
			var mu sync.Mutex
			_, err := c.Submit(tctx, task, node.SubmitOptions{
				Submitter: fmt.Sprintf("submitter-%d", sub),
				Progress: func(p node.Progress) {
					mu.Lock()
					defer mu.Unlock()
					switch {
					case p.Stage == "refused":
						out.refusals++
					case p.Stage == "running" && out.wait < 0:
						out.wait = time.Since(start)
					}
				},
			})
			mu.Lock()
			defer mu.Unlock()
			out.done, out.err = time.Since(start), err
		}()
	}
	wg.Wait()

	r := &SurgeReport{Tasks: o.Tasks, Submitters: o.Submitters, ElapsedS: round(time.Since(start).Seconds(), 2)}
	r.Slots = s.opts.Slots * len(s.Hosts)
	var waits, dones []float64
	sum := make([]float64, o.Submitters)
	count := make([]int, o.Submitters)
	refusals := 0
	for _, out := range outs {
		refusals += out.refusals
		if out.err != nil {
			r.Failed++
			if r.FirstError == "" {
				r.FirstError = out.err.Error()
			}
			continue
		}
		r.Completed++
		ms := float64(out.done.Microseconds()) / 1000
		dones = append(dones, ms)
		sum[out.sub] += ms
		count[out.sub]++
		if out.wait >= 0 {
			waits = append(waits, float64(out.wait.Microseconds())/1000)
		}
	}
	r.Refusals = round(float64(refusals)/float64(o.Tasks), 2)
	r.WaitP50Ms, r.WaitP99Ms = round(quantile(waits, 0.5), 0), round(quantile(waits, 0.99), 0)
	r.DoneP50Ms, r.DoneP99Ms = round(quantile(dones, 0.5), 0), round(quantile(dones, 0.99), 0)
	var means []float64
	for i := range sum {
		if count[i] > 0 {
			means = append(means, sum[i]/float64(count[i]))
		}
	}
	r.Jain = round(JainIndex(means), 3)
	return r, nil
}

// JainIndex is Jain's fairness index of xs: (Σx)² / (n·Σx²), 1 when all are
// equal, 1/n when one takes everything. It is 0 for no values.
func JainIndex(xs []float64) float64 {
	var s, s2 float64
	for _, x := range xs {
		s += x
		s2 += x * x
	}
	if len(xs) == 0 || s2 == 0 {
		return 0
	}
	return s * s / (float64(len(xs)) * s2)
}

// quantile is the q-quantile of xs by nearest rank (0 for none).
func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

func round(x float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(x*p) / p
}
