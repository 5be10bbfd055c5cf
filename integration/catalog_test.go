//go:build integration

package integration

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"testing"
	"time"
)

// twoTokens is the catalog of TestCatalogOneUpstreamDown: the liveness
// token from the fake RDP, and partner, an optional oauth2 token from a
// second fake upstream (idp), both with the fast timings.
const twoTokens = `tokens:
  - name: liveness
    source: rdp-liveness
    lifetime: 20s
    refresh_before: 8s
    serve_margin: 2s
    timeout: 1s
    rdp:
      base_url: http://rdp:9090
      client_id: ` + rdpClientID + `
      client_secret: ${RDP_CLIENT_SECRET}
  - name: partner
    source: oauth2
    required: false
    lifetime: 20s
    refresh_before: 8s
    serve_margin: 2s
    timeout: 1s
    oauth2:
      token_url: http://idp:9090/oauth2/token
      client_id: ` + rdpClientID + `
      client_secret: ${RDP_CLIENT_SECRET}
      scopes: [partner.read]
`

// Scenario 12. A fleet keeps two tokens from two upstreams; the partner
// upstream fails past its token's expiry. The partner token answers 503
// with Retry-After on every replica and its readiness says so, while the
// liveness token goes on being refreshed on time and served by every
// replica, which stay ready (partner is optional). When the partner
// upstream heals, every replica serves a new partner token.
func TestCatalogOneUpstreamDown(t *testing.T) {
	f := newFleet(t, 3, fast, withCatalog(twoTokens))
	partner := func(r *replica) (int, string, string) {
		code, h, body, err := f.get(r, "/v1/tokens/partner", readerKey)
		if err != nil {
			return 0, "", ""
		}
		var tok struct{ Token string }
		json.Unmarshal(body, &tok)
		return code, h.Get("Retry-After"), tok.Token
	}
	f.waitFor(15*time.Second, "every replica serves partner", func() (bool, string) {
		for _, r := range f.replicas {
			if code, _, _ := partner(r); code != http.StatusOK {
				return false, fmt.Sprintf("%s: %d", r.name, code)
			}
		}
		return true, ""
	})
	_, _, p1 := partner(f.replicas[0])

	t1 := f.token(1)
	f.knobsOf(f.idpBase, map[string]any{"liveness_status": 503, "retry_after": "1s"})
	// Past partner's expiry (it lives as long as the liveness token and
	// was fetched about when it was), through the next liveness refresh.
	f.waitFor(f.tm.Lifetime+5*time.Second, "partner refused on every replica", func() (bool, string) {
		for _, r := range f.replicas {
			code, retry, _ := partner(r)
			if code != http.StatusServiceUnavailable || retry == "" {
				return false, fmt.Sprintf("%s: %d Retry-After %q", r.name, code, retry)
			}
			if st, _, _, _ := f.get(r, "/readyz?token=partner", ""); st != http.StatusServiceUnavailable {
				return false, fmt.Sprintf("%s /readyz?token=partner %d", r.name, st)
			}
		}
		return true, ""
	})
	t2 := f.token(2)
	if deadline := t1.ExpiresAt.Add(-f.tm.ServeMargin); !t2.IssuedAt.Before(deadline) {
		t.Errorf("liveness #2 was issued at %s, not before #1's serve deadline %s", f.tl.rel(t2.IssuedAt), f.tl.rel(deadline))
	}
	f.waitServing(t2.Token, f.replicas, 5*time.Second)
	for _, r := range f.replicas {
		if st := f.readyz(r); st != http.StatusOK {
			t.Errorf("%s /readyz %d with the optional partner token down, want 200", r.name, st)
		}
	}

	f.knobsOf(f.idpBase, map[string]any{"liveness_status": 0, "retry_after": "0s"})
	f.waitFor(f.tm.RetryMax+10*time.Second, "every replica serves a new partner token", func() (bool, string) {
		for _, r := range f.replicas {
			if code, _, tok := partner(r); code != http.StatusOK || tok == p1 {
				return false, fmt.Sprintf("%s: %d", r.name, code)
			}
		}
		return true, ""
	})
	res := f.finish()
	f.check(res, expect{})
}

// perDevice is the catalog of TestPerDeviceLeaderKilled: the liveness
// token shared, as the harness reads it, and devices, minted per device
// from a second fake RDP (idp), so its calls are counted apart.
const perDevice = `tokens:
  - name: liveness
    source: rdp-liveness
    lifetime: 20s
    refresh_before: 8s
    serve_margin: 2s
    timeout: 1s
    rdp:
      base_url: http://rdp:9090
      client_id: ` + rdpClientID + `
      client_secret: ${RDP_CLIENT_SECRET}
  - name: devices
    source: rdp-liveness
    mode: per-device
    required: false
    lifetime: 20s
    refresh_before: 8s
    serve_margin: 2s
    timeout: 1s
    mints_per_minute: 0
    mints_per_device_hour: 0
    rdp:
      base_url: http://idp:9090
      client_id: ` + rdpClientID + `
      client_secret: ${RDP_CLIENT_SECRET}
`

// Scenario 13. Per-device tokens: a burst of new devices asked through
// every replica, with the leader of the shared access token killed in the
// middle. No device gets two tokens, no two devices share one, no answer
// holds an expired token, and the upstream mints once per device.
func TestPerDeviceLeaderKilled(t *testing.T) {
	f := newFleet(t, 3, fast, withCatalog(perDevice))
	type answer struct {
		device, token string
		expiresAt     time.Time
		at            time.Time
	}
	var mu sync.Mutex
	var answers []answer
	ask := func(dev string) bool {
		for _, r := range rand.Perm(len(f.replicas)) {
			code, _, body, err := f.get(f.replicas[r], "/v1/tokens/devices/devices/"+dev, readerKey)
			if err != nil || code != http.StatusOK {
				continue // killed, or not ready: the next replica
			}
			var a struct {
				Device, Token string
				ExpiresAt     time.Time `json:"expires_at"`
			}
			if json.Unmarshal(body, &a) != nil || a.Device != dev {
				t.Errorf("%s: answer %s", dev, body)
				return false
			}
			mu.Lock()
			answers = append(answers, answer{dev, a.Token, a.ExpiresAt, time.Now()})
			mu.Unlock()
			return true
		}
		return false
	}
	var leader *replica
	f.waitFor(10*time.Second, "a leader of the devices' access token", func() (bool, string) {
		s, err := f.status(f.replicas[0])
		if err != nil {
			return false, err.Error()
		}
		var st struct {
			Tokens []struct{ Name, Leader string }
		}
		json.Unmarshal([]byte(s.raw), &st)
		for _, tk := range st.Tokens {
			if tk.Name == "devices" && tk.Leader != "" {
				leader = f.byName(tk.Leader)
				return leader != nil, tk.Leader
			}
		}
		return false, "no leader yet"
	})

	const devices = 60
	var killAt time.Time
	var wg sync.WaitGroup
	for d := range devices {
		wg.Go(func() {
			dev := fmt.Sprintf("phone-%02d", d)
			for range 3 {
				if !ask(dev) {
					t.Errorf("%s: no replica answered", dev)
				}
				time.Sleep(50 * time.Millisecond) // the device's pace between asks
			}
		})
		if d == devices/3 {
			killAt = time.Now()
			f.kill(leader)
			f.note("killed %s, the devices' leader, at %v", leader.name, killAt)
		}
		time.Sleep(20 * time.Millisecond) // new devices arrive over the burst
	}
	wg.Wait()

	byDevice := map[string]string{}
	owner := map[string]string{}
	for _, a := range answers {
		if prev, ok := byDevice[a.device]; ok && prev != a.token {
			t.Errorf("%s got two tokens", a.device)
		}
		byDevice[a.device] = a.token
		if o, ok := owner[a.token]; ok && o != a.device {
			t.Errorf("%s and %s share a token", a.device, o)
		}
		owner[a.token] = a.device
		if !a.at.Before(a.expiresAt) {
			t.Errorf("%s was served an expired token", a.device)
		}
	}
	var idp fakeStats
	resp, err := controlHTTP.Get(f.idpBase + "/fake/v1/stats")
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&idp)
	resp.Body.Close()
	f.figure("devices", len(byDevice))
	f.figure("device_answers", len(answers))
	f.figure("idp_liveness_calls", idp.LivenessCalls)
	f.figure("idp_sign_ons", idp.authCalls())
	if len(byDevice) != devices {
		t.Errorf("%d devices got a token, want %d", len(byDevice), devices)
	}
	if idp.LivenessCalls != devices {
		t.Errorf("the upstream minted %d times for %d devices, want once per device", idp.LivenessCalls, devices)
	}
	res := f.finish()
	f.check(res, expect{down: []window{{replica: leader.name, from: killAt, why: "killed"}}})
}
