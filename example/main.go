// Command example is a QR-code payment demo of wsnotify: a merchant charges a
// customer through one node, and the customer's browser, connected to
// another node, sees the payment at once.
//
// With no flags it starts an embedded Redis and two nodes, A and B:
//
//	go run ./example
//
// Open http://localhost:8080 (node A) as a customer, and pay from the
// merchant panel: the payment goes through node B and comes back through
// Redis. "Go offline", pay, then "Go online": the page resumes from the
// last id it saw, and so does a reload. To run one node per process on a
// real Redis instead:
//
//	go run ./example -redis 127.0.0.1:6379 -nodes 1 -name A -addr :8080 -peer http://localhost:8081
//	go run ./example -redis 127.0.0.1:6379 -nodes 1 -name B -addr :8081 -peer http://localhost:8080
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/gin-gonic/gin"
	"github.com/redis/go-redis/v9"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "example:", err)
		os.Exit(1)
	}
}

func run() error {
	redisAddr := flag.String("redis", "", "Redis address (host:port); empty starts an embedded Redis on a free loopback port")
	addr := flag.String("addr", "127.0.0.1:8080", "listen address of the first node; with -nodes 2 the second one takes the next port")
	count := flag.Int("nodes", 2, "nodes in this process: 2 (A and B), or 1 to form a cluster of processes on a shared -redis")
	name := flag.String("name", "A", "node name, with -nodes 1")
	peer := flag.String("peer", "", "URL of another node, where the merchant panel pays, with -nodes 1 (default: this node)")
	prefix := flag.String("prefix", "wsnotify", "Redis channel and key prefix; the nodes of one cluster share it")
	flag.Parse()

	specs, err := plan(*addr, *count, *name, *peer)
	if err != nil {
		return err
	}
	gin.SetMode(gin.ReleaseMode)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if *redisAddr == "" {
		mr, err := miniredis.Run()
		if err != nil {
			return err
		}
		defer mr.Close()
		*redisAddr = mr.Addr()
		fmt.Println("embedded Redis on", *redisAddr)
	}

	var servers []*server
	defer func() {
		// A fresh context: the signal context is already done.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, s := range servers {
			if err := s.shutdown(ctx); err != nil {
				fmt.Fprintf(os.Stderr, "node %s: %v\n", s.spec.name, err)
			}
		}
	}()
	failed := make(chan error, len(specs))
	for _, spec := range specs {
		s, err := start(spec, *redisAddr, *prefix, failed)
		if err != nil {
			return err
		}
		servers = append(servers, s)
		fmt.Printf("node %s: %s\n", spec.name, spec.url)
	}

	select {
	case <-ctx.Done():
		fmt.Println("shutting down")
		return nil
	case err := <-failed:
		return err
	}
}

// nodeSpec says where a node listens and which URLs the browser uses.
type nodeSpec struct {
	name, addr, url, peerURL string
}

func plan(addr string, count int, name, peer string) ([]nodeSpec, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("-addr: %w", err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p <= 0 || p+count-1 > 65535 {
		// The peer's URL goes into the page before anything listens, so
		// the port must be known up front.
		return nil, fmt.Errorf("-addr %q: need an explicit port", addr)
	}
	switch count {
	case 1:
		url := publicURL(host, p)
		if peer == "" {
			peer = url
		}
		return []nodeSpec{{name, addr, url, peer}}, nil
	case 2:
		addrB := net.JoinHostPort(host, strconv.Itoa(p+1))
		urlA, urlB := publicURL(host, p), publicURL(host, p+1)
		return []nodeSpec{{"A", addr, urlA, urlB}, {"B", addrB, urlB, urlA}}, nil
	}
	return nil, errors.New("-nodes must be 1 or 2")
}

// publicURL is where a local browser reaches a node. Open the pages at
// exactly these URLs: each node allows the other's origin, and only that, to
// pay through it.
func publicURL(host string, port int) string {
	switch host {
	case "", "0.0.0.0", "::", "127.0.0.1", "::1":
		host = "localhost"
	}
	return "http://" + net.JoinHostPort(host, strconv.Itoa(port))
}

// server is a running node with its HTTP server and Redis client.
type server struct {
	spec nodeSpec
	http *http.Server
	node *node
	rdb  *redis.Client
}

func start(spec nodeSpec, redisAddr, prefix string, failed chan<- error) (*server, error) {
	ln, err := net.Listen("tcp", spec.addr)
	if err != nil {
		return nil, err
	}
	// ContextTimeoutEnabled lets request deadlines bound Redis calls; the
	// hub would otherwise open a second pool with it set.
	rdb := redis.NewClient(&redis.Options{Addr: redisAddr, ContextTimeoutEnabled: true})
	n, err := newNode(nodeOptions{Name: spec.name, Redis: rdb, Prefix: prefix, PeerURL: spec.peerURL})
	if err != nil {
		_ = ln.Close()
		_ = rdb.Close()
		return nil, err
	}
	s := &server{
		spec: spec,
		http: &http.Server{Handler: n.Handler(), ReadHeaderTimeout: 10 * time.Second},
		node: n,
		rdb:  rdb,
	}
	go func() {
		if err := s.http.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			failed <- fmt.Errorf("node %s: %w", spec.name, err)
		}
	}()
	return s, nil
}

// shutdown stops taking requests and lets running ones finish (so a payment
// in flight still notifies), then closes the sockets, which the server does
// not track once upgraded.
func (s *server) shutdown(ctx context.Context) error {
	return errors.Join(s.http.Shutdown(ctx), s.node.Close(ctx), s.rdb.Close())
}
