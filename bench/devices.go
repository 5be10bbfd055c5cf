package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"time"

	"github.com/tokenkeeper/tokenkeeper"
	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// devicesResult is figure 10 for one fleet size: per-device tokens.
type devicesResult struct {
	N, Devices, Asks       int
	Seconds                float64
	AccessLifetime         time.Duration
	LivenessCalls, SignOns int
	FirstP50, FirstP99     time.Duration // a device's first ask: a mint
	RepeatP50, RepeatP99   time.Duration // its later asks: the stored token
}

// measureDevices runs n replicas keeping liveness per device, against a
// fake RDP whose access tokens live accessLifetime, for d: devices new
// devices are asked for, each asks times, through random replicas, spread
// over d. Latencies are of Keeper.DeviceToken (Redis round trips
// included, HTTP not).
func measureDevices(ctx context.Context, work string, n, devices, asks int, accessLifetime, d time.Duration) (*devicesResult, error) {
	rs, err := startRedis(ctx, work, fmt.Sprintf("redis-devices-%d", n))
	if err != nil {
		return nil, err
	}
	defer rs.Stop()
	fake := fakerdp.New(fakerdp.Config{Knobs: fakerdp.Knobs{TokenLifetime: time.Hour, AccessTokenLifetime: accessLifetime}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	fctx, stopFake := context.WithCancel(ctx)
	defer stopFake()
	go func() { _ = serveSame(fctx, ln, fake) }()
	tokens := []tokenkeeper.TokenConfig{{
		Name: "liveness", PerDevice: true, ServeMargin: accessLifetime / 6, RefreshBefore: accessLifetime / 3,
		RDP: &upstream.Config{
			BaseURL: "http://" + ln.Addr().String(), ClientID: fakerdp.ClientID, ClientSecret: fakerdp.ClientSecret,
			DefaultLifetime: accessLifetime, Timeout: accessLifetime / 8,
		},
	}}
	var keepers []*tokenkeeper.Keeper
	var stops []func()
	defer func() {
		for _, stop := range stops {
			stop()
		}
	}()
	for i := range n {
		k, stop, err := catalogKeeperOf(ctx, rs, fmt.Sprintf("replica-%d", i), tokens, 2*time.Second)
		if err != nil {
			return nil, err
		}
		keepers, stops = append(keepers, k), append(stops, stop)
	}
	if err := waitFor(ctx, 10*time.Second, 20*time.Millisecond, "the access token on every replica", func() bool {
		for _, k := range keepers {
			if _, ok := k.Current("liveness"); !ok {
				return false
			}
		}
		return true
	}); err != nil {
		return nil, err
	}
	start := time.Now()
	var first, repeat []time.Duration
	gap := d / time.Duration(devices*asks)
	for a := range asks {
		for dev := range devices {
			k := keepers[rand.IntN(len(keepers))]
			t0 := time.Now()
			if _, err := k.DeviceToken(ctx, "liveness", fmt.Sprintf("device-%d", dev)); err != nil {
				return nil, fmt.Errorf("device %d, ask %d: %w", dev, a+1, err)
			}
			if took := time.Since(t0); a == 0 {
				first = append(first, took)
			} else {
				repeat = append(repeat, took)
			}
			time.Sleep(gap)
		}
	}
	st := fake.Stats()
	slices.Sort(first)
	slices.Sort(repeat)
	return &devicesResult{
		N: n, Devices: devices, Asks: asks, Seconds: time.Since(start).Seconds(), AccessLifetime: accessLifetime,
		LivenessCalls: st.LivenessCalls, SignOns: st.AuthCalls.V2,
		FirstP50: quantile(first, 0.5), FirstP99: quantile(first, 0.99),
		RepeatP50: quantile(repeat, 0.5), RepeatP99: quantile(repeat, 0.99),
	}, nil
}
