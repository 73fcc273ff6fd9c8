package main

// The relay process (hidden -relay mode) is a second baseline: the classic
// fix that wsnotify replaces. Each node keeps plain gorilla sockets, a
// notification is one PUBLISH, and every node pattern-subscribes to all of
// them and writes those of its own users. No history, no resume, no melody:
// it shows what one hop through Redis costs by itself on this machine, the
// floor under any design that routes through Redis.

import (
	"context"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

const relayModeArg = "-relay"

type relayServer struct {
	*rawServer
	rdb     *redis.Client
	channel string // prefix of every user's channel
}

func relayMain(args []string) error {
	f, err := childFlagsWithFiles("relay", args)
	if err != nil {
		return err
	}
	rdb := redis.NewClient(&redis.Options{Addr: f.redisAddr, Dialer: loopbackDial, ContextTimeoutEnabled: true})
	defer rdb.Close()
	s := &relayServer{rawServer: newRawServer(), rdb: rdb, channel: f.prefix + ":relay:"}
	ps := rdb.PSubscribe(context.Background(), s.channel+"*")
	if _, err := ps.Receive(context.Background()); err != nil { // the subscription's confirmation
		return err
	}
	var wg sync.WaitGroup
	wg.Go(func() { s.relay(ps) })
	defer wg.Wait()
	defer ps.Close()
	return serveBaseline(s.rawServer, s)
}

// relay writes each published frame to the sockets of its user on this node.
func (s *relayServer) relay(ps *redis.PubSub) {
	for {
		msg, err := ps.ReceiveMessage(context.Background())
		if err != nil {
			return // closed
		}
		user := strings.TrimPrefix(msg.Channel, s.channel)
		s.write(user, []byte(msg.Payload))
	}
}

// notify publishes the frame; the node holding the user writes it.
func (s *relayServer) notify(ctx context.Context, user string, payload []byte) (int64, error) {
	return s.rdb.Publish(ctx, s.channel+user, s.frame(payload)).Result()
}
