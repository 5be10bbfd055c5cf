package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tokenkeeper/tokenkeeper/clock"
)

// maxBody caps how much of an answer is read.
const maxBody = 64 << 10

// Client gets tokens from the service and keeps them until their margin.
// Create it with New. Its methods are safe for concurrent use.
type Client struct {
	endpoints []string // base URLs, without a trailing slash
	key       string
	hc        *http.Client
	margin    time.Duration
	maxWait   time.Duration
	// clock is the time expiries are counted on and Retry-After is
	// waited on: clock.Real(), which a test replaces (as x/oauth2's own
	// tests replace its timeNow; its users set no clock, nor do ours).
	clock clock.Clock
	// sleep waits d on clock or until ctx ends; tests replace it.
	sleep func(ctx context.Context, d time.Duration) error

	mu     sync.Mutex        // guards good, cache, flight and each call.waiters
	good   int               // guarded by mu: the index of the endpoint that last answered well
	cache  map[string]*entry // guarded by mu: the last token got, by name
	flight map[string]*call  // guarded by mu: the request in flight, by name
}

// entry is a token kept for reuse.
type entry struct {
	tok Token
	// holdUntil: the service asked not to be asked again before it (a
	// Retry-After seen while this token was served past its margin).
	holdUntil time.Time
}

// call is a fetch that callers of one name wait for.
type call struct {
	done    chan struct{} // closed when tok and err are set
	tok     Token
	err     error
	waiters int                // guarded by Client.mu
	cancel  context.CancelFunc // ends the fetch once no one waits
}

// New validates cfg, reporting every problem at once, each naming its
// field, and returns a Client. It sends no request.
func New(cfg Config) (*Client, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	eps := make([]string, len(cfg.Endpoints))
	for i, e := range cfg.Endpoints {
		eps[i] = strings.TrimRight(e, "/")
	}
	return &Client{
		endpoints: eps, key: cfg.Key, hc: cfg.HTTPClient,
		margin: cfg.Margin, maxWait: cfg.MaxWait, clock: clock.Real(),
		cache: make(map[string]*entry), flight: make(map[string]*call),
	}, nil
}

// Token returns the named token: the one it holds while it is more than
// Config.Margin from its expiry, else a new one from the service. Calls
// for the same name share one request; Token blocks until that request
// ends (retries and Retry-After waits included) or ctx ends, whichever is
// first, and then returns ctx's error. It never returns an expired token;
// see the package documentation for when it returns one past its margin.
// Errors wrap ErrUnauthorized, ErrUnknownToken, ErrUnavailable or
// ErrMalformed, or are ctx's.
func (c *Client) Token(ctx context.Context, name string) (Token, error) {
	if name == "" {
		return Token{}, errors.New("client: token name is empty")
	}
	c.mu.Lock()
	now := c.clock.Now()
	if e := c.cache[name]; e != nil && e.tok.Valid(now) {
		if now.Before(e.tok.ExpiresAt.Add(-c.margin)) || now.Before(e.holdUntil) {
			c.mu.Unlock()
			return e.tok, nil
		}
	}
	cl := c.flight[name]
	if cl == nil {
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		cl = &call{done: make(chan struct{}), cancel: cancel}
		c.flight[name] = cl
		go c.run(fctx, name, cl)
	}
	cl.waiters++
	c.mu.Unlock()

	select {
	case <-cl.done:
		return cl.tok, cl.err
	case <-ctx.Done():
		c.mu.Lock()
		cl.waiters--
		if cl.waiters == 0 {
			// No one waits: end the request, and let the next caller
			// start a new one.
			cl.cancel()
			if c.flight[name] == cl {
				delete(c.flight, name)
			}
		}
		c.mu.Unlock()
		return Token{}, ctx.Err()
	}
}

// run fetches the named token for the callers of cl and keeps it.
func (c *Client) run(ctx context.Context, name string, cl *call) {
	defer cl.cancel()
	c.mu.Lock()
	var stale Token // a token past its margin, not yet expired
	if e := c.cache[name]; e != nil {
		stale = e.tok
	}
	c.mu.Unlock()
	// With a valid token to fall back on, do not wait for Retry-After.
	patient := !stale.Valid(c.clock.Now())
	tok, hint, err := c.fetch(ctx, name, patient)

	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.clock.Now()
	switch {
	case err == nil:
		c.cache[name] = &entry{tok: tok}
	case ctx.Err() != nil:
		// Every caller has gone: nothing to keep.
	case errors.Is(err, ErrUnavailable) && stale.Valid(now):
		tok, err = stale, nil
		if e := c.cache[name]; e != nil && e.tok == stale && hint > 0 {
			e.holdUntil = now.Add(hint)
		}
	}
	cl.tok, cl.err = tok, err
	if c.flight[name] == cl {
		delete(c.flight, name)
	}
	close(cl.done)
}

// fetch asks the endpoints in turn, from the last good one, for the named
// token. While patient, when a whole round fails and some endpoint gave a
// Retry-After, it waits the shortest one and goes round again, within
// MaxWait. It returns the shortest Retry-After of the last round.
func (c *Client) fetch(ctx context.Context, name string, patient bool) (Token, time.Duration, error) {
	var waited time.Duration
	for {
		c.mu.Lock()
		start := c.good
		c.mu.Unlock()
		var errs []error
		var hint time.Duration
		for k := range c.endpoints {
			i := (start + k) % len(c.endpoints)
			tok, err := c.get(ctx, c.endpoints[i], name)
			if err == nil {
				c.mu.Lock()
				c.good = i
				c.mu.Unlock()
				return tok, 0, nil
			}
			if ctx.Err() != nil {
				return Token{}, 0, ctx.Err()
			}
			var ae *Error
			if errors.As(err, &ae) {
				if ae.Status < 500 && ae.Status != http.StatusTooManyRequests {
					return Token{}, 0, err // the same at every replica
				}
				if r := ae.RetryAfter; r > 0 && (hint == 0 || r < hint) {
					hint = r
				}
			}
			errs = append(errs, err)
		}
		all := fmt.Errorf("%w: %w", ErrUnavailable, errors.Join(errs...))
		if !patient || hint == 0 || waited+hint > c.maxWait {
			return Token{}, hint, all
		}
		if err := c.wait(ctx, hint); err != nil {
			return Token{}, 0, err
		}
		waited += hint
	}
}

// answer is the service's 200 body.
type answer struct {
	Name      *string `json:"name"`
	Token     *string `json:"token"`
	ExpiresIn *int64  `json:"expires_in"`
}

// errorBody is the service's error body.
type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// get asks one endpoint for the named token.
func (c *Client) get(ctx context.Context, base, name string) (Token, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/tokens/"+url.PathEscape(name), nil)
	if err != nil {
		return Token{}, fmt.Errorf("client: %s: %w", base, err)
	}
	if c.key != "" {
		req.Header.Set("Authorization", "Bearer "+c.key)
	}
	req.Header.Set("Accept", "application/json")
	sent := c.clock.Now()
	resp, err := c.hc.Do(req)
	if err != nil {
		// A *url.Error names the URL, which holds no secret.
		return Token{}, fmt.Errorf("client: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return Token{}, fmt.Errorf("client: %s: reading the answer: %w", base, err)
	}
	if resp.StatusCode != http.StatusOK {
		ae := &Error{Endpoint: base, Status: resp.StatusCode, RetryAfter: retryAfter(resp.Header)}
		var eb errorBody
		if json.Unmarshal(body, &eb) == nil {
			ae.Code, ae.Message = clip(eb.Error.Code), clip(eb.Error.Message)
		}
		return Token{}, ae
	}
	malformed := func(format string, args ...any) error {
		return fmt.Errorf("%w from %s: %s", ErrMalformed, base, fmt.Sprintf(format, args...))
	}
	var a answer
	if err := json.Unmarshal(body, &a); err != nil {
		// Unmarshal's errors name types and offsets, never values.
		return Token{}, malformed("not a token: %v", err)
	}
	switch {
	case a.Token == nil:
		return Token{}, malformed("token is missing")
	case *a.Token == "":
		return Token{}, malformed("token is empty")
	case a.ExpiresIn == nil:
		return Token{}, malformed("expires_in is missing")
	case *a.ExpiresIn <= 0:
		return Token{}, malformed("expires_in %d is not positive", *a.ExpiresIn)
	case *a.ExpiresIn > int64(100*365*24*time.Hour/time.Second):
		return Token{}, malformed("expires_in %d is out of range", *a.ExpiresIn)
	case a.Name == nil:
		return Token{}, malformed("name is missing")
	case *a.Name != name:
		return Token{}, malformed("name %q, want %q", clip(*a.Name), name)
	}
	tok := Token{Name: name, Value: *a.Token, ExpiresAt: sent.Add(time.Duration(*a.ExpiresIn) * time.Second)}
	if !tok.Valid(c.clock.Now()) {
		return Token{}, malformed("token expired before its answer arrived")
	}
	return tok, nil
}

// retryAfter reads a Retry-After header: delay-seconds, or an HTTP date
// measured against the answer's own Date. 0 when absent or unusable.
func retryAfter(h http.Header) time.Duration {
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 || n > int64(24*time.Hour/time.Second) {
			return 0
		}
		return time.Duration(n) * time.Second
	}
	at, err1 := http.ParseTime(v)
	date, err2 := http.ParseTime(h.Get("Date"))
	if err1 != nil || err2 != nil || !at.After(date) {
		return 0
	}
	return min(at.Sub(date), 24*time.Hour)
}

// clip shortens text from the service to what an error message needs.
func clip(s string) string {
	const max = 200
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}

// wait waits d on c's clock or until ctx ends.
func (c *Client) wait(ctx context.Context, d time.Duration) error {
	if c.sleep != nil {
		return c.sleep(ctx, d)
	}
	t := c.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
