package wsnotify

import (
	"context"
	_ "embed"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// notifyLua is the body of the script that stores and publishes a
// notification in one step. The hub runs it with EVALSHA/EVAL; it is also
// loaded as the Redis Function library "wsnotify" (FCALL wsnotify_notify) so
// services in other languages can notify with history through one command.
//
//go:embed notify.lua
var notifyLua string

// FunctionLibrary is the Redis Function library the hub loads at start
// (FUNCTION LOAD REPLACE). It is exported for deployments that load functions
// themselves, for example when the hub's Redis user may not run FUNCTION.
func FunctionLibrary() string {
	return "#!lua name=wsnotify\n" + notifyLua + "\nredis.register_function('wsnotify_notify', wsnotify_notify)\n"
}

// functionLoader loads FunctionLibrary whenever a pub/sub link comes up, so
// that FCALL works for other services after a Redis restart or failover too.
// It runs on its own goroutine: New must not wait for Redis.
type functionLoader struct {
	rdb     redis.UniversalClient
	timeout time.Duration
	log     *slog.Logger
	kicks   chan struct{}
	quit    chan struct{}
	wg      sync.WaitGroup
}

func newFunctionLoader(rdb redis.UniversalClient, enabled bool, timeout time.Duration, log *slog.Logger) *functionLoader {
	f := &functionLoader{rdb: rdb, timeout: timeout, log: log, kicks: make(chan struct{}, 1), quit: make(chan struct{})}
	if enabled {
		f.wg.Go(f.loop)
	}
	return f
}

// kick asks for a load; it never blocks (it runs on a read loop).
func (f *functionLoader) kick() {
	select {
	case f.kicks <- struct{}{}:
	default:
	}
}

func (f *functionLoader) loop() {
	for {
		select {
		case <-f.kicks:
		case <-f.quit:
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
		if err := loadFunction(ctx, f.rdb); err != nil {
			f.log.Warn("wsnotify: could not load the wsnotify Redis Function; FCALL is unavailable to other services", "err", err)
		}
		cancel()
	}
}

func (f *functionLoader) stop() {
	close(f.quit)
	f.wg.Wait()
}

func evalScriptSource() string {
	return notifyLua + "\nreturn wsnotify_notify(KEYS, ARGV)\n"
}

func evalManySource() string {
	return notifyLua + "\nreturn wsnotify_notify_many(KEYS, ARGV)\n"
}

// streamID is a Redis stream id, "<ms>-<seq>". The zero value sorts before
// every real id.
type streamID struct{ ms, seq uint64 }

// parseStreamID reads "<ms>-<seq>"; ok is false for anything else, such as
// the opaque ids of notifications sent without history.
func parseStreamID(s string) (id streamID, ok bool) {
	msPart, seqPart, found := strings.Cut(s, "-")
	if !found {
		return streamID{}, false
	}
	ms, err1 := strconv.ParseUint(msPart, 10, 64)
	seq, err2 := strconv.ParseUint(seqPart, 10, 64)
	if err1 != nil || err2 != nil {
		return streamID{}, false
	}
	return streamID{ms, seq}, true
}

func (a streamID) less(b streamID) bool {
	return a.ms < b.ms || a.ms == b.ms && a.seq < b.seq
}

func (a streamID) isZero() bool { return a == streamID{} }

func (a streamID) String() string {
	return strconv.FormatUint(a.ms, 10) + "-" + strconv.FormatUint(a.seq, 10)
}

// envelopeID finds the id of an envelope without decoding it: the hub and the
// script always write it first. Envelopes from elsewhere fall back to ok=false
// and are delivered without ordering checks.
func envelopeID(payload string) (streamID, bool) {
	const head = `{"id":"`
	if !strings.HasPrefix(payload, head) {
		return streamID{}, false
	}
	end := strings.IndexByte(payload[len(head):], '"')
	if end < 0 {
		return streamID{}, false
	}
	return parseStreamID(payload[len(head) : len(head)+end])
}

// frame is one envelope on its way to a socket; id is zero when the envelope
// carries no stream id.
type frame struct {
	id      streamID
	payload []byte
}
