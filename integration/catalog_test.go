//go:build integration

package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
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
