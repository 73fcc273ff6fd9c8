package wsnotify

import (
	"context"
	"sync"

	"github.com/olahol/melody"
)

// This file holds the no-loss machinery: a socket's first replay from
// history, and the resync of every local user after the pub/sub link blinked.
// Both follow one pattern: the session holds live frames, history is written,
// then the held frames, each frame at most once by its stream id.

// resumeKey is where a melody session keeps its resumePoint until connect.
const resumeKey = "wsnotify.resume"

// resumePoint is where a socket's history starts. fromClient marks an id the
// client sent: it must still be in history, or the client missed something.
type resumePoint struct {
	id         streamID
	fromClient bool
}

// TruncatedType is the envelope type of the frame that tells a resuming
// client that history no longer holds everything after its id; data is
// {"since": "<that id>"}. The client should reload its state from the
// application. Frames of history that remain follow it.
const TruncatedType = "wsnotify.truncated"

func truncatedFrame(since streamID) []byte {
	return appendEnvelope(nil, "", TruncatedType, []byte(`{"since":"`+since.String()+`"}`))
}

// HelloType is the envelope type of the first frame of every socket when
// history is on; data is {"last_id": "<id>"}, the id the socket's stream
// starts after ("0-0" when the user had no history). A client that has not
// yet seen a notification resumes with since=<last_id>.
const HelloType = "wsnotify.hello"

func helloFrame(last streamID) []byte {
	return appendEnvelope(nil, "", HelloType, []byte(`{"last_id":"`+last.String()+`"}`))
}

func (h *Hub) onConnect(ms *melody.Session) {
	s := sessionOf(ms)
	s.attach(ms)
	// melody registers a session after its handshake, so one that completed
	// while Close ran may have missed melody's own sweep; Close sweeps the
	// index after setting closing, so one of the two catches every session.
	if h.isClosing() {
		s.handOver()
		_ = ms.CloseWithMsg(goingAway)
		return
	}
	v, _ := ms.Get(resumeKey)
	ms.UnSet(resumeKey)
	from := v.(resumePoint)
	if h.cfg.history {
		_ = s.Write(helloFrame(from.id))
	}
	if h.cfg.onConnect != nil {
		h.cfg.onConnect(s) // the request and its context are still the handler's
	}
	s.releaseRequest()
	s.handOver()
	// The replay runs beside the socket's pumps: melody starts its writer
	// only after this handler returns, and a long history must be paced by
	// the writer draining the queue.
	h.replays.Go(func() { h.replay(s, from) })
}

// replay writes the socket's history from its resume point, then lets live
// frames through.
func (h *Hub) replay(s *Session, from resumePoint) {
	defer s.release()
	if !h.cfg.history {
		if from.fromClient {
			h.counters.truncated.Add(1)
			_ = s.Write(truncatedFrame(from.id))
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), h.cfg.publishTimeout)
	defer cancel()
	frames, err := h.broker.history(ctx, h.keys.historyKey(s.user), from.id)
	if err != nil {
		h.cfg.logger.Warn("wsnotify: history unavailable; asking the client to retry", "user", s.user, "err", err)
		_ = s.closeWith(CloseTryAgainLater, "history unavailable, reconnect with since")
		return
	}
	if from.fromClient && h.missedSome(ctx, s.user, from.id, frames) {
		h.counters.truncated.Add(1)
		_ = s.Write(truncatedFrame(from.id))
	}
	replayPaced(s, frames)
}

// replayPaced writes frames from history no faster than the client reads.
func replayPaced(s *Session, frames []frame) {
	for _, f := range frames {
		if !s.waitSpace() {
			return
		}
		s.replayed(f)
	}
}

// missedSome tells whether history lost entries after since. An id the
// client saw must still be in history (frames start at it); "0-0", the start
// of a user who had no history, only needs history never to have been
// trimmed. Trimming removes the oldest entries first, so either test is exact
// or errs towards reporting a loss.
func (h *Hub) missedSome(ctx context.Context, user string, since streamID, frames []frame) bool {
	if !since.isZero() {
		return len(frames) == 0 || frames[0].id != since
	}
	trimmed, err := h.broker.trimmed(ctx, h.keys.historyKey(user))
	return err != nil || trimmed
}

// resubscribed runs on the read loop when a user's channel is confirmed on a
// new link. The marker goes through the user's worker, so the sessions start
// holding before any frame that arrived on the new link is written.
func (h *Hub) resubscribed(channel string) {
	if user, ok := h.keys.userOf(channel); ok && h.cfg.history {
		h.workers.submit(delivery{user: user, resync: true})
	}
}

// startResync runs on the user's worker.
func (h *Hub) startResync(user string, sessions []*Session) {
	if len(sessions) == 0 {
		return
	}
	job := resyncJob{user: user, sessions: append([]*Session(nil), sessions...)}
	for _, s := range job.sessions {
		s.hold()
	}
	h.resyncs.add(job)
}

type resyncJob struct {
	user     string
	sessions []*Session // each holding once for this job
}

// resync reads what the user's sessions may have missed while the link was
// down and writes it before the frames held meanwhile.
func (h *Hub) resync(job resyncJob) {
	h.counters.resyncs.Add(1)
	from := job.sessions[0].lastID()
	for _, s := range job.sessions[1:] {
		if id := s.lastID(); id.less(from) {
			from = id
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), h.cfg.publishTimeout)
	defer cancel()
	frames, err := h.broker.history(ctx, h.keys.historyKey(job.user), from)
	for _, s := range job.sessions {
		if err != nil {
			// The client resumes from its own last id when it reconnects.
			go func() { _ = s.closeWith(CloseTryAgainLater, "history unavailable, reconnect with since") }()
		} else {
			replayPaced(s, frames)
		}
		s.release()
	}
}

// resyncWorkers bounds the resyncs in flight: each paces its writes to its
// clients, so one slow client must not hold up the others.
const resyncWorkers = 4

// resyncer runs resync jobs off the dispatcher's workers, from a queue that
// never blocks the worker that adds to it.
type resyncer struct {
	run  func(resyncJob)
	mu   sync.Mutex
	jobs []resyncJob
	kick chan struct{}
	quit chan struct{}
	wg   sync.WaitGroup
}

func newResyncer(run func(resyncJob)) *resyncer {
	r := &resyncer{run: run, kick: make(chan struct{}, resyncWorkers), quit: make(chan struct{})}
	for range resyncWorkers {
		r.wg.Go(r.loop)
	}
	return r
}

func (r *resyncer) add(job resyncJob) {
	r.mu.Lock()
	r.jobs = append(r.jobs, job)
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

func (r *resyncer) next() (resyncJob, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.jobs) == 0 {
		return resyncJob{}, false
	}
	j := r.jobs[0]
	r.jobs = r.jobs[1:]
	return j, true
}

func (r *resyncer) loop() {
	for {
		select {
		case <-r.kick:
		case <-r.quit:
			return
		}
		for j, ok := r.next(); ok; j, ok = r.next() {
			r.run(j)
		}
	}
}

func (r *resyncer) stop() {
	close(r.quit)
	r.wg.Wait()
}
