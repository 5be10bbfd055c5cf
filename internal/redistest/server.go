package redistest

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
)

// ServerBinary is the redis-server that StartServer runs when it is not on
// the PATH.
const ServerBinary = "/usr/bin/redis-server"

// StartServer runs a private redis-server on a free loopback port, without
// persistence, with extraArgs added to its command line (such as
// "--maxmemory", "2mb"), and kills it when the test ends. Tests that pause
// the server or fill its memory need one of their own. A missing
// redis-server fails the test: it is not skipped, so that CI cannot pass
// without one.
func StartServer(t testing.TB, extraArgs ...string) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		bin = ServerBinary
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("redis-server is not installed (not on the PATH, nor %s): %v", bin, err)
		}
	}
	var lastErr error
	for try := 0; try < 5; try++ {
		s, err := startServer(t, bin, extraArgs)
		if err == nil {
			return s
		}
		lastErr = err
	}
	t.Fatalf("redis-server: %v", lastErr)
	return nil
}

// startServer makes one attempt: the free port found may be taken by
// another process before redis-server binds it.
func startServer(t testing.TB, bin string, extraArgs []string) (*Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	// --dir: whatever the server writes (a dump on SHUTDOWN, say) goes
	// to the test's own directory, never to the package's.
	args := append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", t.TempDir()}, extraArgs...)
	cmd := exec.Command(bin, args...)
	var out testkit.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	kill := func() {
		cmd.Process.Kill()
		<-exited
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	opt := &redis.Options{Addr: addr}
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case <-exited:
			return nil, fmt.Errorf("%s %v exited: %s", bin, args, out.String())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			kill()
			return nil, fmt.Errorf("%s on %s does not answer PING: %v; output: %s", bin, addr, err, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Cleanup(kill)
	return &Server{Addr: addr, Options: opt}, nil
}
