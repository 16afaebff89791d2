package node

import "time"

// workers runs short-lived jobs (a task's attempt on the client, a session
// request's answer on the host) on long-lived goroutines: a goroutine that
// has run one job has the stack the next one needs (CBOR, the store, a
// signature), where a fresh goroutine per job grew its stack, copying it,
// every time (3–4 % of the CPU at 4,000 tasks/s, issue 14). A job goes to
// an idle worker, or to a new one; a worker idle for workerIdle, or whose
// node closes, ends. The server's runners are the same idea for flights.
type workers struct {
	q    chan func() // to idle workers; unbuffered
	done <-chan struct{}
}

// workerIdle is how long a worker waits for its next job before it ends.
const workerIdle = 10 * time.Second

func newWorkers(done <-chan struct{}) *workers {
	return &workers{q: make(chan func()), done: done}
}

// do runs job on a worker, now.
func (w *workers) do(job func()) {
	select {
	case w.q <- job:
	default:
		go w.work(job)
	}
}

func (w *workers) work(job func()) {
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		job()
		idle.Reset(workerIdle)
		select {
		case job = <-w.q:
		case <-idle.C:
			return
		case <-w.done:
			return
		}
	}
}
