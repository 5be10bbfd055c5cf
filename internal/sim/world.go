package sim

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/alicebob/miniredis/v2/server"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/tokenkeeper/tokenkeeper"
	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// The fleet's settings. Lifetimes are short, so that an hour of fake time
// holds several refreshes of each token; the rest are the documented
// defaults.
const (
	Lifetime      = 10 * time.Minute // both upstreams' tokens
	RefreshBefore = 3 * time.Minute
	ServeMargin   = time.Minute
	LockTTL       = 10 * time.Second
	PollInterval  = 2 * time.Second
	RetryMin      = time.Second
	RetryMax      = 30 * time.Second
	UpTimeout     = 10 * time.Second // each upstream call
	AuthPerMinute = 4                // sign-ons a minute, fleet-wide, per token

	// Step is how often the simulator looks at the fleet.
	Step = time.Second
)

// The tokens of the catalog: the RDP liveness token, and one of a generic
// OAuth2 token endpoint, both shared; and per-device RDP tokens, minted
// for each device with a shared access token from a third upstream.
var tokenNames = []string{"liveness", "oauth"}

const (
	deviceToken = "devices"
	devices     = 12 // device-0 .. device-11
)

// addedToken is the shared RDP token a RollingCatalog adds to the catalog
// (and the next one removes), from an upstream of its own (w.up[addedUp]).
const (
	addedToken = "added"
	addedUp    = 3
)

// upNames names the upstreams by index.
var upNames = []string{tokenNames[0], tokenNames[1], deviceToken, addedToken}

// Secrets that must never appear in a log line (with every token the
// upstreams issue).
const (
	clientID     = "sim-client"
	clientSecret = "sim-client-secret-7f3a9c"
	readerKey    = "9c3e71a5f0b2d84c6e19a7f3b5d02c8e"
	adminKey     = "e4a6c1f3e9b7d5024a3f9c1e7a5b2d80"
	wrongKey     = "0123456789abcdef0123456789abcdef"
)

const (
	rdpHost    = "rdp.sim.invalid"
	oauthHost  = "oauth.sim.invalid"
	deviceHost = "devices.sim.invalid"
	addedHost  = "added.sim.invalid"
)

// world is one run: Redis, the upstreams, the replicas and the checker.
// It lives inside one testing/synctest bubble.
type world struct {
	s     Schedule
	rng   *rand.Rand
	start time.Time

	mini  *miniredis.Miniredis
	admin *redis.Client
	up    [4]*fakerdp.Server // by token: rdp, oauth, the per-device tokens' RDP, the added token's RDP

	logs *logScan

	mu        sync.Mutex
	replicas  []*replica
	redisSlow time.Duration // added to every replica's Redis answers
	blip      *Fault        // a RedisBlipAtCall armed, fired by the next upstream call
	freezeAt  *Fault        // a FreezeAtCall armed, fired by the next call to its upstream
	blipUntil time.Time     // Redis unreachable for every replica until then
	signOns   [4][]time.Time
	snapshots []snapshot
	restores  []armedRestore
	upLate    [4]time.Duration // each upstream's answers arrive this late
	catalog   int              // the catalog replicas start with: 1 with addedToken, 0 without
	rolls     []rollStep       // the restarts of a RollingCatalog to come
	paused    chan struct{}    // closed when CLIENT PAUSE WRITE ends; nil when writes run
	restoreAt *armedRestore    // a RedisRestoreAtCall armed (until zero) or striking (at set)

	hookMu     sync.Mutex            // guards bypass, breaches, holdArmed and held
	bypass     map[*server.Peer]bool // commands the hook dispatches itself
	breaches   []string              // token writes stored from a replica without the lock (invariant 9)
	holdArmed  *Fault                // a HeldWrite armed, fired by the next write of its token by the lock's holder
	held       *heldWrite            // the write it holds
	writesSeen int                   // token writes the hook recognised (a run that stores tokens must see some)

	devMu  sync.Mutex
	devGot []deviceAnswer // answers to device requests, checked at the next step
	devWG  sync.WaitGroup // device requests in flight

	chk *checker
}

// replica is one Keeper and its links.
type replica struct {
	w    *world
	idx  int
	name string

	mu         sync.Mutex
	k          *tokenkeeper.Keeper
	rdb        *redis.Client
	rl         *redisLink
	ul         *upLink
	cancel     context.CancelFunc
	done       chan error
	running    bool
	startedAt  time.Time
	generation int // how many times it was started
	catalog    int // the catalog it runs (world.catalog when it started)
	clock      *hostClock
}

func newWorld(s Schedule, logs *logScan) *world {
	w := &world{s: s, rng: rand.New(rand.NewPCG(s.Seed, 0xc11e)), start: time.Now(), logs: logs}
	w.mini = miniredis.NewMiniRedis()
	w.mini.ClockTTL(true)
	// The first dial starts the server in memory; then the hook goes in.
	if c, err := w.mini.Dial(); err == nil {
		c.Close()
	}
	w.bypass = map[*server.Peer]bool{}
	w.mini.Server().SetPreHook(w.hook)
	admin := w.redisOptions(func(context.Context, string, string) (net.Conn, error) { return w.mini.Dial() })
	admin.ClientName = adminName
	w.admin = redis.NewClient(admin)
	for i := range w.up {
		w.up[i] = fakerdp.New(fakerdp.Config{
			ClientID: clientID, ClientSecret: clientSecret,
			Knobs: fakerdp.Knobs{TokenLifetime: Lifetime},
		})
	}
	w.chk = newChecker(w)
	for i := range s.Replicas {
		// Each host's wall clock is off by up to half an hour.
		r := &replica{w: w, idx: i, name: fmt.Sprintf("r%d", i), clock: newHostClock(s.Seed, i)}
		r.clock.step(time.Duration(w.rng.Int64N(int64(time.Hour))) - 30*time.Minute)
		w.replicas = append(w.replicas, r)
	}
	return w
}

// redisOptions are a client's options with dial as its way to Redis.
func (w *world) redisOptions(dial func(context.Context, string, string) (net.Conn, error)) *redis.Options {
	opt := &redis.Options{
		Addr:                     "127.0.0.1:6379", // never dialled
		Dialer:                   dial,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
		PoolSize:                 64,
	}
	refresher.TuneRedis(opt, LockTTL)
	return opt
}

func (w *world) now() time.Duration { return time.Since(w.start) }

// close stops every replica and the servers.
func (w *world) close() {
	w.devWG.Wait() // each ends within its timeout, on fake time
	for _, r := range w.replicas {
		r.stop(false)
	}
	w.admin.Close()
	w.mini.Close()
	// Goroutines of the Redis clients that sleep before they notice their
	// client is closed (a dial's backoff) end within a minute of fake time.
	time.Sleep(time.Minute)
}

// start runs the replica's Keeper (again).
func (r *replica) startKeeper() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.running {
		return nil
	}
	w := r.w
	r.rl = &redisLink{w: w, host: r.clock, changed: make(chan struct{}), conns: map[*linkConn]struct{}{}}
	r.ul = &upLink{w: w, host: r.clock}
	w.mu.Lock()
	r.catalog = w.catalog
	w.mu.Unlock()
	r.rdb = redis.NewClient(w.redisOptions(r.rl.dial))
	hc := &http.Client{Transport: r.ul, Timeout: UpTimeout}
	log := slog.New(slog.NewTextHandler(w.logs, &slog.HandlerOptions{Level: slog.LevelInfo})).With("replica", r.name)
	cfg := tokenkeeper.Config{
		Redis: r.rdb, Instance: r.name, LockTTL: LockTTL, PollInterval: PollInterval,
		RetryMin: RetryMin, RetryMax: RetryMax, AuthPerMinute: AuthPerMinute,
		ServeMargin: ServeMargin, RefreshBefore: RefreshBefore, Logger: log, Clock: r.clock,
		Tokens: []tokenkeeper.TokenConfig{
			{Name: tokenNames[0], RDP: &upstream.Config{
				BaseURL: "http://" + rdpHost, ClientID: clientID, ClientSecret: clientSecret,
				HTTPClient: hc, Timeout: UpTimeout, DefaultLifetime: Lifetime,
			}},
			{Name: tokenNames[1], OAuth2: &upstream.OAuth2Config{
				TokenURL: "http://" + oauthHost + fakerdp.OAuth2TokenPath, ClientID: clientID, ClientSecret: clientSecret,
				HTTPClient: hc, Timeout: UpTimeout, DefaultLifetime: Lifetime,
			}},
			{Name: deviceToken, PerDevice: true, Optional: true, RDP: &upstream.Config{
				BaseURL: "http://" + deviceHost, ClientID: clientID, ClientSecret: clientSecret,
				HTTPClient: hc, Timeout: UpTimeout, DefaultLifetime: Lifetime,
			}},
		},
		HTTP: tokenkeeper.HTTPConfig{ReaderKeys: []string{readerKey}, AdminKeys: []string{adminKey}},
	}
	if r.catalog == 1 {
		cfg.Tokens = append(cfg.Tokens, tokenkeeper.TokenConfig{Name: addedToken, RDP: &upstream.Config{
			BaseURL: "http://" + addedHost, ClientID: clientID, ClientSecret: clientSecret,
			HTTPClient: hc, Timeout: UpTimeout, DefaultLifetime: Lifetime,
		}})
	}
	k, err := tokenkeeper.New(cfg)
	if err != nil {
		r.rdb.Close()
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.k, r.cancel, r.done, r.running = k, cancel, make(chan error, 1), true
	r.startedAt = time.Now()
	r.generation++
	done := r.done
	go func() { done <- k.Run(ctx) }()
	return nil
}

// stop ends the replica: gracefully, or as a crash, its links cut first
// so that nothing it says on the way out arrives.
func (r *replica) stop(crash bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.running {
		return nil
	}
	if crash {
		r.rl.set(linkRefused)
		r.ul.set(linkRefused)
	}
	// A frozen process is killed or stopped as it resumes.
	r.clock.thaw()
	r.cancel()
	err := <-r.done
	r.rdb.Close()
	r.running = false
	r.k = nil
	return err
}

// keeper returns the running Keeper, or nil.
func (r *replica) keeper() *tokenkeeper.Keeper {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.k
}

type linkState int

const (
	linkUp linkState = iota
	linkCut
	linkRefused
)

var errRefused = errors.New("sim: connection refused")

// redisLink is one replica's way to Redis, which faults cut, refuse or
// slow down.
type redisLink struct {
	w       *world
	host    *hostClock // frozen: writes wait, answers are held
	mu      sync.Mutex
	state   linkState
	latency time.Duration
	changed chan struct{}
	conns   map[*linkConn]struct{}
}

func (l *redisLink) set(s linkState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.state = s
	close(l.changed)
	l.changed = make(chan struct{})
	if s == linkRefused {
		for c := range l.conns {
			c.Conn.Close()
		}
	}
}

// reset closes every open connection, as a Redis restart does.
func (l *redisLink) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for c := range l.conns {
		c.Conn.Close()
	}
}

func (l *redisLink) setLatency(d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.latency = d
}

// view returns the link's state as a connection sees it: cut also while
// the world's Redis blips.
func (l *redisLink) view() (linkState, time.Duration, <-chan struct{}) {
	l.w.mu.Lock()
	slow, blip := l.w.redisSlow, l.w.blipUntil
	l.w.mu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.state
	if s == linkUp && time.Now().Before(blip) {
		s = linkCut
	}
	return s, l.latency + slow, l.changed
}

// dial opens a connection through the link. A cut or refused link fails
// the dial at once: a dial that waited for its timeout would wait inside
// go-redis's PubSub lock, and a goroutine waiting for that lock holds a
// synctest bubble's time still (a partition's dial fails, sooner).
func (l *redisLink) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	if state, _, _ := l.view(); state != linkUp {
		return nil, errRefused
	}
	nc, err := l.w.mini.Dial()
	if err != nil {
		return nil, err
	}
	near, far := net.Pipe()
	c := &linkConn{Conn: nc, l: l, rd: near}
	go buffer(nc, far)
	l.mu.Lock()
	l.conns[c] = struct{}{}
	l.mu.Unlock()
	return c, nil
}

// buffer hands what Redis sends on nc to far, the far end of the pipe
// the client reads, keeping whatever the client has not read yet, as a
// socket's buffers do: Redis's writes never wait for the client. (A
// write to a net.Pipe waits for the reader; miniredis writes under a
// connection's lock, which its pub/sub goroutines wait for, and a
// goroutine waiting for a lock holds a synctest bubble's time still: a
// client that read only after a timer, such as the events' connection
// after an error, would stop the simulation for good.)
func buffer(nc, far net.Conn) {
	var (
		mu     sync.Mutex
		queue  [][]byte
		closed bool
		more   = make(chan struct{}, 1)
	)
	go func() {
		defer far.Close()
		for {
			mu.Lock()
			q, done := queue, closed && len(queue) == 0
			queue = nil
			mu.Unlock()
			if done {
				return
			}
			if len(q) == 0 {
				<-more
				continue
			}
			for _, p := range q {
				if _, err := far.Write(p); err != nil {
					nc.Close() // the client closed its end
					return
				}
			}
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := nc.Read(buf)
		mu.Lock()
		if n > 0 {
			queue = append(queue, append([]byte(nil), buf[:n]...))
		}
		closed = err != nil
		mu.Unlock()
		select {
		case more <- struct{}{}:
		default:
		}
		if err != nil {
			return
		}
	}
}

// linkConn is a connection through a redisLink: writes go to Redis's end
// (Conn), answers come through rd (see buffer).
type linkConn struct {
	net.Conn
	l  *redisLink
	rd net.Conn

	mu       sync.Mutex
	queue    []delayed // writes on their way, when the link is slow or the replica frozen
	pumping  bool
	closed   bool
	answered bool      // the handshake is done: faults apply
	lost     bool      // bytes were lost in a cut: the connection fails once the cut ends
	wdl      time.Time // the write deadline
}

// errLost is what a connection that lost bytes in a partition fails with
// once the partition ends. TCP never loses bytes from a connection that
// lives on: it delivers them late, or the connection fails. A cut drops
// them, so the connection that lost some must not carry on as if nothing
// was missing (a SUBSCRIBE lost while its connection's PINGs are answered
// later is a subscription no real client could lose); it fails, as one
// whose retransmissions ran out does.
var errLost = errors.New("sim: connection reset after a partition (bytes were lost in it)")

// lose records that bytes of c were lost in a cut.
func (c *linkConn) lose() {
	c.mu.Lock()
	c.lost = true
	c.mu.Unlock()
}

// failIfLost reports errLost when c lost bytes in a cut that has ended,
// closing c.
func (c *linkConn) failIfLost(state linkState) error {
	c.mu.Lock()
	lost := c.lost
	c.mu.Unlock()
	if !lost || state == linkCut {
		return nil
	}
	c.Close()
	return errLost
}

type delayed struct {
	due time.Time
	p   []byte
	wdl time.Time // the write deadline when it was written
}

func (c *linkConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	c.wdl = t
	c.mu.Unlock()
	c.rd.SetReadDeadline(t)
	return c.Conn.SetWriteDeadline(t)
}

func (c *linkConn) SetReadDeadline(t time.Time) error { return c.rd.SetReadDeadline(t) }

func (c *linkConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	c.wdl = t
	c.mu.Unlock()
	return c.Conn.SetWriteDeadline(t)
}

// Write sends p, late by the link's latency: a command arrives late, and
// its answer with it. A late write is handed to a goroutine of the
// connection's that waits, so that the writer never waits for time while
// it may hold a lock (go-redis's PubSub holds one while it writes), and
// answers are never held back (miniredis writes answers and published
// messages under its lock).
func (c *linkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	fresh := !c.answered
	c.mu.Unlock()
	if fresh {
		// The handshake of a new connection goes through untouched: go-redis
		// opens a PubSub's connection holding the PubSub's lock, and a
		// handshake that waited for time would hold a bubble's time still
		// (a goroutine waiting for a lock is not durably blocked).
		return c.Conn.Write(p)
	}
	state, latency, _ := c.l.view()
	if state == linkCut {
		c.lose()
		return len(p), nil // lost on the way
	}
	if err := c.failIfLost(state); err != nil {
		return 0, err
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return 0, net.ErrClosed
	}
	frozen := c.l.host.isFrozen()
	if latency <= 0 && len(c.queue) == 0 && !frozen {
		c.mu.Unlock()
		return c.Conn.Write(p)
	}
	due := time.Now().Add(latency)
	if n := len(c.queue); n > 0 && due.Before(c.queue[n-1].due) {
		due = c.queue[n-1].due
	}
	c.queue = append(c.queue, delayed{due: due, p: append([]byte(nil), p...), wdl: c.wdl})
	if !c.pumping {
		c.pumping = true
		go c.pump()
	}
	c.mu.Unlock()
	return len(p), nil
}

// pump delivers the late writes in order, each when it is due.
func (c *linkConn) pump() {
	for {
		c.mu.Lock()
		if len(c.queue) == 0 || c.closed {
			c.pumping = false
			c.queue = nil
			c.mu.Unlock()
			return
		}
		d := c.queue[0]
		c.mu.Unlock()
		time.Sleep(time.Until(d.due))
		// A frozen replica sends nothing until it runs again, and then
		// only what its deadline still allows (the write fails, and
		// with it the connection, as a socket's write past its deadline
		// does).
		if c.l.host.isFrozen() {
			<-c.l.host.thawed()
			if !d.wdl.IsZero() && !time.Now().Before(d.wdl) {
				c.mu.Lock()
				c.closed = true
				c.queue = nil
				c.pumping = false
				c.mu.Unlock()
				c.Conn.Close()
				return
			}
		}
		if state, _, _ := c.l.view(); state != linkCut {
			if _, err := c.Conn.Write(d.p); err != nil {
				c.mu.Lock()
				c.closed = true
				c.mu.Unlock()
			}
		} else {
			c.lose()
		}
		c.mu.Lock()
		if len(c.queue) > 0 {
			c.queue = c.queue[1:]
		}
		c.mu.Unlock()
	}
}

func (c *linkConn) Read(p []byte) (int, error) {
	for {
		n, err := c.rd.Read(p)
		if err != nil {
			return n, err
		}
		c.mu.Lock()
		fresh := !c.answered
		c.answered = true
		c.mu.Unlock()
		state, _, _ := c.l.view()
		if state == linkCut && !fresh {
			c.lose()
			continue // lost on the way: wait for the read deadline
		}
		if err := c.failIfLost(state); err != nil {
			return 0, err
		}
		// A frozen replica's answers are read as they arrive, as its
		// kernel would buffer them (and buffer keeps those not read yet).
		// The frozen replica acts on them only with a goroutine whose
		// timers and writes are stalled anyway, and answers nobody
		// meanwhile.
		return n, err
	}
}

func (c *linkConn) Close() error {
	c.l.mu.Lock()
	delete(c.l.conns, c)
	c.l.mu.Unlock()
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.rd.Close()
	return c.Conn.Close()
}

// upLink is one replica's way to the upstreams: an http.RoundTripper that
// hands each request to the fake in memory, and that faults cut.
type upLink struct {
	w     *world
	host  *hostClock // frozen: calls wait, answers are held
	mu    sync.Mutex
	state linkState
}

func (l *upLink) set(s linkState) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.state = s
}

func (l *upLink) RoundTrip(req *http.Request) (*http.Response, error) {
	<-l.host.thawed() // a frozen replica calls nobody
	l.mu.Lock()
	state := l.state
	l.mu.Unlock()
	switch state {
	case linkRefused:
		return nil, errRefused
	case linkCut:
		<-req.Context().Done()
		return nil, req.Context().Err()
	}
	var up int
	switch req.URL.Host {
	case rdpHost:
	case oauthHost:
		up = 1
	case deviceHost:
		up = 2
	case addedHost:
		up = addedUp
	default:
		return nil, fmt.Errorf("sim: no upstream at %q", req.URL.Host)
	}
	w := l.w
	w.upstreamCall(up, req.URL.Path)
	if d := w.freezeCaller(up, req.URL.Path); d > 0 {
		// Frozen while the call is in flight: the upstream answers, and
		// the answer waits for the replica to run again.
		l.host.freeze()
		time.AfterFunc(d, l.host.thaw)
	}
	rec := httptest.NewRecorder()
	w.up[up].ServeHTTP(rec, req)
	w.mu.Lock()
	late := w.upLate[up]
	w.mu.Unlock()
	if late > 0 {
		// The answer is on its way back: the token was issued already.
		t := time.NewTimer(late)
		select {
		case <-t.C:
		case <-req.Context().Done():
		}
		t.Stop()
	}
	<-l.host.thawed() // nor reads an answer
	if err := req.Context().Err(); err != nil {
		return nil, err
	}
	resp := rec.Result()
	resp.Request = req
	return resp, nil
}

// upstreamCall records a call that reached upstream up: sign-ons for
// invariant 4, and the trigger of an armed Redis blip.
func (w *world) upstreamCall(up int, path string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if path == fakerdp.AuthV2Path || path == fakerdp.OAuth2TokenPath {
		w.signOns[up] = append(w.signOns[up], time.Now())
	}
	if a := w.restoreAt; a != nil && a.at.IsZero() && up == a.ti && (path == upstream.DefaultLivenessPath || path == fakerdp.OAuth2TokenPath) {
		a.at = time.Now().Add(time.Second)
		a.taken = len(w.snapshots)
	}
	if w.blip != nil && (path == upstream.DefaultLivenessPath || path == fakerdp.OAuth2TokenPath) {
		w.blipUntil = time.Now().Add(w.blip.Arg)
		w.blip = nil
	}
}

// freezeCaller returns how long the caller freezes when an armed
// FreezeAtCall fires on this call (disarming it), else 0.
func (w *world) freezeCaller(up int, path string) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	f := w.freezeAt
	if f == nil || up != f.Replica%2 || path != upstream.DefaultLivenessPath && path != fakerdp.OAuth2TokenPath {
		return 0
	}
	w.freezeAt = nil
	return f.Arg
}

// keys are the Redis keys of token i.
func keys(i int) cache.Keys { return cache.KeysFor(tokenNames[i]) }

// adminName is the Redis client name of the simulator's own client, which
// no fault of Redis's holds back.
const adminName = "sim-admin"

// writeArgs is how many arguments the token's write script takes
// (cache/lua/write.lua), whose first two keys are the token's hash and
// its lock.
const writeArgs = 11

// tokenWrite returns which token cmd (with its arguments) writes with the
// write script, and the script's arguments (ARGV), or -1.
func tokenWrite(cmd string, args []string) (int, []string) {
	if cmd != "EVALSHA" && cmd != "EVAL" || len(args) < 2 {
		return -1, nil
	}
	n, err := strconv.Atoi(args[1])
	if err != nil || n < 2 || len(args) != 2+n+writeArgs {
		return -1, nil
	}
	for i := range tokenNames {
		if k := keys(i); args[2] == k.Token && args[3] == k.Lock {
			return i, args[2+n:]
		}
	}
	return -1, nil
}

// dispatchUnhooked runs a command for c as Redis would, past the hook
// (which is running it: the command's own turn through the hook is this
// one).
func (w *world) dispatchUnhooked(c *server.Peer, cmd string, args []string) {
	w.hookMu.Lock()
	w.bypass[c] = true
	w.hookMu.Unlock()
	w.mini.Server().Dispatch(c, append([]string{cmd}, args...))
	w.hookMu.Lock()
	delete(w.bypass, c)
	w.hookMu.Unlock()
}

// hook runs before every command Redis serves: it holds back writes
// while CLIENT PAUSE WRITE is in force, and checks that a token write is
// stored only from the replica holding the token's lock (invariant 9).
func (w *world) hook(c *server.Peer, cmd string, args ...string) bool {
	if cmd == "HELLO" {
		// miniredis ignores HELLO's SETNAME, which go-redis sends.
		for i := 0; i+1 < len(args); i++ {
			if strings.EqualFold(args[i], "SETNAME") {
				c.ClientName = args[i+1]
			}
		}
		return false
	}
	w.hookMu.Lock()
	bypass := w.bypass[c]
	w.hookMu.Unlock()
	if bypass || c.ClientName == adminName {
		return false
	}
	if w.pausesWrite(cmd) {
		w.mu.Lock()
		p := w.paused
		w.mu.Unlock()
		if p != nil {
			<-p
		}
	}
	ti, argv := tokenWrite(cmd, args)
	if ti < 0 {
		return w.takeover(c, cmd, args)
	}
	w.hookMu.Lock()
	w.writesSeen++
	w.hookMu.Unlock()
	k, lockValue := keys(ti), argv[0]
	if held, _ := w.mini.Get(k.Lock); held == lockValue {
		if h := w.hold(c, ti, lockValue); h != nil {
			// Held until another replica took the lock (or the writer
			// resumed); then the write runs, checked below.
			defer close(h.done)
			<-h.release
		}
		if held, _ := w.mini.Get(k.Lock); held == lockValue {
			return false
		}
	}
	// The writer does not hold the lock: the write must be refused.
	before := w.mini.HGet(k.Token, "g")
	w.dispatchUnhooked(c, cmd, args)
	held, _ := w.mini.Get(k.Lock)
	// (Another replica's write between the two readings would change the
	// generation too, but not store this value.)
	if after := w.mini.HGet(k.Token, "g"); after != before && held != lockValue && w.mini.HGet(k.Token, "v") == argv[1] {
		w.hookMu.Lock()
		w.breaches = append(w.breaches, fmt.Sprintf("a write of %s by %s was stored while %s held its lock",
			tokenNames[ti], holder(lockValue), holder(held)))
		w.hookMu.Unlock()
	}
	return true
}

// heldWrite is a token write a HeldWrite holds at Redis: the writer held
// the lock as it arrived, and froze.
type heldWrite struct {
	peer      *server.Peer
	ti        int
	lockValue string
	release   chan struct{} // closed to let the write run
	once      sync.Once
	done      chan struct{} // closed once it ran
}

func (h *heldWrite) let() { h.once.Do(func() { close(h.release) }) }

// hold arms a held write when a HeldWrite waits for this write of token
// ti by the lock's holder, freezing the writer for the fault's Arg; it
// returns nil when the write goes on.
func (w *world) hold(c *server.Peer, ti int, lockValue string) *heldWrite {
	w.hookMu.Lock()
	defer w.hookMu.Unlock()
	f := w.holdArmed
	if f == nil || f.Replica%2 != ti || w.held != nil {
		return nil
	}
	var writer *replica
	for _, r := range w.replicas {
		if r.name == holder(lockValue) {
			writer = r
		}
	}
	if writer == nil {
		return nil
	}
	w.holdArmed = nil
	h := &heldWrite{peer: c, ti: ti, lockValue: lockValue, release: make(chan struct{}), done: make(chan struct{})}
	w.held = h
	writer.clock.freeze()
	time.AfterFunc(f.Arg, func() {
		// The writer resumes; its write, if still waiting, goes on
		// (Redis answers it, late, whoever holds the lock then).
		writer.clock.thaw()
		w.releaseHeld(h)
	})
	return h
}

// releaseHeld lets h run and waits until it did.
func (w *world) releaseHeld(h *heldWrite) {
	w.hookMu.Lock()
	if w.held == h {
		w.held = nil
	}
	w.hookMu.Unlock()
	h.let()
	<-h.done
}

// takeover runs a script that may take a held write's lock (any EVAL or
// EVALSHA naming the lock, from another connection) and, when the lock
// then holds another replica's value, lets the held write run before
// the script's answer goes back: the deposed leader's write arrives
// right after another replica took the lock and before it could write.
// It reports whether it ran the command.
func (w *world) takeover(c *server.Peer, cmd string, args []string) bool {
	w.hookMu.Lock()
	h := w.held
	w.hookMu.Unlock()
	if h == nil || c == h.peer || cmd != "EVALSHA" && cmd != "EVAL" {
		return false
	}
	lock := keys(h.ti).Lock
	names := false
	for _, a := range args {
		names = names || a == lock
	}
	if !names {
		return false
	}
	w.dispatchUnhooked(c, cmd, args)
	if now, _ := w.mini.Get(lock); now != "" && now != h.lockValue {
		w.releaseHeld(h)
	}
	return true
}

// holder names the replica a lock value belongs to (the value ends with
// its instance), or "nobody".
func holder(lockValue string) string {
	if lockValue == "" {
		return "nobody"
	}
	return lockValue[strings.LastIndexByte(lockValue, ':')+1:]
}

// pausesWrite reports whether CLIENT PAUSE WRITE holds cmd back: every
// command that writes, and EVAL, EVALSHA, PUBLISH and PFCOUNT whatever
// they do, as Redis does.
func (w *world) pausesWrite(cmd string) bool {
	switch cmd {
	case "EVAL", "EVALSHA", "PUBLISH", "SPUBLISH", "PFCOUNT":
		return true
	case "PING", "HELLO", "AUTH", "SELECT", "CLIENT", "SUBSCRIBE", "SSUBSCRIBE", "PSUBSCRIBE", "UNSUBSCRIBE",
		"SUNSUBSCRIBE", "PUNSUBSCRIBE", "INFO", "SCRIPT", "TIME", "ECHO", "QUIT", "COMMAND", "ROLE", "WAIT",
		"MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH", "READONLY", "DBSIZE", "CONFIG", "CLUSTER":
		return false
	}
	return !w.mini.Server().IsReadOnlyCommand(cmd)
}
