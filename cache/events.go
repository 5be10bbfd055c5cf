package cache

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper/clock"
)

// EventsConfig tunes an Events. The zero value works.
type EventsConfig struct {
	// Sharded carries the events over sharded pub/sub (SSUBSCRIBE and
	// SPUBLISH, Redis 7), which keeps each channel on its slot's shard in
	// Redis Cluster instead of broadcasting it to every node. A server
	// without it is noticed at the first subscription and plain pub/sub is
	// used from then on. Default: false.
	Sharded bool
	// Logger receives the logs. Default: slog.Default().
	Logger *slog.Logger
	// Clock paces the retries and the shard watch. Default: clock.Real().
	Clock clock.Clock
}

// Events carries the change and control messages of a replica's stores
// over as few Redis connections as the topology allows: one subscription
// to every store's channel, or, sharded, one per channel (a sharded
// subscription lives on the shard of its channel's slot). Create it with
// NewEvents, give it to each Store (Config.Events) before the stores run,
// and keep it running with Run. A Store without one runs its own.
//
// No message is dropped between Redis and a store: each channel's
// messages queue, without bound, until its store takes them.
type Events struct {
	rdb     redisClient
	log     *slog.Logger
	clock   clock.Clock
	sharded atomic.Bool // false once the server is found to lack SSUBSCRIBE

	mu      sync.Mutex
	routes  map[string]*route // by channel; guarded by mu
	running bool              // guarded by mu
	// again ends the subscriptions in use (Resubscribe) so that Run makes
	// new ones; replaced each time. Guarded by mu.
	again chan struct{}
	// kick wakes the poll loop at once: a subscription is in doubt.
	kick chan struct{}

	// leaseMu guards the routes' leaseUntil. beating holds a token while
	// a beat is made and published (beat.go): a channel, not a mutex, so
	// that waiting for it is a durable block in a synctest bubble.
	leaseMu sync.Mutex
	beating chan struct{}
	// heard is when the last beat of another replica arrived over plain
	// pub/sub, in Unix nanoseconds (beatLoop).
	heard atomic.Int64
}

// Resubscribe ends the subscriptions in use; Run subscribes again at once,
// and every store reads Redis once subscribed. For a topology that moved
// under a subscription that does not know it: after a Sentinel failover
// the subscription stays on the old master's connection until its health
// check gives up. It does not block.
func (e *Events) Resubscribe() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.again != nil {
		close(e.again)
	}
	e.again = make(chan struct{})
}

// resubscribed returns a context that ends with ctx or at the next
// Resubscribe.
func (e *Events) resubscribed(ctx context.Context) (context.Context, context.CancelFunc) {
	e.mu.Lock()
	if e.again == nil {
		e.again = make(chan struct{})
	}
	again := e.again
	e.mu.Unlock()
	sctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-again:
			cancel()
		case <-sctx.Done():
		}
	}()
	return sctx, cancel
}

// NewEvents returns an Events over rdb. It does not contact Redis.
func NewEvents(rdb redisClient, cfg EventsConfig) *Events {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real()
	}
	e := &Events{rdb: rdb, log: cfg.Logger, clock: cfg.Clock, routes: make(map[string]*route), kick: make(chan struct{}, 1),
		beating: make(chan struct{}, 1)}
	e.sharded.Store(cfg.Sharded)
	return e
}

// Sharded reports whether the events travel over sharded pub/sub.
func (e *Events) Sharded() bool { return e.sharded.Load() }

// delivery is what a route queues: a message's payload, or the news that
// the channel was (re)subscribed, after which messages may have been
// missed.
type delivery struct {
	payload    string
	subscribed bool
}

// route queues one channel's deliveries for its store, and keeps what the
// poll needs to know of its subscription (poll.go).
type route struct {
	store *Store
	ready chan struct{} // holds one token while the queue may be non-empty
	// failed tells the poll that a read the store made for an event
	// failed, so that it reads again soon.
	failed atomic.Bool

	mu    sync.Mutex
	queue []delivery // guarded by mu
	// proof is when the last PING answered through the route's
	// subscription was sent: every message published before then has
	// been delivered. Zero when none since the subscription was
	// (re)made. lost is when the proof was last withdrawn (a broken
	// connection). Both guarded by mu.
	proof, lost time.Time

	// Owned by the poll loop: the last poll, and the last that succeeded
	// (when it was sent); when the route was last seen in doubt.
	lastPoll, retryAt, goodPoll, doubted time.Time
	backoff                              time.Duration

	// leaseUntil is when this replica's lease of the token's lock ends,
	// as Store.Lead last announced it; zero when it does not lead.
	// Guarded by the Events' leaseMu.
	leaseUntil time.Time
	// announcedAt and announcedUntil are when this replica last beat
	// naming the route's lease, and the lease's end it named. Guarded by
	// the Events' leaseMu.
	announcedAt, announcedUntil time.Time
	// hintFrom and hintUntil are the last lease a leader's beat
	// announced (LockHint). Guarded by mu.
	hintFrom  string
	hintUntil time.Time
}

func (r *route) put(d delivery) {
	r.mu.Lock()
	r.queue = append(r.queue, d)
	r.mu.Unlock()
	select {
	case r.ready <- struct{}{}:
	default: // a token is already waiting
	}
}

func (r *route) take() (delivery, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.queue) == 0 {
		return delivery{}, false
	}
	d := r.queue[0]
	r.queue[0] = delivery{}
	r.queue = r.queue[1:]
	return d, true
}

// join registers channel, whose messages go to s. It must come before
// Run.
func (e *Events) join(channel string, s *Store) (*route, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.running {
		return nil, errors.New("cache: events already running: give them to every store before Run")
	}
	if _, dup := e.routes[channel]; dup {
		return nil, errors.New("cache: two stores share the events channel " + channel)
	}
	r := &route{store: s, ready: make(chan struct{}, 1)}
	e.routes[channel] = r
	return r, nil
}

// publish sends payload on channel, sharded or not as the subscriptions.
func (e *Events) publish(ctx context.Context, channel string, payload []byte) error {
	if e.sharded.Load() {
		return e.rdb.SPublish(ctx, channel, payload).Err()
	}
	return e.rdb.Publish(ctx, channel, payload).Err()
}

// publishCommand is the command the write script publishes with.
func (e *Events) publishCommand() string {
	if e.sharded.Load() {
		return "SPUBLISH"
	}
	return "PUBLISH"
}

// Run subscribes to every registered channel and hands their messages to
// the stores until ctx ends; it returns ctx's error. Redis being
// unreachable is retried (go-redis resubscribes), and every
// resubscription is handed on, so the stores read Redis again.
func (e *Events) Run(ctx context.Context) error {
	e.mu.Lock()
	e.running = true
	channels := make([]string, 0, len(e.routes))
	for ch := range e.routes {
		channels = append(channels, ch)
	}
	e.mu.Unlock()
	if len(channels) == 0 {
		<-ctx.Done()
		return ctx.Err()
	}
	var polls sync.WaitGroup
	defer polls.Wait()
	polls.Go(func() { e.pollLoop(ctx) })
	polls.Go(func() { e.beatLoop(ctx) })
	if e.sharded.Load() && !e.shardedWorks(ctx, channels[0]) {
		e.sharded.Store(false)
	}
	if !e.sharded.Load() {
		for ctx.Err() == nil {
			sctx, cancel := e.resubscribed(ctx)
			e.follow(sctx, e.rdb.Subscribe(sctx, channels...), channels...)
			cancel()
		}
		return ctx.Err()
	}
	var wg sync.WaitGroup
	for _, ch := range channels {
		wg.Go(func() {
			// A slot that moves to another shard ends its subscription
			// (the server unsubscribes it): subscribe again, on the new
			// owner.
			for ctx.Err() == nil {
				e.followShard(ctx, ch)
			}
		})
	}
	wg.Wait()
	return ctx.Err()
}

// followShard follows channel's sharded subscription until ctx ends, the
// server ends it, or, in Redis Cluster, the channel's slot gets another
// master: a master that died ends nothing (no answer comes from it), so
// the slot map, which the client reloads, is looked at every second.
func (e *Events) followShard(ctx context.Context, channel string) {
	fctx, cancel := e.resubscribed(ctx)
	defer cancel()
	if cc, ok := e.rdb.(*redis.ClusterClient); ok {
		if owner := shardOf(fctx, cc, channel); owner != "" {
			go func() {
				tick := e.clock.NewTicker(time.Second)
				defer tick.Stop()
				for {
					select {
					case <-fctx.Done():
						return
					case <-tick.C():
						if now := shardOf(fctx, cc, channel); now != "" && now != owner {
							e.log.Info("the events' shard has a new master; subscribing there", "channel", channel, "was", owner, "now", now)
							cancel()
							return
						}
					}
				}
			}()
		}
	}
	e.follow(fctx, e.rdb.SSubscribe(fctx, channel), channel)
}

// shardOf returns the address of the master of channel's slot, as the
// cluster client last loaded it; "" when unknown.
func shardOf(ctx context.Context, cc *redis.ClusterClient, channel string) string {
	node, err := cc.MasterForKey(ctx, channel)
	if err != nil {
		return ""
	}
	return node.Options().Addr
}

// shardedWorks reports whether the server takes SSUBSCRIBE; it retries
// while Redis cannot be reached, and logs a fallback once.
func (e *Events) shardedWorks(ctx context.Context, channel string) bool {
	for ctx.Err() == nil {
		ps := e.rdb.SSubscribe(ctx, channel)
		_, err := ps.Receive(ctx)
		ps.Close()
		switch {
		case err == nil:
			return true
		case strings.Contains(strings.ToLower(err.Error()), "unknown command"):
			e.log.Warn("Redis lacks sharded pub/sub (SSUBSCRIBE, Redis 7): the events go over plain pub/sub, which Redis Cluster broadcasts to every node", "error", err)
			return false
		}
		t := e.clock.NewTimer(time.Second)
		select {
		case <-ctx.Done():
		case <-t.C():
		}
		t.Stop()
	}
	return true
}

// follow hands ps's messages to their routes until ctx ends, the server
// ends a sharded subscription, or the connection stops answering; it
// closes ps.
//
// It also proves the connection alive. A leader's beat that arrives
// through it shows that every message published before the beat has been
// handed on (Redis delivers a connection's messages in the order it ran
// their PUBLISH; beat.go); so does a PONG, for the messages published
// before Redis ran its PING (Redis answers a connection in order). When
// pingEvery has passed since the last proof and the last PING without a
// beat, follow sends a PING through it: a fleet with leaders PINGs
// nothing. The routes' polls go slow while the proof is fresh (poll.go).
// A connection that leaves its PINGs unanswered for deadPings intervals
// is closed and subscribed again: on a network that drops packets
// silently, a connection can otherwise look open for many minutes.
func (e *Events) follow(ctx context.Context, ps *redis.PubSub, channels ...string) {
	routes := e.routesOf(channels)
	byName := make(map[string]*route, len(routes))
	byChannel := make(map[string]*route, len(routes))
	for _, r := range routes {
		byName[r.store.name] = r
		byChannel[r.store.cfg.Keys.Events] = r
	}
	every := pingEvery(routes)
	// proved is the proof the last beat gave every route, zero after a
	// doubt; a beat proves them again once its own is proofStep later
	// (takeBeat). A tenth of pingEvery: the proofs lag the beats by less
	// than the time a PING waits for one.
	var proved time.Time
	proofStep := every / 10
	fctx, cancel := context.WithCancel(ctx)
	receiving := make(chan struct{}) // closed when the receiving goroutine returns
	defer func() {
		cancel()
		ps.Close()
		<-receiving // no beat proves a route after the doubt below
		for _, r := range routes {
			r.doubt(e.clock.Now())
		}
		e.kickPoll()
	}()
	// The goroutine that receives takes the messages (the beats, the
	// events) itself: at rest a beat reaches every replica several times a
	// second, and a hand-over to this loop for each would wake two
	// goroutines instead of one. Anything else (a PONG, a subscription, an
	// error) it hands over and waits until the loop has handled it, so
	// the routes see proofs and doubts in the order they came.
	type received struct {
		msg any
		err error
	}
	in := make(chan received)
	handled := make(chan struct{})
	go func() {
		defer close(receiving)
		for {
			m, err := ps.Receive(fctx)
			if fctx.Err() != nil {
				return
			}
			if m, ok := m.(*redis.Message); ok && err == nil {
				if !e.takeBeat(m.Payload, byChannel[m.Channel], routes, byName, e.clock.Now(), &proved, proofStep) {
					e.deliver(m.Channel, delivery{payload: m.Payload})
				}
				continue
			}
			select {
			case in <- received{m, err}:
			case <-fctx.Done():
				return
			}
			select {
			case <-handled:
			case <-fctx.Done():
				return
			}
			if err != nil {
				// Redis unreachable: go-redis dials again at the next
				// Receive; not in a tight loop.
				t := e.clock.NewTimer(100 * time.Millisecond)
				select {
				case <-t.C():
				case <-fctx.Done():
				}
				t.Stop()
			}
		}
	}()
	ping := e.clock.NewTimer(every)
	defer ping.Stop()
	var seq uint64
	sent := map[uint64]time.Time{} // PINGs awaiting their PONG, by payload
	lastPing := e.clock.Now()      // when the last PING was sent, or the subscription made
	for {
		select {
		case <-ctx.Done():
			return
		case <-ping.C():
			now := e.clock.Now()
			if oldest, ok := oldestPing(sent); ok && now.Sub(oldest) >= deadPings*every {
				e.log.Warn("the events connection answers no PING; subscribing again", "unanswered_for", now.Sub(oldest).Round(time.Millisecond))
				return
			}
			// A beat since proves the connection: PING only when none came
			// within pingEvery of the last proof.
			if due := later(lastProof(routes), lastPing).Add(every); now.Before(due) {
				ping.Reset(due.Sub(now))
				continue
			}
			seq++
			pctx, pcancel := context.WithTimeout(fctx, every)
			if err := ps.Ping(pctx, strconv.FormatUint(seq, 10)); err == nil {
				sent[seq] = now
			}
			pcancel()
			lastPing = now
			ping.Reset(every)
		case r := <-in:
			if !e.handOver(r.msg, r.err, routes, sent, &proved) {
				return
			}
			select {
			case handled <- struct{}{}:
			case <-ctx.Done():
				return
			}
		}
	}
}

// handOver handles for follow what its receiving goroutine hands over:
// an error (the connection broke), a PONG or a subscription. It reports
// false when follow is to subscribe again.
func (e *Events) handOver(msg any, err error, routes []*route, sent map[uint64]time.Time, proved *time.Time) bool {
	if err != nil {
		// The connection broke: events may be lost until go-redis has
		// subscribed again, which the stores then catch up on.
		for _, rt := range routes {
			rt.doubt(e.clock.Now())
		}
		*proved = time.Time{}
		clear(sent)
		e.kickPoll()
		return true
	}
	switch m := msg.(type) {
	case *redis.Pong:
		n, err := strconv.ParseUint(m.Payload, 10, 64)
		at, ok := sent[n]
		if err != nil || !ok {
			return true
		}
		for k := range sent {
			if k <= n {
				delete(sent, k)
			}
		}
		// A PONG is a round trip through this connection, behind the
		// messages Redis queued on it: the delay a beat's proof is dated
		// back by (rttCut). Without it a round trip measured in a busy
		// moment (a fleet starting) stayed the cut for as long as the
		// store read nothing, every beat's proof came too old, and the
		// follower PINGed at rest.
		for _, rt := range routes {
			rt.store.noteRTT(at)
			rt.prove(at)
		}
	case *redis.Subscription:
		switch m.Kind {
		case "subscribe", "ssubscribe":
			e.deliver(m.Channel, delivery{subscribed: true})
		case "sunsubscribe":
			e.log.Info("the events' shard changed; subscribing again", "channel", m.Channel)
			return false
		}
	}
	return true
}

// deadPings is how many PING intervals a connection may leave a PING
// unanswered before follow closes it and subscribes again (30 s at the
// default poll interval). It is long on purpose: the polls keep the
// staleness bound meanwhile, and a replica too busy to read its PONGs in
// time would only add a resubscription, and a read of every token, to
// its load.
const deadPings = 24

// oldestPing returns the send time of the oldest PING awaiting its PONG.
func oldestPing(sent map[uint64]time.Time) (time.Time, bool) {
	var oldest time.Time
	for _, at := range sent {
		if oldest.IsZero() || at.Before(oldest) {
			oldest = at
		}
	}
	return oldest, !oldest.IsZero()
}

// routesOf returns the routes of channels.
func (e *Events) routesOf(channels []string) []*route {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]*route, 0, len(channels))
	for _, ch := range channels {
		if r := e.routes[ch]; r != nil {
			out = append(out, r)
		}
	}
	return out
}

// lastProof returns the latest proof of routes; zero when none holds one.
func lastProof(routes []*route) time.Time {
	var last time.Time
	for _, r := range routes {
		r.mu.Lock()
		last = later(last, r.proof)
		r.mu.Unlock()
	}
	return last
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// routeOf returns the route of channel, or nil.
func (e *Events) routeOf(channel string) *route {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.routes[channel]
}

func (e *Events) deliver(channel string, d delivery) {
	if r := e.routeOf(channel); r != nil {
		r.put(d)
	}
}
