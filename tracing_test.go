package tokenkeeper_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/tokenkeeper/tokenkeeper"
	"github.com/tokenkeeper/tokenkeeper/internal/fakerdp"
	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
	"github.com/tokenkeeper/tokenkeeper/refresher"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

const (
	traceReaderKey = "trace-reader-key-4f0c9a7e2b8d1c6a5e3f"
	traceAdminKey  = "trace-admin-key-9d2e7b1c4a6f8e0d3b5c"
)

// upstreamTap records what crosses the wire to the fake RDP: every
// request's Authorization header, body and traceparent, and every answer's
// body, so that the test knows every secret of the run.
type upstreamTap struct {
	next http.Handler

	mu           sync.Mutex
	secrets      map[string]bool
	traceparents []string
}

func (u *upstreamTap) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	rec := httptest.NewRecorder()
	u.next.ServeHTTP(rec, r)
	u.mu.Lock()
	if a := r.Header.Get("Authorization"); a != "" {
		u.secrets[a] = true
		if _, cred, ok := strings.Cut(a, " "); ok {
			u.secrets[cred] = true
		}
	}
	if tp := r.Header.Get("Traceparent"); tp != "" {
		u.traceparents = append(u.traceparents, tp)
	}
	for _, kv := range strings.Split(string(body), "&") {
		if k, v, ok := strings.Cut(kv, "="); ok && (strings.Contains(k, "secret") || strings.Contains(k, "password") || strings.Contains(k, "token")) && v != "" {
			u.secrets[v] = true
		}
	}
	var answer map[string]any
	if json.Unmarshal(rec.Body.Bytes(), &answer) == nil {
		for k, v := range answer {
			if s, ok := v.(string); ok && strings.Contains(k, "token") && k != "token_type" && s != "" {
				u.secrets[s] = true
			}
		}
	}
	u.mu.Unlock()
	for k, vs := range rec.Header() {
		w.Header()[k] = vs
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

// traceReplica is one replica of the traced fleet, and the way to stop it.
type traceReplica struct {
	k    *tokenkeeper.Keeper
	url  string
	stop func()
}

// TestTracesCarryNoSecret runs a traced fleet of three replicas through
// refreshes, an admin's refresh request, device mints, refused keys, an
// upstream refusing the credentials (a handover) and the leader's
// shutdown (a failover), recording every span; then checks every span's
// name, attributes, events, links and status against every secret of the
// run, and that the spans tell the story: the attempt with its upstream
// and Redis children, the adoption by the followers in the write's trace,
// the request linked to the attempt that answered it, the lock events.
func TestTracesCarryNoSecret(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp), sdktrace.WithSampler(sdktrace.AlwaysSample()))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	srv := redistest.NewMini(t)
	fake := fakerdp.New(fakerdp.Config{Knobs: fakerdp.Knobs{TokenLifetime: time.Hour}})
	tap := &upstreamTap{next: fake, secrets: map[string]bool{}}
	rdp := httptest.NewServer(tap)
	t.Cleanup(rdp.Close)

	const lockTTL = time.Second
	start := func(name string) *traceReplica {
		opt := *srv.Options
		refresher.TuneRedis(&opt, lockTTL)
		rdb := redis.NewClient(&opt)
		t.Cleanup(func() { rdb.Close() })
		rdpCfg := func() *upstream.Config {
			return &upstream.Config{BaseURL: rdp.URL, ClientID: fakerdp.ClientID, ClientSecret: fakerdp.ClientSecret, Timeout: time.Second}
		}
		k, err := tokenkeeper.New(tokenkeeper.Config{
			Redis: rdb, Instance: name, LockTTL: lockTTL, PollInterval: 5 * time.Second, // no poll to adopt before the events
			RetryMin: 50 * time.Millisecond, RetryMax: 100 * time.Millisecond, HandoverCooldown: 200 * time.Millisecond,
			Tokens: []tokenkeeper.TokenConfig{
				{Name: "liveness", RDP: rdpCfg()},
				{Name: "phones", PerDevice: true, RDP: rdpCfg()},
			},
			HTTP:           tokenkeeper.HTTPConfig{ReaderKeys: []string{traceReaderKey}, AdminKeys: []string{traceAdminKey}},
			TracerProvider: tp,
		})
		if err != nil {
			t.Fatal(err)
		}
		hs := httptest.NewServer(k.Handler())
		t.Cleanup(hs.Close)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- k.Run(ctx) }()
		var once sync.Once
		stop := func() {
			once.Do(func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("%s: Run: %v", name, err)
				}
			})
		}
		t.Cleanup(stop)
		return &traceReplica{k: k, url: hs.URL, stop: stop}
	}
	fleet := []*traceReplica{start("a"), start("b"), start("c")}
	holdAll := func(what string, rs []*traceReplica) {
		t.Helper()
		testkit.Eventually(t, 10*time.Second, what, func() bool {
			for _, r := range rs {
				for _, name := range []string{"liveness", "phones"} {
					if _, ok := r.k.Current(name); !ok {
						return false
					}
				}
			}
			return true
		})
	}
	holdAll("every replica holds both tokens", fleet)

	do := func(method, url, key string, header map[string]string) int {
		t.Helper()
		req, err := http.NewRequest(method, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		if json.NewDecoder(resp.Body).Decode(&body) == nil {
			if s, ok := body["token"].(string); ok {
				tap.mu.Lock()
				tap.secrets[s] = true
				tap.mu.Unlock()
			}
		}
		return resp.StatusCode
	}
	follower := func(rs []*traceReplica) *traceReplica {
		for _, r := range rs {
			if !r.k.Leads("liveness") {
				return r
			}
		}
		t.Fatal("every replica leads")
		return nil
	}
	leaderOf := func(rs []*traceReplica) *traceReplica {
		var l *traceReplica
		testkit.Eventually(t, 10*time.Second, "a replica leads liveness", func() bool {
			for _, r := range rs {
				if r.k.Leads("liveness") {
					l = r
					return true
				}
			}
			return false
		})
		return l
	}
	leaderOf(fleet)

	// An admin asks a follower for a refresh, inside a trace of its own.
	const callerTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	if code := do(http.MethodPost, follower(fleet).url+"/v1/tokens/liveness/refresh", traceAdminKey,
		map[string]string{"Traceparent": "00-" + callerTrace + "-00f067aa0ba902b7-01"}); code != http.StatusOK {
		t.Fatalf("POST refresh: %d", code)
	}
	// Devices get their tokens; keys are refused.
	devices := []string{"device-7f3a9c2e51", "device-0b8d4e6f27", "device-c5a1e9d304"}
	for i, d := range devices {
		if code := do(http.MethodGet, fleet[i%3].url+"/v1/tokens/phones/devices/"+d, traceReaderKey, nil); code != http.StatusOK {
			t.Fatalf("device %d: %d", i, code)
		}
	}
	if code := do(http.MethodGet, fleet[0].url+"/v1/tokens/liveness", "not-a-key-"+traceReaderKey, nil); code != http.StatusUnauthorized {
		t.Fatalf("a wrong key: %d, want 401", code)
	}
	if code := do(http.MethodGet, fleet[1].url+"/v1/tokens/phones/devices/"+devices[0], traceAdminKey+"x", nil); code != http.StatusUnauthorized {
		t.Fatalf("a wrong key on a device route: %d, want 401", code)
	}

	// The upstream refuses the credentials: the attempt fails, the leader
	// hands over.
	first := leaderOf(fleet)
	fake.Update(func(k *fakerdp.Knobs) { k.AuthStatus = http.StatusUnauthorized })
	fake.Revoke()
	if code := do(http.MethodPost, first.url+"/v1/tokens/liveness/refresh", traceAdminKey, nil); code == http.StatusOK {
		t.Fatal("POST refresh with the credentials refused: 200")
	}
	fake.Update(func(k *fakerdp.Knobs) { k.AuthStatus = 0 })

	// The leader stops: another replica leads and refreshes on request.
	l := leaderOf(fleet)
	l.stop()
	var rest []*traceReplica
	for _, r := range fleet {
		if r != l {
			rest = append(rest, r)
		}
	}
	leaderOf(rest)
	testkit.Eventually(t, 10*time.Second, "a refresh after the failover", func() bool {
		return do(http.MethodPost, rest[0].url+"/v1/tokens/liveness/refresh", traceAdminKey, nil) == http.StatusOK
	})
	holdAll("the replicas left hold both tokens", rest)
	for _, r := range fleet {
		r.stop()
	}

	// Every secret of the run.
	secrets := map[string]string{
		traceReaderKey:                "reader key",
		traceAdminKey:                 "admin key",
		"Bearer " + traceAdminKey:     "Authorization header",
		fakerdp.ClientSecret:          "client secret",
		"not-a-key-" + traceReaderKey: "refused key",
		traceAdminKey + "x":           "refused key",
	}
	for _, d := range devices {
		secrets[d] = "device id"
	}
	for _, tok := range fake.Stats().Tokens {
		secrets[tok.Token] = "liveness token"
	}
	tap.mu.Lock()
	for s := range tap.secrets {
		if _, ok := secrets[s]; !ok {
			secrets[s] = "upstream credential or token"
		}
	}
	traceparents := append([]string(nil), tap.traceparents...)
	tap.mu.Unlock()
	for _, r := range fleet {
		for _, name := range []string{"liveness", "phones"} {
			if tok, ok := r.k.Current(name); ok {
				secrets[tok.Value] = name + " token"
			}
		}
	}
	for s := range secrets {
		if len(s) < 8 {
			t.Fatalf("secret %q is too short to scan for", s)
		}
	}

	spans := exp.GetSpans()
	if len(spans) < 20 {
		t.Fatalf("%d spans recorded, want many more", len(spans))
	}
	check := func(span tracetest.SpanStub, where, text string) {
		t.Helper()
		for s, what := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("span %q (%s): %s carries a %s", span.Name, span.SpanContext.SpanID(), where, what)
			}
		}
	}
	attrs := func(span tracetest.SpanStub, where string, kvs []attribute.KeyValue) {
		for _, kv := range kvs {
			check(span, where+" "+string(kv.Key), string(kv.Key)+"="+kv.Value.String())
		}
	}
	for _, span := range spans {
		check(span, "name", span.Name)
		check(span, "status", span.Status.Description)
		attrs(span, "attribute", span.Attributes)
		attrs(span, "resource", span.Resource.Attributes())
		for _, ev := range span.Events {
			check(span, "event", ev.Name)
			attrs(span, "event "+ev.Name, ev.Attributes)
		}
		for _, l := range span.Links {
			attrs(span, "link", l.Attributes)
		}
	}

	// What the spans tell.
	byID := map[trace.SpanID]tracetest.SpanStub{}
	for _, s := range spans {
		byID[s.SpanContext.SpanID()] = s
	}
	children := func(p tracetest.SpanStub) []string {
		var out []string
		for _, s := range spans {
			if s.Parent.SpanID() == p.SpanContext.SpanID() && s.Parent.TraceID() == p.SpanContext.TraceID() {
				out = append(out, s.Name)
			}
		}
		return out
	}
	attr := func(s tracetest.SpanStub, key string) (attribute.Value, bool) {
		for _, kv := range s.Attributes {
			if string(kv.Key) == key {
				return kv.Value, true
			}
		}
		return attribute.Value{}, false
	}
	has := func(names []string, want string) bool {
		for _, n := range names {
			if n == want {
				return true
			}
		}
		return false
	}

	// The admin's request: its server span, in the caller's trace, holds
	// the request's span, and both link to the leader's attempt, which
	// called the upstream and wrote the token.
	var post, ask tracetest.SpanStub
	for _, s := range spans {
		if s.Name == "POST /v1/tokens/{name}/refresh" && s.SpanContext.TraceID().String() == callerTrace {
			post = s
		}
	}
	if !post.SpanContext.IsValid() {
		t.Fatal("no server span of the admin's POST in the caller's trace")
	}
	for _, s := range spans {
		if s.Name == "tokenkeeper.refresh_request" && s.Parent.SpanID() == post.SpanContext.SpanID() {
			ask = s
		}
	}
	if !ask.SpanContext.IsValid() {
		t.Fatalf("the POST's span has no refresh_request child; children: %v", children(post))
	}
	if len(post.Links) == 0 || len(ask.Links) == 0 {
		t.Fatalf("links: POST %d, request %d; want each linked to the attempt", len(post.Links), len(ask.Links))
	}
	// The answer names the attempt, or its write when the token's event
	// came first.
	attempt, ok := byID[ask.Links[0].SpanContext.SpanID()]
	if ok && attempt.Name == "tokenkeeper.store.write" {
		attempt, ok = byID[attempt.Parent.SpanID()]
	}
	if !ok || attempt.Name != "tokenkeeper.refresh" {
		t.Fatalf("the request links to %q, want the leader's tokenkeeper.refresh", attempt.Name)
	}
	if v, _ := attr(attempt, "tokenkeeper.reason"); v.AsString() != "requested" {
		t.Errorf("the attempt's reason: %q, want requested", v.AsString())
	}
	if v, _ := attr(attempt, "tokenkeeper.outcome"); v.AsString() != "success" {
		t.Errorf("the attempt's outcome: %q, want success", v.AsString())
	}
	if v, _ := attr(attempt, "tokenkeeper.generation"); v.AsInt64() < 2 {
		t.Errorf("the attempt's generation: %d, want 2 or more", v.AsInt64())
	}
	kids := children(attempt)
	if !has(kids, "POST liveness") || !has(kids, "tokenkeeper.store.write") {
		t.Errorf("the attempt's children: %v, want POST liveness and tokenkeeper.store.write", kids)
	}
	linkedBack := false
	for _, l := range attempt.Links {
		linkedBack = linkedBack || l.SpanContext.SpanID() == ask.SpanContext.SpanID()
	}
	if !linkedBack {
		t.Error("the attempt does not link back to the request it answered")
	}
	// The upstream got the attempt's trace context.
	sent := false
	for _, tp := range traceparents {
		sent = sent || strings.Contains(tp, attempt.SpanContext.TraceID().String())
	}
	if !sent {
		t.Errorf("no upstream call carried the attempt's trace id; traceparents: %v", traceparents)
	}
	// The followers adopted the token in the write's trace.
	var write tracetest.SpanStub
	for _, s := range spans {
		if s.Name == "tokenkeeper.store.write" && s.Parent.SpanID() == attempt.SpanContext.SpanID() {
			write = s
		}
	}
	adopters := map[string]bool{}
	for _, s := range spans {
		if s.Name == "tokenkeeper.adopt" && s.Parent.SpanID() == write.SpanContext.SpanID() {
			who, _ := attr(s, "tokenkeeper.instance")
			adopters[who.AsString()] = true
			if d, ok := attr(s, "tokenkeeper.propagation_delay_ms"); !ok || d.AsFloat64() < 0 {
				t.Errorf("adoption by %s: propagation delay %v", who.AsString(), d.String())
			}
		}
	}
	if len(adopters) != 2 {
		t.Errorf("adoptions in the write's trace: %v, want the two followers", adopters)
	}

	// Elections, lock events, the handover and the mints.
	count := map[string]int{}
	for _, s := range spans {
		count[s.Name]++
		for _, ev := range s.Events {
			count["event "+ev.Name]++
		}
	}
	for _, want := range []string{"tokenkeeper.election", "event lock won", "tokenkeeper.step_down",
		"event lock handed over", "event lock released", "tokenkeeper.device.mint", "tokenkeeper.device.store",
		"GET /v1/tokens/{name}/devices/{device}", "POST auth_v2"} {
		if count[want] == 0 {
			t.Errorf("no %s among the spans: %v", want, count)
		}
	}
	// A handover: an election links to the step-down whose release it
	// answered.
	handedOver := false
	for _, s := range spans {
		for _, l := range s.Links {
			if sd, ok := byID[l.SpanContext.SpanID()]; ok && s.Name == "tokenkeeper.election" && sd.Name == "tokenkeeper.step_down" {
				handedOver = true
			}
		}
	}
	if !handedOver {
		t.Error("no election links to the step-down of the leader that released the lock")
	}
	failed := false
	for _, s := range spans {
		if s.Name == "tokenkeeper.refresh" && s.Status.Code.String() == "Error" {
			if v, _ := attr(s, "tokenkeeper.outcome"); v.AsString() == "upstream_error" {
				failed = true
			}
		}
	}
	if !failed {
		t.Error("no failed attempt (upstream_error) among the spans")
	}
	if t.Failed() {
		for _, s := range spans {
			t.Logf("%s %s parent %s %v", s.Name, s.SpanContext.SpanID(), s.Parent.SpanID(), s.Attributes)
		}
	}
}
