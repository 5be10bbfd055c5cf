package tokenkeeper_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper"
	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
	"github.com/tokenkeeper/tokenkeeper/internal/keepertest"
	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// Three replicas keep a per-device token: 200 devices, each asked for its
// token through random replicas three times, cost 200 liveness calls and
// one sign-on for the whole fleet; every device gets its own token back,
// always the same one, and the shared access token is never served.
func TestPerDeviceTokensShareOneSignOn(t *testing.T) {
	ks, fake := perDeviceFleet(t)

	ctx := context.Background()
	got := map[string]string{}
	for round := range 3 {
		for d := range 200 {
			id := fmt.Sprintf("phone-%03d", d)
			tok, err := ks[rand.IntN(len(ks))].DeviceToken(ctx, "liveness", id)
			if err != nil {
				t.Fatalf("round %d, %s: %v", round, id, err)
			}
			if prev, ok := got[id]; ok && prev != tok.Value {
				t.Fatalf("round %d, %s: a second token", round, id)
			}
			got[id] = tok.Value
		}
	}
	st := fake.Stats()
	if st.LivenessCalls != 200 {
		t.Errorf("liveness calls: %d, want 200 (one per device)", st.LivenessCalls)
	}
	if n := st.AuthCalls.V2; n != 1 {
		t.Errorf("sign-ons: %d, want 1 for the fleet", n)
	}
	accesses := map[string]int{}
	for _, c := range st.Calls {
		if c.Op == "liveness" {
			accesses[c.Access]++
		}
	}
	if len(accesses) != 1 {
		t.Errorf("the liveness calls presented %d access tokens (%v), want the one the fleet shares", len(accesses), accesses)
	}
	seen := map[string]bool{}
	for _, v := range got {
		if seen[v] {
			t.Fatal("two devices share a token")
		}
		seen[v] = true
	}

	st2, err := ks[1].Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tok := st2[0]; !tok.PerDevice || tok.Mints != 200 {
		t.Errorf("status: per-device %v, %d mints in the last minute; want true, 200", tok.PerDevice, tok.Mints)
	}

	// Through the HTTP face: the access token is never served, a bad id
	// is refused.
	hs := httptest.NewServer(ks[0].Handler())
	t.Cleanup(hs.Close)
	for path, want := range map[string]int{
		"/v1/tokens/liveness":                                     http.StatusBadRequest,
		"/v1/tokens/liveness/devices/phone-001":                   http.StatusOK,
		"/v1/tokens/liveness/devices/a/b":                         http.StatusBadRequest,
		"/v1/tokens/liveness/devices/..%2F..%2Fx":                 http.StatusBadRequest,
		"/v1/tokens/liveness/devices/caf%C3%A9":                   http.StatusBadRequest,
		"/v1/tokens/liveness/devices/" + strings.Repeat("a", 129): http.StatusBadRequest,
	} {
		req, _ := http.NewRequest(http.MethodGet, hs.URL+path, nil)
		req.Header.Set("Authorization", "Bearer "+keepertest.ReaderKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s: %d, want %d", path, resp.StatusCode, want)
		}
	}
	if _, err := ks[0].DeviceToken(ctx, "liveness", ""); !errors.Is(err, tokenkeeper.ErrBadDevice) {
		t.Errorf("an empty device id: %v, want ErrBadDevice", err)
	}
}

// perDeviceFleet runs three replicas keeping liveness per device from a
// fake RDP, on a private Redis (real where CI provides one), and waits
// until each holds the access token.
func perDeviceFleet(t *testing.T) ([]*tokenkeeper.Keeper, *fakerdp.Server) {
	t.Helper()
	srv := redistest.NewMini(t)
	if redistest.Real() {
		srv = redistest.StartServer(t)
	}
	fake := fakerdp.New(fakerdp.Config{Knobs: fakerdp.Knobs{TokenLifetime: time.Hour}})
	rdp := httptest.NewServer(fake)
	t.Cleanup(rdp.Close)
	rdpURL := rdp.URL
	var ks []*tokenkeeper.Keeper
	for i := range 3 {
		opt := *srv.Options
		refresher.TuneRedis(&opt, catLockTTL)
		rdb := redis.NewClient(&opt)
		t.Cleanup(func() { rdb.Close() })
		k, err := tokenkeeper.New(tokenkeeper.Config{
			Redis: rdb, Instance: fmt.Sprintf("r%d", i), LockTTL: catLockTTL, PollInterval: 100 * time.Millisecond,
			Tokens: []tokenkeeper.TokenConfig{{Name: "liveness", PerDevice: true, RDP: &upstream.Config{
				BaseURL: rdpURL, ClientID: fakerdp.ClientID, ClientSecret: fakerdp.ClientSecret, Timeout: time.Second,
			}}},
			HTTP: tokenkeeper.HTTPConfig{ReaderKeys: []string{keepertest.ReaderKey}},
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- k.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		ks = append(ks, k)
	}
	testkit.Eventually(t, 5*time.Second, "every replica holds the access token", func() bool {
		for _, k := range ks {
			if _, ok := k.Current("liveness"); !ok {
				return false
			}
		}
		return true
	})

	return ks, fake
}

// The upstream revokes the shared access token: the fleet signs on again
// once and minting resumes. With the sign-on down, devices that hold a
// token keep getting it and new devices get ErrUnavailable, until it
// heals by itself.
func TestPerDeviceAccessRevokedAndAuthDown(t *testing.T) {
	ks, fake := perDeviceFleet(t)
	ctx := context.Background()
	// mint asks for n new devices at once, spread over the replicas.
	mint := func(round string, n int) error {
		errs := make([]error, n)
		var wg sync.WaitGroup
		for d := range n {
			wg.Go(func() {
				_, errs[d] = ks[d%len(ks)].DeviceToken(ctx, "liveness", fmt.Sprintf("%s-%d", round, d))
			})
		}
		wg.Wait()
		return errors.Join(errs...)
	}
	if err := mint("before", 6); err != nil {
		t.Fatal(err)
	}
	signOns := fake.Stats().AuthCalls.V2

	fake.Revoke()
	if err := mint("revoked", 6); err != nil {
		t.Fatalf("after the revocation: %v", err)
	}
	if n := fake.Stats().AuthCalls.V2 - signOns; n != 1 {
		t.Errorf("sign-ons after the revocation: %d, want 1 for the fleet", n)
	}

	known, err := ks[0].DeviceToken(ctx, "liveness", "revoked-0")
	if err != nil {
		t.Fatal(err)
	}
	fake.Update(func(k *fakerdp.Knobs) { k.AuthStatus = 503 })
	fake.Revoke()
	for _, k := range ks {
		if tok, err := k.DeviceToken(ctx, "liveness", "revoked-0"); err != nil || tok.Value != known.Value {
			t.Errorf("%s: a device that holds a token, with the sign-on down: %v", k.Instance(), err)
		}
	}
	if _, err := ks[1].DeviceToken(ctx, "liveness", "new-while-down"); !errors.Is(err, tokenkeeper.ErrUnavailable) {
		t.Errorf("a new device with the sign-on down: %v, want ErrUnavailable", err)
	}
	fake.Update(func(k *fakerdp.Knobs) { k.AuthStatus = 0 })
	testkit.Eventually(t, 10*time.Second, "minting resumes by itself", func() bool {
		_, err := ks[2].DeviceToken(ctx, "liveness", "new-after")
		return err == nil
	})
}
