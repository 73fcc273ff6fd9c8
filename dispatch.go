package wsnotify

import (
	"hash/maphash"
	"sync"
)

// delivery is one message from Redis on its way to the sockets of a user, or
// to every socket when broadcast is set; resync marks the point from which the
// user's sockets must be re-read from history.
type delivery struct {
	user      string
	frame     frame
	broadcast bool
	resync    bool
}

// dispatcher keeps the Redis read loop free of socket work: each message goes
// to the worker its user hashes to, so one user's messages stay in order and
// one slow user cannot stall the others.
type dispatcher struct {
	seed    maphash.Seed
	queues  []chan delivery
	deliver func(delivery, []*Session) []*Session
	wg      sync.WaitGroup
}

// newDispatcher starts n workers. deliver writes one delivery and returns the
// scratch slice for reuse, so a worker allocates no slice per message.
func newDispatcher(n, depth int, deliver func(delivery, []*Session) []*Session) *dispatcher {
	d := &dispatcher{seed: maphash.MakeSeed(), deliver: deliver}
	d.queues = make([]chan delivery, n)
	for i := range d.queues {
		q := make(chan delivery, depth)
		d.queues[i] = q
		d.wg.Go(func() { d.work(q) })
	}
	return d
}

func (d *dispatcher) work(q chan delivery) {
	var scratch []*Session
	for m := range q {
		scratch = d.deliver(m, scratch[:0])
	}
}

// submit queues m. It blocks only when the user's worker is a full queue
// behind, which pushes back on the read loop instead of dropping.
func (d *dispatcher) submit(m delivery) {
	i := maphash.String(d.seed, m.user) % uint64(len(d.queues))
	d.queues[i] <- m
}

// stop drains the queues and waits for the workers; submit must not be
// called after it.
func (d *dispatcher) stop() {
	for _, q := range d.queues {
		close(q)
	}
	d.wg.Wait()
}
