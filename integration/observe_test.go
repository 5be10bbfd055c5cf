//go:build integration

package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// sample is one read of the token from one replica, as the client saw it.
type sample struct {
	replica    string
	sent, recv time.Time
	status     int    // 0 when no answer came
	err        string // why no usable answer came
	token      string
	expiresAt  time.Time
	expiresIn  int
	retryAfter string
	instance   string // X-Tokenkeeper-Instance
	generation string // X-Tokenkeeper-Generation, "" when absent
}

func (s sample) ok() bool { return s.status == http.StatusOK && s.err == "" }

// outcome names the answer for the timeline: "200 tok#3", "503", "refused".
func (s sample) outcome(names map[string]string) string {
	switch {
	case s.err != "" && s.status == 0:
		return s.err
	case s.err != "":
		return fmt.Sprintf("%d %s", s.status, s.err)
	case s.status == http.StatusOK:
		return "200 " + names[s.token]
	default:
		return fmt.Sprint(s.status)
	}
}

// readInterval is how often each client reads the token from its replica.
const readInterval = 50 * time.Millisecond

// recorder reads the token from every replica continuously, one client per
// replica, and keeps every answer.
type recorder struct {
	mu      sync.Mutex
	samples []sample
	last    map[string]sample

	done chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

func startRecorder(f *fleet) *recorder {
	rec := &recorder{last: map[string]sample{}, done: make(chan struct{})}
	for _, r := range f.replicas {
		rec.watch(r)
	}
	return rec
}

// watch starts a client reading from r until stop. Call it from the test's
// goroutine, before stop.
func (rec *recorder) watch(r *replica) {
	rec.wg.Go(func() {
		tick := time.NewTicker(readInterval)
		defer tick.Stop()
		for {
			select {
			case <-rec.done:
				return
			case <-tick.C:
			}
			s, sent := readToken(r)
			if !sent {
				continue // stopped on purpose: no request to count
			}
			rec.mu.Lock()
			rec.samples = append(rec.samples, s)
			rec.last[r.name] = s
			rec.mu.Unlock()
		}
	})
}

func (rec *recorder) stop() {
	rec.once.Do(func() {
		close(rec.done)
		rec.wg.Wait()
	})
}

func (rec *recorder) all() []sample {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	out := slices.Clone(rec.samples)
	slices.SortFunc(out, func(a, b sample) int { return a.sent.Compare(b.sent) })
	return out
}

func (rec *recorder) latest(name string) (sample, bool) {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	s, ok := rec.last[name]
	return s, ok
}

// readToken is the client: GET /v1/tokens/liveness with a reader key. It
// sends nothing while the harness has r stopped.
func readToken(r *replica) (sample, bool) {
	u := r.url("/v1/tokens/liveness")
	if u == "" {
		return sample{}, false
	}
	s := sample{replica: r.name, sent: time.Now()}
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	req.Header.Set("Authorization", "Bearer "+readerKey)
	resp, err := r.http.Do(req)
	if err != nil {
		s.recv, s.err = time.Now(), errKind(err)
		return s, true
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	s.recv = time.Now()
	s.status = resp.StatusCode
	s.instance = resp.Header.Get("X-Tokenkeeper-Instance")
	s.retryAfter = resp.Header.Get("Retry-After")
	s.generation = resp.Header.Get("X-Tokenkeeper-Generation")
	if err != nil {
		s.err = errKind(err)
		return s, true
	}
	if s.status == http.StatusOK {
		var tok struct {
			Token     string    `json:"token"`
			ExpiresAt time.Time `json:"expires_at"`
			ExpiresIn int       `json:"expires_in"`
		}
		if err := json.Unmarshal(body, &tok); err != nil || tok.Token == "" {
			s.err = fmt.Sprintf("bad body %.60q", body)
			return s, true
		}
		s.token, s.expiresAt, s.expiresIn = tok.Token, tok.ExpiresAt, tok.ExpiresIn
	}
	return s, true
}

// errKind shortens a transport error to what the timeline needs.
func errKind(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case strings.Contains(err.Error(), "server closed idle connection"):
		return "idle-closed"
	}
	msg := err.Error()
	if len(msg) > 80 {
		msg = msg[:80]
	}
	return msg
}

// waitServing waits until every replica in rs answered token in a read sent
// after this call.
func (f *fleet) waitServing(token string, rs []*replica, timeout time.Duration) time.Time {
	f.t.Helper()
	since := time.Now()
	return f.waitFor(timeout, fmt.Sprintf("%s served by %s", f.tl.tokenName(token), names(rs)), func() (bool, string) {
		for _, r := range rs {
			s, ok := f.rec.latest(r.name)
			if !ok || s.sent.Before(since) || s.token != token {
				return false, fmt.Sprintf("%s answered %s", r.name, s.outcome(f.tl.tokenNames()))
			}
		}
		return true, ""
	})
}

func names(rs []*replica) string {
	var out []string
	for _, r := range rs {
		out = append(out, r.name)
	}
	return strings.Join(out, ",")
}

// leaderChange is an observed change of the lock's holder ("" = nobody).
type leaderChange struct {
	at     time.Time
	holder string
}

// leaderWatch reads the lock's holder from Redis every 50 ms.
type leaderWatch struct {
	mu      sync.Mutex
	changes []leaderChange
	done    chan struct{}
	wg      sync.WaitGroup
	once    sync.Once
}

func startLeaderWatch(f *fleet) *leaderWatch {
	lw := &leaderWatch{done: make(chan struct{})}
	lw.wg.Go(func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-lw.done:
				return
			case <-tick.C:
			}
			h, err := f.hostRDB.lockHolder()
			if err != nil {
				continue // Redis away: the holder is unknown, not changed
			}
			lw.mu.Lock()
			if n := len(lw.changes); n == 0 || lw.changes[n-1].holder != h {
				lw.changes = append(lw.changes, leaderChange{at: time.Now(), holder: h})
				if h == "" {
					f.note("lock free")
				} else {
					f.note("leader %s", h)
				}
			}
			lw.mu.Unlock()
		}
	})
	return lw
}

func (lw *leaderWatch) stop() {
	lw.once.Do(func() {
		close(lw.done)
		lw.wg.Wait()
	})
}

func (lw *leaderWatch) current() string {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	if n := len(lw.changes); n > 0 {
		return lw.changes[n-1].holder
	}
	return ""
}

// firstOtherSince returns the first holder other than old and "" observed at
// or after since.
func (lw *leaderWatch) firstOtherSince(old string, since time.Time) (leaderChange, bool) {
	return lw.firstSince(since, func(h string) bool { return h != "" && h != old })
}

// firstSince returns the first change observed at or after since to a
// holder ("" = nobody) that match accepts.
func (lw *leaderWatch) firstSince(since time.Time, match func(holder string) bool) (leaderChange, bool) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	for _, c := range lw.changes {
		if !c.at.Before(since) && match(c.holder) {
			return c, true
		}
	}
	return leaderChange{}, false
}

// between returns the changes observed in [from, to).
func (lw *leaderWatch) between(from, to time.Time) []leaderChange {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	var out []leaderChange
	for _, c := range lw.changes {
		if !c.at.Before(from) && c.at.Before(to) {
			out = append(out, c)
		}
	}
	return out
}

// leaderless returns how long, within [from, to), the watch saw the lock
// free: in all, and the longest stretch. Before its first reading the lock
// counts as free.
func (lw *leaderWatch) leaderless(from, to time.Time) (total, longest time.Duration) {
	lw.mu.Lock()
	defer lw.mu.Unlock()
	holder, since := "", from
	add := func(until time.Time) {
		if holder == "" && until.After(since) {
			d := until.Sub(since)
			total += d
			longest = max(longest, d)
		}
	}
	for _, c := range lw.changes {
		if !c.at.After(from) {
			holder = c.holder
			continue
		}
		if !c.at.Before(to) {
			break
		}
		add(c.at)
		holder, since = c.holder, c.at
	}
	add(to)
	return total, longest
}

// currentLeader waits until some replica holds the lock and returns it.
func (f *fleet) currentLeader() *replica {
	f.t.Helper()
	var r *replica
	f.waitFor(f.tm.LockTTL+5*time.Second, "a leader", func() (bool, string) {
		h := f.leader.current()
		r = f.byName(h)
		return r != nil, fmt.Sprintf("lock holder %q", h)
	})
	return r
}

// waitNewLeader waits until a replica other than old holds the lock, and
// returns it with the time the watch first saw it.
func (f *fleet) waitNewLeader(old *replica, since time.Time, timeout time.Duration) (*replica, time.Time) {
	f.t.Helper()
	var c leaderChange
	f.waitFor(timeout, "a leader other than "+old.name, func() (bool, string) {
		var ok bool
		c, ok = f.leader.firstOtherSince(old.name, since)
		return ok, fmt.Sprintf("lock holder %q", f.leader.current())
	})
	r := f.byName(c.holder)
	if r == nil {
		f.t.Fatalf("the lock is held by %q, not a replica", c.holder)
	}
	return r, c.at
}

// timeline is what happened, for the log of a failed test.
type timeline struct {
	mu     sync.Mutex
	start  time.Time
	events []event
	tokens map[string]string // token -> "tok#n"
}

type event struct {
	at   time.Time
	what string
}

func (tl *timeline) add(what string) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tl.events = append(tl.events, event{time.Now(), what})
}

func (tl *timeline) rel(t time.Time) string {
	if tl.start.IsZero() || t.IsZero() {
		return "?"
	}
	return fmt.Sprintf("%+.2fs", t.Sub(tl.start).Seconds())
}

// learn names the tokens in issue order: tok#1, tok#2, ...
func (tl *timeline) learn(tokens []fakeToken) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	if tl.tokens == nil {
		tl.tokens = map[string]string{}
	}
	for i, tk := range tokens {
		tl.tokens[tk.Token] = fmt.Sprintf("tok#%d", i+1)
	}
}

func (tl *timeline) tokenName(token string) string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	if n, ok := tl.tokens[token]; ok {
		return n
	}
	if len(token) > 8 {
		token = token[len(token)-8:]
	}
	return "tok?" + token
}

func (tl *timeline) tokenNames() map[string]string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	return tl.tokens
}

// printTimeline logs, for a failed test, the events, the tokens the upstream
// issued, what each replica answered (runs of equal answers) and the tail of
// each replica's log.
func (f *fleet) printTimeline() {
	if f.start.IsZero() {
		f.printLogs() // the fleet did not start: its logs say why
		return
	}
	tl := f.tl
	var b strings.Builder
	fmt.Fprintf(&b, "timeline (seconds from fleet ready at %s):\n", tl.start.Format("15:04:05.000"))

	var st fakeStats
	if resp, err := controlHTTP.Get(f.rdpBase + "/fake/v1/stats"); err == nil {
		_ = json.NewDecoder(resp.Body).Decode(&st)
		resp.Body.Close()
		tl.learn(st.Tokens)
	}
	type line struct {
		at   time.Time
		text string
	}
	var lines []line
	tl.mu.Lock()
	for _, e := range tl.events {
		lines = append(lines, line{e.at, e.what})
	}
	tl.mu.Unlock()
	for i, tk := range st.Tokens {
		lines = append(lines, line{tk.IssuedAt, fmt.Sprintf("upstream issued tok#%d (expires %s)", i+1, tl.rel(tk.ExpiresAt))})
	}
	for _, c := range st.Calls {
		if c.Status != http.StatusOK {
			lines = append(lines, line{c.At, fmt.Sprintf("upstream liveness call answered %d", c.Status)})
		}
	}
	slices.SortStableFunc(lines, func(a, b line) int { return a.at.Compare(b.at) })
	for _, l := range lines {
		fmt.Fprintf(&b, "  %8s  %s\n", tl.rel(l.at), l.text)
	}
	fmt.Fprintf(&b, "upstream: liveness calls %d (ok %d), auth calls %d\n", st.LivenessCalls, st.LivenessOK, st.authCalls())

	if f.rec != nil {
		samples := f.rec.all()
		tokNames := tl.tokenNames()
		for _, r := range f.replicas {
			fmt.Fprintf(&b, "%s answered:\n", r.name)
			var runs []string
			var cur string
			var from, to time.Time
			var n int
			flush := func() {
				if n > 0 {
					runs = append(runs, fmt.Sprintf("    %8s..%-8s %s ×%d", tl.rel(from), tl.rel(to), cur, n))
				}
			}
			for _, s := range samples {
				if s.replica != r.name {
					continue
				}
				o := s.outcome(tokNames)
				if o != cur || n == 0 {
					flush()
					cur, from, n = o, s.sent, 0
				}
				to = s.recv
				n++
			}
			flush()
			if len(runs) > 40 {
				runs = append(runs[:20], append([]string{"    ..."}, runs[len(runs)-20:]...)...)
			}
			b.WriteString(strings.Join(runs, "\n"))
			b.WriteString("\n")
		}
	}
	f.t.Log(b.String())
	f.printLogs()
}

// printLogs logs the tail of each replica's log.
func (f *fleet) printLogs() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, r := range f.replicas {
		if r == nil || r.c == nil {
			continue
		}
		rc, err := r.c.Logs(ctx)
		if err != nil {
			continue
		}
		out, _ := io.ReadAll(rc)
		rc.Close()
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) > 25 {
			lines = lines[len(lines)-25:]
		}
		f.t.Logf("last log lines of %s:\n    %s", r.name, strings.Join(lines, "\n    "))
	}
}
