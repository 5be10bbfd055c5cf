package tokenkeeper_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
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

// The catalog's compressed timings.
const (
	catMargin  = 300 * time.Millisecond
	catBefore  = time.Second
	catLockTTL = 500 * time.Millisecond
)

// countingSource issues numbered tokens of one name, fails while told
// to, and checks on every call that the fleet's token was due: a fetch
// while every replica still holds a token with more than the refresh
// window (and its jitter) left is one fetch too many.
type countingSource struct {
	name     string
	lifetime time.Duration

	inner interface { // when set, the tokens come from it (a real upstream client)
		Token(context.Context) (upstream.Token, error)
	}

	mu      sync.Mutex
	calls   int
	last    string // the last value issued
	failing bool
	early   []string                   // calls made while the token was not due
	fleet   func() []tokenkeeper.Token // what the replicas hold, set once they run
}

func (s *countingSource) Token(context.Context) (tokenkeeper.UpstreamToken, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.fleet != nil && s.calls > 1 {
		for _, held := range s.fleet() {
			// The refresh falls due RefreshBefore before the leader's
			// deadline, up to a tenth of it earlier (jitter). Another
			// replica may date the same token up to 250 ms later than
			// the leader did: a follower dates an event by its last
			// reading of Redis's clock and reads Redis instead only when
			// that and the event's arrival disagree by more (README,
			// Propagation). Time spent between the leader's decision and
			// this call only shortens what is left: no slack is due to
			// scheduling.
			if left := time.Until(held.Deadline); left > catBefore+catBefore/10+250*time.Millisecond {
				s.early = append(s.early, fmt.Sprintf("call %d with %v left", s.calls, left.Round(time.Millisecond)))
			}
		}
	}
	if s.failing {
		return tokenkeeper.UpstreamToken{}, &upstream.Error{Op: upstream.OpToken, Status: 503, Retryable: true}
	}
	if s.inner != nil {
		tok, err := s.inner.Token(context.Background())
		if err == nil {
			s.last = tok.Value
		}
		return tokenkeeper.UpstreamToken{Value: tok.Value, Lifetime: tok.Lifetime, Sent: tok.Sent}, err
	}
	s.last = fmt.Sprintf("%s-%d", s.name, s.calls)
	return tokenkeeper.UpstreamToken{Value: s.last, Lifetime: s.lifetime, Sent: time.Now()}, nil
}

func (s *countingSource) Last() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

func (s *countingSource) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

func (s *countingSource) set(f func(*countingSource)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

// catalogFleet runs replicas keeping the tokens of srcs on one Redis.
type catalogFleet struct {
	t    *testing.T
	srv  *redistest.Server
	srcs []*countingSource
}

func (f *catalogFleet) start(name string) (*tokenkeeper.Keeper, context.CancelFunc) {
	f.t.Helper()
	return f.startWith(name, f.srcs)
}

// startWith runs a replica keeping the tokens of srcs only.
func (f *catalogFleet) startWith(name string, srcs []*countingSource) (*tokenkeeper.Keeper, context.CancelFunc) {
	t := f.t
	t.Helper()
	opt := *f.srv.Options
	refresher.TuneRedis(&opt, catLockTTL)
	rdb := redis.NewClient(&opt)
	t.Cleanup(func() { rdb.Close() })
	var tokens []tokenkeeper.TokenConfig
	for _, s := range srcs {
		tokens = append(tokens, tokenkeeper.TokenConfig{Name: s.name, Source: s})
	}
	k, err := tokenkeeper.New(tokenkeeper.Config{
		Redis: rdb, Instance: name, Tokens: tokens,
		ServeMargin: catMargin, RefreshBefore: catBefore, LockTTL: catLockTTL, PollInterval: 100 * time.Millisecond,
		RetryMin: 100 * time.Millisecond, RetryMax: 400 * time.Millisecond,
		HTTP: tokenkeeper.HTTPConfig{ReaderKeys: []string{keepertest.ReaderKey}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return k, keepertest.Run(t, name, k)
}

func newCatalogFleet(t *testing.T, lifetimes ...time.Duration) *catalogFleet {
	// The tokens' keys are fixed by their names: a private server.
	srv := redistest.NewMini(t)
	if redistest.Real() {
		srv = redistest.StartServer(t)
	}
	f := &catalogFleet{t: t, srv: srv}
	for i, l := range lifetimes {
		f.srcs = append(f.srcs, &countingSource{name: fmt.Sprintf("token-%c", 'a'+i), lifetime: l})
	}
	return f
}

// watch lets each source see what the keepers hold of its token.
func (f *catalogFleet) watch(ks []*tokenkeeper.Keeper) {
	for _, s := range f.srcs {
		s.set(func(s *countingSource) {
			s.fleet = func() []tokenkeeper.Token {
				var out []tokenkeeper.Token
				for _, k := range ks {
					if tok, ok := k.Current(s.name); ok {
						out = append(out, tok)
					}
				}
				return out
			}
		})
	}
}

// Three replicas keep three tokens of different lifetimes over several
// cycles: each token is fetched only when due, every replica serves the
// newest of each, and leadership of the three is spread over more than
// one replica once the first leader leaves.
func TestCatalogFleetKeepsEveryToken(t *testing.T) {
	f := newCatalogFleet(t, 3*time.Second, 4*time.Second, 5*time.Second)
	// token-a is an RDP liveness token, token-b and token-c OAuth2 tokens,
	// each from its own fake upstream issuing tokens of its lifetime.
	for i, s := range f.srcs {
		fake := fakerdp.New(fakerdp.Config{Knobs: fakerdp.Knobs{TokenLifetime: s.lifetime}})
		hs := httptest.NewServer(fake)
		t.Cleanup(hs.Close)
		var err error
		if i == 0 {
			s.inner, err = upstream.New(upstream.Config{BaseURL: hs.URL, ClientID: fakerdp.ClientID,
				ClientSecret: fakerdp.ClientSecret, DefaultLifetime: s.lifetime, Timeout: catMargin / 2})
		} else {
			s.inner, err = upstream.NewOAuth2(upstream.OAuth2Config{TokenURL: hs.URL + fakerdp.OAuth2TokenPath,
				ClientID: fakerdp.ClientID, ClientSecret: fakerdp.ClientSecret, Scopes: []string{s.name},
				DefaultLifetime: s.lifetime, Timeout: catMargin / 2})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	var ks []*tokenkeeper.Keeper
	var stops []context.CancelFunc
	for i := range 3 {
		k, stop := f.start(fmt.Sprintf("r%d", i))
		ks, stops = append(ks, k), append(stops, stop)
	}
	f.watch(ks)
	servesNewest := func(ks []*tokenkeeper.Keeper) {
		t.Helper()
		for _, s := range f.srcs {
			testkit.Eventually(t, 5*time.Second, "every replica serves the newest "+s.name, func() bool {
				want := s.Last()
				for _, k := range ks {
					if tok, ok := k.Current(s.name); !ok || tok.Value != want {
						return false
					}
				}
				return true
			})
		}
	}
	servesNewest(ks)

	// The first leader leaves; the others share its tokens out.
	var first int
	for i, k := range ks {
		if k.IsLeader() {
			first = i
			break
		}
	}
	stops[first]()
	rest := append(append([]*tokenkeeper.Keeper(nil), ks[:first]...), ks[first+1:]...)
	f.watch(rest)
	var calls []int
	for _, s := range f.srcs {
		calls = append(calls, s.Calls())
	}
	spread := false
	testkit.Eventually(t, 15*time.Second, "every token refreshed twice by the others", func() bool {
		leaders := map[int]bool{}
		for i, k := range rest {
			for _, s := range f.srcs {
				if k.Leads(s.name) {
					leaders[i] = true
				}
			}
		}
		spread = spread || len(leaders) > 1
		for i, s := range f.srcs {
			if s.Calls() < calls[i]+2 {
				return false
			}
		}
		return true
	})
	servesNewest(rest)
	if !spread {
		t.Errorf("one replica led all three tokens throughout")
	}
	for _, s := range f.srcs {
		if len(s.early) > 0 {
			t.Errorf("%s was fetched before it was due: %v", s.name, s.early)
		}
	}
}

// One token's upstream is down past that token's expiry: that token
// answers 503 with Retry-After and its readiness says so; the other
// tokens are served and refreshed on time, and the replica stays ready
// when the failing token is optional.
func TestOneUpstreamDownLeavesTheOthersServed(t *testing.T) {
	f := newCatalogFleet(t, 2*time.Second, 2*time.Second)
	ka, _ := f.start("r0")
	kb, _ := f.start("r1")
	ks := []*tokenkeeper.Keeper{ka, kb}
	f.watch(ks)
	down, up := f.srcs[0], f.srcs[1]
	testkit.Eventually(t, 5*time.Second, "both tokens served", func() bool {
		_, a := ka.Current(down.name)
		_, b := ka.Current(up.name)
		return a && b
	})
	down.set(func(s *countingSource) { s.failing = true })
	callsBefore := up.Calls()

	hs := httptest.NewServer(ka.Handler())
	t.Cleanup(hs.Close)
	get := func(path string) *http.Response {
		req, _ := http.NewRequest(http.MethodGet, hs.URL+path, nil)
		req.Header.Set("Authorization", "Bearer "+keepertest.ReaderKey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	testkit.Eventually(t, 5*time.Second, down.name+" runs out", func() bool {
		return get("/v1/tokens/"+down.name).StatusCode == http.StatusServiceUnavailable
	})
	if resp := get("/v1/tokens/" + down.name); resp.Header.Get("Retry-After") == "" {
		t.Errorf("503 without Retry-After")
	}
	if code := get("/readyz?token=" + down.name).StatusCode; code != http.StatusServiceUnavailable {
		t.Errorf("/readyz?token=%s: %d, want 503", down.name, code)
	}
	if code := get("/readyz").StatusCode; code != http.StatusServiceUnavailable {
		t.Errorf("/readyz with a required token down: %d, want 503", code)
	}
	if code := get("/readyz?token=" + up.name).StatusCode; code != http.StatusOK {
		t.Errorf("/readyz?token=%s: %d, want 200", up.name, code)
	}
	testkit.Eventually(t, 5*time.Second, up.name+" refreshed meanwhile", func() bool { return up.Calls() >= callsBefore+2 })
	for _, k := range ks {
		if _, ok := k.Current(up.name); !ok {
			t.Errorf("%s stopped serving %s", k.Instance(), up.name)
		}
	}
	if len(up.early) > 0 {
		t.Errorf("%s was fetched before it was due: %v", up.name, up.early)
	}
	if _, err := ka.Token(context.Background(), "no-such-token"); !errors.Is(err, tokenkeeper.ErrUnknownToken) {
		t.Errorf("Token of an unknown name: %v, want ErrUnknownToken", err)
	}
}
