package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// procs is every child process the harness started, so that each is ended
// on the way out, however the harness leaves.
var procs struct {
	mu   sync.Mutex
	list []*proc
}

// proc is a child process with its output in a log file.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // set before done is closed
}

// startProc starts name with args and env (added to the harness's own),
// its output in dir/<label>.log. The child gets SIGKILL if the harness
// dies, so nothing outlives a crashed run.
func startProc(dir, label string, env []string, name string, args ...string) (*proc, error) {
	logPath := filepath.Join(dir, label+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", label, err)
	}
	p := &proc{name: label, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	procs.mu.Lock()
	procs.list = append(procs.list, p)
	procs.mu.Unlock()
	return p, nil
}

// Pid is the process id.
func (p *proc) Pid() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended.
func (p *proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Signal sends sig to the process.
func (p *proc) Signal(sig syscall.Signal) error { return p.cmd.Process.Signal(sig) }

// Stop ends the process: SIGTERM, then SIGKILL after grace.
func (p *proc) Stop(grace time.Duration) {
	if p.Exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(grace):
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Tail returns the last lines of the process's log, for error messages.
func (p *proc) Tail() string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}

// stopAll ends every child process still running.
func stopAll() {
	procs.mu.Lock()
	list := procs.list
	procs.list = nil
	procs.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range list {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.Stop(3 * time.Second)
		}()
	}
	wg.Wait()
}

// listenAddr waits for a tokenkeeper process to log the address it
// listens on (`listen=host:port` in its text log) and returns it.
func (p *proc) listenAddr(ctx context.Context, timeout time.Duration) (string, error) {
	var addr string
	err := waitFor(ctx, timeout, 20*time.Millisecond, p.name+" listening", func() bool {
		b, _ := os.ReadFile(p.log)
		_, rest, ok := strings.Cut(string(b), " listen=")
		if !ok {
			return p.Exited()
		}
		addr, _, _ = strings.Cut(rest, " ")
		addr = strings.TrimSpace(addr)
		return true
	})
	if err != nil {
		return "", err
	}
	if addr == "" {
		return "", fmt.Errorf("%s exited before listening", p.name)
	}
	return addr, nil
}

// freePort returns a loopback port that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// redisServer is a redis-server child process of the harness, one per
// figure so that counts and pub/sub channels never mix.
type redisServer struct {
	Addr   string
	proc   *proc
	Client *redis.Client
}

// startRedis starts a redis-server with nothing persisted, and keyspace
// events off (the failover figure turns them on); extra are further
// command-line options (they override the ones before).
func startRedis(ctx context.Context, dir, label string, extra ...string) (*redisServer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	data, err := os.MkdirTemp(dir, label+"-data-")
	if err != nil {
		return nil, err
	}
	args := append([]string{
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", data, "--maxclients", "10000", "--loglevel", "warning",
	}, extra...)
	p, err := startProc(dir, label, nil, "redis-server", args...)
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := c.Ping(ctx).Err(); err == nil {
			break
		}
		if p.Exited() || time.Now().After(deadline) {
			c.Close()
			p.Stop(time.Second)
			return nil, fmt.Errorf("redis-server did not start:\n%s", p.Tail())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return &redisServer{Addr: addr, proc: p, Client: c}, nil
}

// URL is a redis:// URL of database 0.
func (r *redisServer) URL() string { return "redis://" + r.Addr + "/0" }

// Options connect a new client.
func (r *redisServer) Options() *redis.Options { return &redis.Options{Addr: r.Addr} }

// Stop shuts the server down.
func (r *redisServer) Stop() {
	r.Client.Close()
	r.proc.Stop(2 * time.Second)
}

// commandCounts is INFO commandstats: calls per command. Redis counts the
// commands a script runs as well as the EVALSHA that ran it.
type commandCounts map[string]int64

// harnessCommands are the commands the harness itself sends while
// counting; they are left out of every count.
var harnessCommands = map[string]bool{"info": true, "config|resetstat": true, "config": true}

// Commands reads INFO commandstats.
func (r *redisServer) Commands(ctx context.Context) (commandCounts, error) {
	s, err := r.Client.Info(ctx, "commandstats").Result()
	if err != nil {
		return nil, fmt.Errorf("INFO commandstats: %w", err)
	}
	out := commandCounts{}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		name, rest, ok := strings.Cut(line, ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		name = strings.TrimPrefix(name, "cmdstat_")
		for field := range strings.SplitSeq(rest, ",") {
			if v, ok := strings.CutPrefix(field, "calls="); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					return nil, fmt.Errorf("INFO commandstats: %q: %w", line, err)
				}
				out[name] = n
			}
		}
	}
	return out, nil
}

// Total is the number of commands counted, the harness's own left out.
func (c commandCounts) Total() int64 {
	var n int64
	for k, v := range c {
		if !harnessCommands[k] {
			n += v
		}
	}
	return n
}

// Sub returns c minus before, command by command.
func (c commandCounts) Sub(before commandCounts) commandCounts {
	out := commandCounts{}
	for k, v := range c {
		if d := v - before[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

// String lists the counts, largest first, for the notes.
func (c commandCounts) String() string {
	type kv struct {
		k string
		v int64
	}
	var l []kv
	for k, v := range c {
		if !harnessCommands[k] {
			l = append(l, kv{k, v})
		}
	}
	for i := range l {
		for j := i + 1; j < len(l); j++ {
			if l[j].v > l[i].v || (l[j].v == l[i].v && l[j].k < l[i].k) {
				l[i], l[j] = l[j], l[i]
			}
		}
	}
	var b strings.Builder
	for i, e := range l {
		if i > 0 {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%s=%d", e.k, e.v)
	}
	return b.String()
}

// needTools fails when a program the harness runs is missing; `make bench`
// installs them first.
func needTools(names ...string) error {
	var missing []string
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s: run `make bench` (it installs them) or apt-get install -y wrk redis-server",
			strings.Join(missing, ", "))
	}
	return nil
}

// moduleRoot finds the repository's root: the directory holding the
// tokenkeeper module's go.mod, from the working directory up (the harness
// is a module of its own, in bench/).
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.HasPrefix(b, []byte("module github.com/tokenkeeper/tokenkeeper\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.mod not found: run the harness from the repository")
		}
		dir = parent
	}
}

// buildTokenkeeper builds the tokenkeeper binary into dir.
func buildTokenkeeper(ctx context.Context, root, dir string) (string, error) {
	out := filepath.Join(dir, "tokenkeeper")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/tokenkeeper")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/tokenkeeper: %w\n%s", err, b)
	}
	return out, nil
}

// rssKiB reads VmRSS of pid from /proc, in KiB.
func rssKiB(pid int) (int64, error) { return procStatus(pid, "VmRSS:") }

// procStatus reads one kB field of /proc/pid/status.
func procStatus(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field); ok {
			v = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB"))
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no %s", pid, field)
}

// infoInt reads one integer field of an INFO section.
func (r *redisServer) infoInt(ctx context.Context, section, field string) (int64, error) {
	s, err := r.Client.Info(ctx, section).Result()
	if err != nil {
		return 0, fmt.Errorf("INFO %s: %w", section, err)
	}
	for line := range strings.SplitSeq(s, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return strconv.ParseInt(v, 10, 64)
		}
	}
	return 0, fmt.Errorf("INFO %s: no %s", section, field)
}
