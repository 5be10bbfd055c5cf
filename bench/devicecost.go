package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenkeeper/tokenkeeper"
	"github.com/tokenkeeper/tokenkeeper/internal/device"
	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// deviceCostConfig sizes figure 12.
type deviceCostConfig struct {
	Replicas        int
	UpstreamLatency time.Duration // the fake RDP's delay on every answer
	Mints           int           // new devices asked one after the other
	Readers         int           // goroutines asking for stored tokens
	ReadD           time.Duration
	Hammers         int // goroutines per replica asking for new devices past the budget
	MintsPerMinute  int // the metered token's fleet-wide budget
	HammerD         time.Duration
}

// deviceCostResult is figure 12: per-device tokens' costs.
type deviceCostResult struct {
	Cfg deviceCostConfig

	MintP50, MintP99         time.Duration // a new device's ask, upstream latency included
	OverheadP50, OverheadP99 time.Duration // the same less the upstream's latency

	Reads                 int64
	ReadRPS               float64
	ReadP50, ReadP99      time.Duration
	ReadSeconds           float64
	Minted, Refused       int64   // on the metered token while hammered
	HammerSeconds         float64 // from the first ask to the last
	Allowed               float64 // what the budget allows in that time: burst + rate × seconds
	Accuracy              float64 // Minted / Allowed
	FakeCalls, FakeCalls0 int     // the fake's liveness calls after and before the hammering
}

// measureDeviceCosts runs figure 12: replicas in this process keep two
// per-device tokens from one fake RDP answering after UpstreamLatency:
// liveness, without a budget, and metered, with a fleet-wide budget of
// MintsPerMinute. It times new devices' asks one after the other (a mint
// each), then stored tokens read by Readers goroutines at once, then
// hammers metered with new devices from every replica and compares the
// mints that went through with what the budget allows.
func measureDeviceCosts(ctx context.Context, work string, cfg deviceCostConfig) (*deviceCostResult, error) {
	rs, err := startRedis(ctx, work, "redis-device-costs")
	if err != nil {
		return nil, err
	}
	defer rs.Stop()
	fake := fakerdp.New(fakerdp.Config{Knobs: fakerdp.Knobs{TokenLifetime: time.Hour, AccessTokenLifetime: time.Hour, Latency: cfg.UpstreamLatency}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	fctx, stopFake := context.WithCancel(ctx)
	defer stopFake()
	go func() { _ = serveSame(fctx, ln, fake) }()
	rdp := func() *upstream.Config {
		return &upstream.Config{
			BaseURL: "http://" + ln.Addr().String(), ClientID: fakerdp.ClientID, ClientSecret: fakerdp.ClientSecret,
			DefaultLifetime: time.Hour, Timeout: 5 * time.Second,
		}
	}
	tokens := []tokenkeeper.TokenConfig{
		{Name: "liveness", PerDevice: true, RDP: rdp()},
		{Name: "metered", PerDevice: true, RDP: rdp(), MintsPerMinute: cfg.MintsPerMinute},
	}
	var keepers []*tokenkeeper.Keeper
	var stops []func()
	defer func() {
		for _, stop := range stops {
			stop()
		}
	}()
	for i := range cfg.Replicas {
		k, stop, err := catalogKeeperOf(ctx, rs, fmt.Sprintf("replica-%d", i), tokens, 10*time.Second)
		if err != nil {
			return nil, err
		}
		keepers, stops = append(keepers, k), append(stops, stop)
	}
	if err := waitFor(ctx, 20*time.Second, 20*time.Millisecond, "the access tokens on every replica", func() bool {
		for _, k := range keepers {
			for _, name := range []string{"liveness", "metered"} {
				if _, ok := k.Current(name); !ok {
					return false
				}
			}
		}
		return true
	}); err != nil {
		return nil, err
	}
	res := &deviceCostResult{Cfg: cfg}

	// Mints, one after the other.
	var mints []time.Duration
	for dev := range cfg.Mints {
		k := keepers[dev%len(keepers)]
		t0 := time.Now()
		if _, err := k.DeviceToken(ctx, "liveness", fmt.Sprintf("device-%d", dev)); err != nil {
			return nil, fmt.Errorf("mint for device %d: %w", dev, err)
		}
		mints = append(mints, time.Since(t0))
	}
	slices.Sort(mints)
	res.MintP50, res.MintP99 = quantile(mints, 0.5), quantile(mints, 0.99)
	res.OverheadP50, res.OverheadP99 = res.MintP50-cfg.UpstreamLatency, res.MintP99-cfg.UpstreamLatency

	// Stored tokens, read at once by Readers goroutines.
	rctx, stopReads := context.WithTimeout(ctx, cfg.ReadD)
	defer stopReads()
	lats := make([][]time.Duration, cfg.Readers)
	var wg sync.WaitGroup
	var readErr atomic.Pointer[error]
	r0 := time.Now()
	for g := range cfg.Readers {
		wg.Go(func() {
			for rctx.Err() == nil {
				k := keepers[rand.IntN(len(keepers))]
				t0 := time.Now()
				_, err := k.DeviceToken(ctx, "liveness", fmt.Sprintf("device-%d", rand.IntN(cfg.Mints)))
				if err != nil {
					readErr.CompareAndSwap(nil, &err)
					return
				}
				lats[g] = append(lats[g], time.Since(t0))
			}
		})
	}
	wg.Wait()
	res.ReadSeconds = time.Since(r0).Seconds()
	if p := readErr.Load(); p != nil {
		return nil, fmt.Errorf("repeat read: %w", *p)
	}
	all := slices.Concat(lats...)
	slices.Sort(all)
	res.Reads = int64(len(all))
	res.ReadRPS = float64(len(all)) / res.ReadSeconds
	res.ReadP50, res.ReadP99 = quantile(all, 0.5), quantile(all, 0.99)

	// The budget, hammered from every replica with new devices.
	res.FakeCalls0 = fake.Stats().LivenessCalls
	hctx, stopHammer := context.WithTimeout(ctx, cfg.HammerD)
	defer stopHammer()
	var minted, refused atomic.Int64
	var seq atomic.Int64
	var first, last atomic.Int64 // unix ns of the first ask and the last mint
	var hammerErr atomic.Pointer[error]
	first.Store(time.Now().UnixNano())
	for _, k := range keepers {
		for range cfg.Hammers {
			wg.Go(func() {
				for hctx.Err() == nil {
					_, err := k.DeviceToken(hctx, "metered", fmt.Sprintf("hammer-%d", seq.Add(1)))
					var be *device.BudgetError
					switch {
					case err == nil:
						minted.Add(1)
						last.Store(time.Now().UnixNano())
					case errors.As(err, &be):
						refused.Add(1)
						time.Sleep(2 * time.Millisecond)
					case hctx.Err() != nil:
						return
					default:
						hammerErr.CompareAndSwap(nil, &err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	if p := hammerErr.Load(); p != nil {
		return nil, fmt.Errorf("hammering the budget: %w", *p)
	}
	res.Minted, res.Refused = minted.Load(), refused.Load()
	res.HammerSeconds = float64(last.Load()-first.Load()) / 1e9
	rate := float64(cfg.MintsPerMinute) / 60
	burst := max(1, int(2*rate)) // device.Config's default
	res.Allowed = float64(burst) + rate*res.HammerSeconds
	res.Accuracy = float64(res.Minted) / res.Allowed
	res.FakeCalls = fake.Stats().LivenessCalls
	return res, nil
}
