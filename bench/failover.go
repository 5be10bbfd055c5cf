package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
)

// binFleet runs tokenkeeper as real processes of the built binary: a
// redis-server, a `tokenkeeper fake-rdp` and `tokenkeeper serve` replicas.
type binFleet struct {
	work, bin string
	lockTTL   time.Duration
	rs        *redisServer
	fake      *proc
	fakeURL   string
	replicas  map[string]*binReplica // by instance id
	seq       int
}

type binReplica struct {
	id   string
	proc *proc
	base string // http://127.0.0.1:port
}

func startBinFleet(ctx context.Context, work, bin, label string, lockTTL time.Duration) (*binFleet, error) {
	rs, err := startRedis(ctx, work, "redis-"+label)
	if err != nil {
		return nil, err
	}
	f := &binFleet{work: work, bin: bin, lockTTL: lockTTL, rs: rs, replicas: map[string]*binReplica{}}
	port, err := freePort()
	if err != nil {
		f.Stop()
		return nil, err
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	f.fake, err = startProc(work, label+"-fake-rdp", []string{"FAKE_RDP_LISTEN=" + addr, "FAKE_RDP_TOKEN_LIFETIME=60m"}, bin, "fake-rdp")
	if err != nil {
		f.Stop()
		return nil, err
	}
	f.fakeURL = "http://" + addr
	return f, nil
}

// Add starts one more `tokenkeeper serve` replica and waits until it is
// ready.
func (f *binFleet) Add(ctx context.Context, label string) (*binReplica, error) {
	rs, err := f.AddMany(ctx, label, 1)
	if err != nil {
		return nil, err
	}
	return rs[0], nil
}

// AddMany starts n `tokenkeeper serve` replicas at once and waits until
// each is ready.
func (f *binFleet) AddMany(ctx context.Context, label string, n int) ([]*binReplica, error) {
	var out []*binReplica
	for range n {
		f.seq++
		id := fmt.Sprintf("%s-replica-%d", label, f.seq)
		// Port 0, read back from the log: ports picked ahead of time can be
		// taken meanwhile by the ephemeral port of another replica's connection.
		env := []string{
			"TOKENKEEPER_LISTEN=127.0.0.1:0",
			"TOKENKEEPER_REDIS_URL=" + f.rs.URL(),
			"TOKENKEEPER_API_KEYS=" + benchKey,
			"TOKENKEEPER_INSTANCE_ID=" + id,
			"TOKENKEEPER_LOCK_TTL=" + f.lockTTL.String(),
			"TOKENKEEPER_LOG_FORMAT=text",
			"TOKENKEEPER_RATE_LIMIT=" + benchRateLimit, // the limiter runs on every read, and never refuses one
			"RDP_BASE_URL=" + f.fakeURL,
			"RDP_CLIENT_ID=" + fakerdp.ClientID,
			"RDP_CLIENT_SECRET=" + fakerdp.ClientSecret,
		}
		p, err := startProc(f.work, id, env, f.bin, "serve")
		if err != nil {
			return nil, err
		}
		r := &binReplica{id: id, proc: p}
		f.replicas[id] = r
		out = append(out, r)
	}
	client := &http.Client{Timeout: time.Second}
	for _, r := range out {
		addr, err := r.proc.listenAddr(ctx, 60*time.Second)
		if err != nil {
			return nil, fmt.Errorf("%s: %w:\n%s", r.id, err, r.proc.Tail())
		}
		r.base = "http://" + addr
		if err := waitFor(ctx, 60*time.Second, 50*time.Millisecond, r.id+" ready", func() bool {
			return r.proc.Exited() || httpReady(client, r.base+"/readyz")
		}); err != nil || r.proc.Exited() {
			return nil, fmt.Errorf("%s did not become ready (%v):\n%s", r.id, err, r.proc.Tail())
		}
	}
	return out, nil
}

// Leader returns the instance id holding the lock, or "".
func (f *binFleet) Leader(ctx context.Context) (string, error) {
	v, err := f.rs.Client.Get(ctx, cache.KeysFor("liveness").Lock).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return holderOf(v), nil
}

// holderOf returns the instance in a lock value, tk:<16 hex>:<instance>
// (docs/architecture.md, "Redis keys"), or "" when it names none.
func holderOf(v string) string {
	if rest, ok := strings.CutPrefix(v, "tk:"); ok && len(rest) > 17 && rest[16] == ':' {
		return rest[17:]
	}
	return ""
}

func (f *binFleet) Stop() {
	for _, r := range f.replicas {
		r.proc.Stop(5 * time.Second)
	}
	if f.fake != nil {
		f.fake.Stop(2 * time.Second)
	}
	f.rs.Stop()
}

// failoverTrial is one leader stopped by a signal.
type failoverTrial struct {
	Signal     string
	OldLeader  string
	NewLeader  string
	Takeover   time.Duration // signal -> the new leader's SET of the lock key
	FirstWrite time.Duration // signal -> the new leader's first token write
}

// failoverResult is figure 4.
type failoverResult struct {
	LockTTL    time.Duration
	Replicas   int
	Kill, Term []failoverTrial
}

// makeDue moves the stored token into the refresh window (ten minutes
// left, fetched fifty minutes ago), as it is when a refresh is due: the
// next leader's first act is then a token write, whose time is what
// figure 4 measures. The token stays servable.
var makeDue = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local exp = now + 600000
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'exp', exp, 'at', now - 3000000)
redis.call('PEXPIREAT', KEYS[1], exp)
return 1
`)

// measureFailover runs figure 4: replicas processes of the binary; the
// leader is stopped by SIGKILL kills times and by SIGTERM terms times,
// restarted after each trial.
func measureFailover(ctx context.Context, work, bin string, lockTTL time.Duration, replicas, kills, terms int, say func(string, ...any)) (*failoverResult, error) {
	f, err := startBinFleet(ctx, work, bin, "failover", lockTTL)
	if err != nil {
		return nil, err
	}
	defer f.Stop()
	keys := cache.KeysFor("liveness")
	if err := f.rs.Client.ConfigSet(ctx, "notify-keyspace-events", "K$").Err(); err != nil {
		return nil, err
	}
	for range replicas {
		if _, err := f.Add(ctx, "failover"); err != nil {
			return nil, err
		}
	}

	type event struct {
		at      time.Time
		channel string
		payload string
	}
	lockChannel := "__keyspace@0__:" + keys.Lock
	ps := f.rs.Client.Subscribe(ctx, keys.Events, lockChannel)
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		return nil, err
	}
	if _, err := ps.Receive(ctx); err != nil {
		return nil, err
	}
	events := make(chan event, 1024)
	go func() {
		for m := range ps.Channel() {
			events <- event{time.Now(), m.Channel, m.Payload}
		}
	}()

	res := &failoverResult{LockTTL: lockTTL, Replicas: replicas}
	trial := func(sig syscall.Signal) (failoverTrial, error) {
		tr := failoverTrial{Signal: map[syscall.Signal]string{syscall.SIGKILL: "SIGKILL", syscall.SIGTERM: "SIGTERM"}[sig]}
		var old string
		if err := waitFor(ctx, 3*lockTTL+10*time.Second, 20*time.Millisecond, "a leader", func() bool {
			old, _ = f.Leader(ctx)
			return old != "" && f.replicas[old] != nil
		}); err != nil {
			return tr, err
		}
		if ok, err := f.rs.Client.Exists(ctx, keys.Token).Result(); err != nil || ok == 0 {
			return tr, fmt.Errorf("no token stored before the trial (%v)", err)
		}
		tr.OldLeader = old
		victim := f.replicas[old]
		for len(events) > 0 {
			<-events
		}
		t0 := time.Now()
		if err := victim.proc.Signal(sig); err != nil {
			return tr, err
		}
		if err := makeDue.Run(ctx, f.rs.Client, []string{keys.Token}).Err(); err != nil {
			return tr, fmt.Errorf("making the token due: %w", err)
		}
		timeout := time.After(3*lockTTL + 10*time.Second)
		for tr.FirstWrite == 0 {
			select {
			case <-ctx.Done():
				return tr, ctx.Err()
			case <-timeout:
				return tr, fmt.Errorf("%s of %s: no token write by a new leader", tr.Signal, old)
			case e := <-events:
				switch e.channel {
				case lockChannel:
					if tr.Takeover == 0 && e.payload == "set" {
						if l, _ := f.Leader(ctx); l != "" && l != old {
							tr.Takeover, tr.NewLeader = e.at.Sub(t0), l
						}
					}
				case keys.Events:
					var m cache.Message
					if json.Unmarshal([]byte(e.payload), &m) != nil || m.Type != cache.MsgToken {
						continue
					}
					if m.From == old {
						return tr, fmt.Errorf("%s: the old leader %s wrote after the signal", tr.Signal, old)
					}
					tr.FirstWrite = e.at.Sub(t0)
					if tr.NewLeader == "" {
						tr.NewLeader = m.From
					}
				}
			}
		}
		if tr.Takeover == 0 {
			tr.Takeover = tr.FirstWrite
		}
		select {
		case <-victim.proc.done:
		case <-time.After(15 * time.Second):
			return tr, fmt.Errorf("%s did not exit after %s", old, tr.Signal)
		}
		delete(f.replicas, old)
		if _, err := f.Add(ctx, "failover"); err != nil {
			return tr, err
		}
		return tr, nil
	}
	for i := range kills + terms {
		sig := syscall.SIGKILL
		if i >= kills {
			sig = syscall.SIGTERM
		}
		tr, err := trial(sig)
		if err != nil {
			return nil, err
		}
		say("  %s of leader %s: new leader %s took the lock after %v, first token write after %v",
			tr.Signal, tr.OldLeader, tr.NewLeader, tr.Takeover.Round(time.Millisecond), tr.FirstWrite.Round(time.Millisecond))
		if sig == syscall.SIGKILL {
			res.Kill = append(res.Kill, tr)
		} else {
			res.Term = append(res.Term, tr)
		}
	}
	return res, nil
}

// worst returns the longest first write of trials, and the median.
func worst(trials []failoverTrial) (maxW, med time.Duration) {
	var ws []float64
	for _, t := range trials {
		ws = append(ws, float64(t.FirstWrite))
		maxW = max(maxW, t.FirstWrite)
	}
	return maxW, time.Duration(median(ws))
}

// memoryResult is figure 7.
type memoryResult struct {
	RestKiB, LoadKiB, HWMKiB int64
	Load                     wrkResult
	Conc                     int
}

// measureMemory runs figure 7: one `tokenkeeper serve` process, its
// resident set at rest, then its largest under wrk load.
func measureMemory(ctx context.Context, work, bin string, rest, load time.Duration, conc int) (*memoryResult, error) {
	f, err := startBinFleet(ctx, work, bin, "memory", 10*time.Second)
	if err != nil {
		return nil, err
	}
	defer f.Stop()
	r, err := f.Add(ctx, "memory")
	if err != nil {
		return nil, err
	}
	time.Sleep(rest)
	res := &memoryResult{Conc: conc}
	if res.RestKiB, err = rssKiB(r.proc.Pid()); err != nil {
		return nil, err
	}
	type out struct {
		w   wrkResult
		err error
	}
	done := make(chan out, 1)
	go func() {
		w, err := runWrk(ctx, r.base+"/v1/tokens/liveness", conc, load, "Authorization: Bearer "+benchKey)
		done <- out{w, err}
	}()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case o := <-done:
			if o.err != nil {
				return nil, o.err
			}
			res.Load = o.w
			if res.HWMKiB, err = procStatus(r.proc.Pid(), "VmHWM:"); err != nil {
				return nil, err
			}
			return res, nil
		case <-tick.C:
			if kib, err := rssKiB(r.proc.Pid()); err == nil {
				res.LoadKiB = max(res.LoadKiB, kib)
			}
		}
	}
}
