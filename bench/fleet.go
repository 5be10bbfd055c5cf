package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// upstreamResult is figure 5 for one fleet size.
type upstreamResult struct {
	N             int
	Lifetime      time.Duration
	Seconds       float64
	Calls, Tokens int // liveness calls the fake saw; tokens stored in Redis
	PerToken      float64
	AuthCalls     int
}

// measureUpstream runs figure 5: n replicas in this process, each with its
// own Redis client, store, refresher and RDP client, against one fake RDP
// issuing tokens of the given (compressed) lifetime, for d. Every token
// stored is counted from the events channel.
func measureUpstream(ctx context.Context, work string, n int, lifetime, d time.Duration) (*upstreamResult, error) {
	rs, err := startRedis(ctx, work, fmt.Sprintf("redis-upstream-%d", n))
	if err != nil {
		return nil, err
	}
	defer rs.Stop()

	fake := fakerdp.New(fakerdp.Config{Knobs: fakerdp.Knobs{TokenLifetime: lifetime}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	fctx, stopFake := context.WithCancel(ctx)
	defer stopFake()
	go func() { _ = serveSame(fctx, ln, fake) }()

	keys := cache.KeysFor("liveness")
	ps := rs.Client.Subscribe(ctx, keys.Events)
	defer ps.Close()
	if _, err := ps.Receive(ctx); err != nil {
		return nil, err
	}
	stored := make(chan string, 1024)
	go func() {
		for m := range ps.Channel() {
			var msg cache.Message
			if json.Unmarshal([]byte(m.Payload), &msg) == nil && msg.Type == cache.MsgToken {
				stored <- msg.Fingerprint
			}
		}
		close(stored)
	}()

	log := slog.New(slog.DiscardHandler)
	var fleet []*replica
	defer func() { stopReplicas(fleet) }()
	start := time.Now()
	for i := range n {
		rdp := &upstream.Config{
			BaseURL: "http://" + ln.Addr().String(), Auth: "v2",
			ClientID: fakerdp.ClientID, ClientSecret: fakerdp.ClientSecret,
			DefaultLifetime: lifetime, Timeout: lifetime / 8, // under the serve margin
		}
		r, err := startReplica(replicaConfig{
			Redis: rs.Options(), Instance: fmt.Sprintf("replica-%d", i), RDP: rdp,
			LockTTL: 2 * time.Second, RefreshBefore: lifetime / 3, ServeMargin: lifetime / 6,
			PollInterval: time.Second, RetryMin: 200 * time.Millisecond, RetryMax: 2 * time.Second, Log: log,
		})
		if err != nil {
			return nil, err
		}
		fleet = append(fleet, r)
	}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(d - time.Since(start)):
	}
	stopReplicas(fleet)
	fleet = nil
	secs := time.Since(start).Seconds()
	ps.Close()
	seen := map[string]bool{}
	for fp := range stored {
		seen[fp] = true
	}
	st := fake.Stats()
	res := &upstreamResult{
		N: n, Lifetime: lifetime, Seconds: secs, Calls: st.LivenessCalls, Tokens: len(seen),
		AuthCalls: st.AuthCalls.V2 + st.AuthCalls.V1Password + st.AuthCalls.V1Refresh,
	}
	if res.Tokens == 0 {
		return nil, fmt.Errorf("%d replicas: no token was stored in %.0fs", n, secs)
	}
	res.PerToken = float64(res.Calls) / float64(res.Tokens)
	return res, nil
}

// restResult is figure 6 for one fleet size.
type restResult struct {
	N          int
	Seconds    float64
	Total      int64
	PerReplica float64 // commands per second per replica
	Mix        string
}

// measureRest runs figure 6: n `tokenkeeper serve` processes with the
// default timings (lock TTL 10s, poll 2s) and a token fresh for an hour,
// counted over d once they are all ready and settle has passed.
func measureRest(ctx context.Context, work, bin string, n int, settle, d time.Duration) (*restResult, error) {
	f, err := startBinFleet(ctx, work, bin, fmt.Sprintf("rest-%d", n), 10*time.Second)
	if err != nil {
		return nil, err
	}
	defer f.Stop()
	if _, err := f.AddMany(ctx, fmt.Sprintf("rest%d", n), n); err != nil {
		return nil, err
	}
	rs := f.rs
	time.Sleep(settle)
	before, err := rs.Commands(ctx)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	time.Sleep(d)
	after, err := rs.Commands(ctx)
	if err != nil {
		return nil, err
	}
	secs := time.Since(t0).Seconds()
	for _, r := range f.replicas {
		if r.proc.Exited() {
			return nil, fmt.Errorf("%s exited:\n%s", r.id, r.proc.Tail())
		}
	}
	delta := after.Sub(before)
	total := delta.Total()
	return &restResult{
		N: n, Seconds: secs, Total: total,
		PerReplica: float64(total) / float64(n) / secs,
		Mix:        delta.String(),
	}, nil
}
