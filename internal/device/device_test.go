package device_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/fault"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/clock"
	"github.com/tokenkeeper/tokenkeeper/internal/clocktest"
	"github.com/tokenkeeper/tokenkeeper/internal/device"
	"github.com/tokenkeeper/tokenkeeper/internal/plant"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// upstreamFake mints numbered tokens of a fixed lifetime for the access
// token it accepts, and counts its calls.
type upstreamFake struct {
	clk      clock.Clock
	lifetime time.Duration
	mints    atomic.Int64
	mu       sync.Mutex
	accepted string // the access token it takes; others get 401
	access   string // the fleet's current access token
	renewals int
}

func (u *upstreamFake) Access() (cache.Token, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.access == "" {
		return cache.Token{}, false
	}
	return cache.Token{Value: u.access, Deadline: u.clk.Now().Add(time.Hour)}, true
}

func (u *upstreamFake) RenewAccess(context.Context) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.renewals++
	u.access = u.accepted
	return nil
}

func (u *upstreamFake) Mint(_ context.Context, access string) (upstream.Token, error) {
	u.mu.Lock()
	ok := access == u.accepted
	u.mu.Unlock()
	if !ok {
		return upstream.Token{}, &upstream.Error{Op: upstream.OpLiveness, Status: 401}
	}
	n := u.mints.Add(1)
	return upstream.Token{Value: fmt.Sprintf("device-token-%d", n), Lifetime: u.lifetime, Sent: u.clk.Now()}, nil
}

type fixture struct {
	mr   *miniredis.Miniredis
	fake *clocktest.Fake // nil on real time
	clk  clock.Clock
	up   *upstreamFake
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	mr := miniredis.RunT(t)
	mr.ClockTTL(true)
	clk := clocktest.New(time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC))
	mr.SetTime(clk.Now())
	up := &upstreamFake{clk: clk, lifetime: 10 * time.Minute, accepted: "access-1", access: "access-1"}
	return &fixture{mr: mr, fake: clk, clk: clk, up: up}
}

// newRealFixture is a fixture on real time, for the tests where replicas
// wait for one another.
func newRealFixture(t *testing.T) *fixture {
	t.Helper()
	mr := miniredis.RunT(t)
	mr.ClockTTL(true)
	up := &upstreamFake{clk: clock.Real(), lifetime: 10 * time.Minute, accepted: "access-1", access: "access-1"}
	return &fixture{mr: mr, clk: clock.Real(), up: up}
}

// advance moves the fake clock and Redis's time together, Redis's first,
// so that a timer the move fires sees Redis's time moved.
func (f *fixture) advance(d time.Duration) {
	f.mr.SetTime(f.fake.Now().Add(d))
	f.fake.Advance(d)
}

// storeBudget is the read timeout of the fixture's Redis clients: a
// minted token's stored life is cut by it, since the store may take that
// long to run.
const storeBudget = time.Second

// minter is one replica's Minter over the fixture's Redis.
func (f *fixture) minter(t *testing.T) *device.Minter {
	t.Helper()
	return f.minterWith(t, func(*device.Config) {})
}

// minterWith is minter with its Config adjusted by mod.
func (f *fixture) minterWith(t *testing.T, mod func(*device.Config)) *device.Minter {
	t.Helper()
	return f.minterOver(t, f.client(t), mod)
}

// client is a Redis client of the fixture's Redis, closed at t's end.
func (f *fixture) client(t *testing.T) *redis.Client {
	rdb := redis.NewClient(&redis.Options{Addr: f.mr.Addr(), ReadTimeout: storeBudget})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// minterOver is minterWith over the Redis client rdb.
func (f *fixture) minterOver(t *testing.T, rdb *redis.Client, mod func(*device.Config)) *device.Minter {
	t.Helper()
	cfg := device.Config{
		Keys: cache.KeysFor("liveness"), ServeMargin: time.Minute,
		Access: f.up.Access, RenewAccess: f.up.RenewAccess, Mint: f.up.Mint,
		Clock: f.clk, Logger: quiet,
	}
	mod(&cfg)
	m, err := device.New(rdb, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestEachDeviceItsOwnTokenOnAnyReplica(t *testing.T) {
	f := newFixture(t)
	replicas := []*device.Minter{f.minter(t), f.minter(t), f.minter(t)}
	ctx := context.Background()
	const devices = 200
	got := map[string]string{} // device -> token
	for round := range 3 {
		for d := range devices {
			id := fmt.Sprintf("phone-%03d", d)
			tok, err := replicas[(d+round)%len(replicas)].Token(ctx, id)
			if err != nil {
				t.Fatalf("round %d, %s: %v", round, id, err)
			}
			if prev, seen := got[id]; seen && prev != tok.Value {
				t.Fatalf("round %d, %s: got %s, had %s", round, id, tok.Value, prev)
			}
			got[id] = tok.Value
		}
	}
	if n := f.up.mints.Load(); n != devices {
		t.Errorf("upstream mints: %d, want %d (one per device)", n, devices)
	}
	owners := map[string]string{}
	for id, tok := range got {
		if other, dup := owners[tok]; dup {
			t.Fatalf("%s and %s share a token", id, other)
		}
		owners[tok] = id
	}
	for _, k := range f.mr.Keys() {
		if strings.Contains(k, "phone-") {
			t.Fatalf("a device id is stored in clear: %s", k)
		}
	}
}

func TestNewDeviceOnEveryReplicaAtOnceMintsOnce(t *testing.T) {
	f := newRealFixture(t)
	replicas := []*device.Minter{f.minter(t), f.minter(t), f.minter(t)}
	for i := range 50 {
		before := f.up.mints.Load()
		id := fmt.Sprintf("new-device-%d", i)
		var wg sync.WaitGroup
		tokens := make([]string, len(replicas))
		for r, m := range replicas {
			wg.Go(func() {
				tok, err := m.Token(context.Background(), id)
				if err != nil {
					t.Errorf("%s on replica %d: %v", id, r, err)
				}
				tokens[r] = tok.Value
			})
		}
		wg.Wait()
		if n := f.up.mints.Load() - before; n != 1 {
			t.Fatalf("%s asked on three replicas at once: %d mints, want 1", id, n)
		}
		if tokens[0] != tokens[1] || tokens[1] != tokens[2] {
			t.Fatalf("%s: replicas answered %v", id, tokens)
		}
	}
}

func TestTokenRenewedAtTheServeMargin(t *testing.T) {
	f := newFixture(t)
	m := f.minter(t)
	ctx := context.Background()
	first, err := m.Token(ctx, "phone")
	if err != nil {
		t.Fatal(err)
	}
	// The stored copy's life is cut by the store's budget, the client's
	// read timeout (storeBudget).
	f.advance(8*time.Minute + 59*time.Second - storeBudget) // 1m01s left on the stored copy: still servable
	if tok, _ := m.Token(ctx, "phone"); tok.Value != first.Value {
		t.Fatalf("before the margin: got a new token (the first had %v left)", first.Deadline.Sub(f.fake.Now()))
	}
	f.advance(2 * time.Second) // 59s left: within the one-minute margin
	second, err := m.Token(ctx, "phone")
	if err != nil {
		t.Fatal(err)
	}
	if second.Value == first.Value {
		t.Fatalf("within the margin: still the first token")
	}
	if got := second.Deadline.Sub(f.fake.Now()); got != 10*time.Minute {
		t.Errorf("the new token has %v left, want 10m", got)
	}
}

func TestRevokedAccessIsRenewedOnce(t *testing.T) {
	f := newFixture(t)
	f.up.accepted = "access-2" // the fleet still holds access-1
	m := f.minter(t)
	for _, id := range []string{"a", "b", "c"} {
		if _, err := m.Token(context.Background(), id); err != nil {
			t.Fatalf("%s: %v", id, err)
		}
	}
	if f.up.renewals != 1 {
		t.Errorf("access renewals: %d, want 1", f.up.renewals)
	}
}

func TestWithoutAccessOnlyKnownDevicesAreServed(t *testing.T) {
	f := newFixture(t)
	m := f.minter(t)
	ctx := context.Background()
	known, err := m.Token(ctx, "known")
	if err != nil {
		t.Fatal(err)
	}
	f.up.mu.Lock()
	f.up.access = ""
	f.up.mu.Unlock()
	if tok, err := m.Token(ctx, "known"); err != nil || tok.Value != known.Value {
		t.Errorf("a device with a token, without access: %v, %v", tok.Value, err)
	}
	if _, err := m.Token(ctx, "new"); !errors.Is(err, fault.ErrUnavailable) {
		t.Errorf("a new device without access: %v, want fault.ErrUnavailable", err)
	}
}

func TestBadDeviceIDsStoreNothing(t *testing.T) {
	f := newFixture(t)
	m := f.minter(t)
	for _, id := range []string{"", strings.Repeat("a", 129), "a/b", "..%2F..%2Fetc", "télé", "nul\x00", "sp ace"} {
		_, err := m.Token(context.Background(), id)
		if !errors.Is(err, fault.ErrBadDevice) {
			t.Errorf("%q: %v, want fault.ErrBadDevice", id, err)
		}
		if id != "" && strings.Contains(err.Error(), id) {
			t.Errorf("%q: the error repeats the id: %v", id, err)
		}
	}
	if keys := f.mr.Keys(); len(keys) != 0 {
		t.Errorf("keys after refused ids: %v", keys)
	}
	if err := device.CheckID(strings.Repeat("a", 128)); err != nil {
		t.Errorf("128 characters: %v", err)
	}
	if f.up.mints.Load() != 0 {
		t.Errorf("minted for a refused id")
	}
}

// The fleet-wide rate holds across replicas: with 5 mints a second and a
// burst of 5, 30 new devices asked at once on three replicas get 5 tokens
// and 25 refusals that say when to come back; a second later, 5 more.
func TestFleetMintRate(t *testing.T) {
	f := newFixture(t)
	var replicas []*device.Minter
	for range 3 {
		replicas = append(replicas, f.minterWith(t, func(c *device.Config) { c.Rate, c.Burst = 5, 5 }))
	}
	ask := func(round int) (minted, refused int) {
		var mu sync.Mutex
		var wg sync.WaitGroup
		for d := range 30 {
			wg.Go(func() {
				_, err := replicas[d%3].Token(context.Background(), fmt.Sprintf("r%d-phone-%d", round, d))
				mu.Lock()
				defer mu.Unlock()
				var be *device.BudgetError
				switch {
				case err == nil:
					minted++
				case errors.As(err, &be) && be.Fleet && be.RetryAfter > 0 && be.RetryAfter <= time.Second:
					refused++
				default:
					t.Errorf("phone %d: %v", d, err)
				}
			})
		}
		wg.Wait()
		return minted, refused
	}
	if minted, refused := ask(0); minted != 5 || refused != 25 {
		t.Errorf("at once: %d minted, %d refused; want 5 and 25", minted, refused)
	}
	f.advance(time.Second)
	if minted, refused := ask(1); minted != 5 || refused != 25 {
		t.Errorf("a second later: %d minted, %d refused; want 5 and 25", minted, refused)
	}
	if n := f.up.mints.Load(); n != 10 {
		t.Errorf("upstream mints: %d, want 10", n)
	}
}

// A device may cause PerDevice mints per hour; past it, it keeps the token
// it holds and the next mint is refused until the window ends.
func TestPerDeviceCap(t *testing.T) {
	f := newFixture(t)
	f.up.lifetime = 2 * time.Minute
	m := f.minterWith(t, func(c *device.Config) { c.PerDevice = 2 })
	ctx := context.Background()
	for i := range 2 {
		if _, err := m.Token(ctx, "phone"); err != nil {
			t.Fatalf("mint %d: %v", i+1, err)
		}
		f.advance(61 * time.Second) // within the margin: the next ask mints
	}
	_, err := m.Token(ctx, "phone")
	var be *device.BudgetError
	if !errors.As(err, &be) || be.Fleet || be.RetryAfter <= 50*time.Minute {
		t.Fatalf("third mint within the hour: %v, want the device's cap with about 58 minutes to wait", err)
	}
	if _, err := m.Token(ctx, "another-phone"); err != nil {
		t.Errorf("another device: %v", err)
	}
	f.advance(time.Hour)
	if _, err := m.Token(ctx, "phone"); err != nil {
		t.Errorf("after the window: %v", err)
	}
}

// TestClaimOutlivesASlowMint: a replica whose mint takes longer than the
// device's claim (a slow upstream, or a slow Redis before it) keeps the
// claim while it works, so a replica asked meanwhile waits for its token
// instead of minting a second one.
func TestClaimOutlivesASlowMint(t *testing.T) {
	f := newFixture(t)
	const claim = 3 * time.Second
	slow, entered, gate := f.heldMint(0)
	// kept signals each answered command of a's that keeps a claim: a
	// script with one key, a claim, and two arguments (its owner and its
	// life; a release has one).
	kept := make(chan struct{}, 16)
	rdb := f.client(t)
	rdb.AddHook(keptHook(kept))
	a := f.minterOver(t, rdb, func(c *device.Config) { c.Claim, c.Mint = claim, slow })
	b := f.minterWith(t, func(c *device.Config) { c.Claim = claim })

	fromA := ask(a, "phone")
	<-entered
	key := claimKey(t, f)
	// Three times the claim's life goes by while a's upstream call hangs;
	// each third of it, a sets the claim's life back to the whole.
	if f.fake.Waiters() == 0 {
		t.Fatal("a waits for its upstream call with no timer to keep its claim alive")
	}
	for range 9 {
		f.advance(claim / 3)
		<-kept // the keeper runs on a goroutine of its own
		if left := f.mr.TTL(key); left != claim {
			t.Fatalf("the claim has %v left after its owner kept it, want %v", left, claim)
		}
	}
	fromB := ask(b, "phone")
	for f.fake.Waiters() < 2 { // a's keeper, and b waiting for a's token
		runtime.Gosched()
	}
	close(gate)
	ra := <-fromA
	var rb answer
	for done := false; !done; {
		select {
		case rb = <-fromB:
			done = true
		default:
			f.advance(25 * time.Millisecond) // b looks again
			runtime.Gosched()
		}
	}
	if ra.err != nil || rb.err != nil {
		t.Fatalf("a: %v; b: %v", ra.err, rb.err)
	}
	if n := f.up.mints.Load(); n != 1 || ra.tok.Value != rb.tok.Value {
		t.Errorf("upstream mints %d, tokens %q and %q; want one token, minted once", n, ra.tok.Value, rb.tok.Value)
	}
	if f.mr.Exists(key) {
		t.Errorf("the claim outlived the mint")
	}
}

// claimKey returns the one device claim in Redis.
func claimKey(t *testing.T, f *fixture) string {
	t.Helper()
	for _, k := range f.mr.Keys() {
		if strings.HasSuffix(k, ":claim") {
			return k
		}
	}
	t.Fatalf("no device claim in Redis: %v", f.mr.Keys())
	return ""
}

// TestFrozenMinterHandsOutTheFleetsToken: a replica frozen in the middle
// of a mint (a GC pause, SIGSTOP) cannot keep its claim; another replica
// asked for the device meanwhile mints and hands out its token. The
// frozen one, once it runs again, finds that token stored and its claim
// gone, and hands out that token instead of its own: a device holds one
// token, whatever the upstream was asked.
func TestFrozenMinterHandsOutTheFleetsToken(t *testing.T) {
	// a's token expires before b's (asked for first), or after (the
	// upstream gave it a longer life: it would win on expiry alone).
	for _, longer := range []time.Duration{0, time.Minute} {
		t.Run(fmt.Sprintf("longer=%v", longer), func(t *testing.T) { testFrozenMinter(t, longer) })
	}
}

func testFrozenMinter(t *testing.T, longer time.Duration) {
	f := newFixture(t)
	frozen, entered, gate := f.heldMint(longer)
	a := f.minterWith(t, func(c *device.Config) { c.Mint = frozen })
	b := f.minter(t)
	ctx := context.Background()

	fromA := ask(a, "phone")
	<-entered
	// a is frozen with its token in hand: its claim lapses.
	f.mr.Del(claimKey(t, f))
	tb, err := b.Token(ctx, "phone")
	if err != nil {
		t.Fatalf("b: %v", err)
	}
	close(gate)
	ra := <-fromA
	if ra.err != nil {
		t.Fatalf("a: %v", ra.err)
	}
	ta := ra.tok
	if ta.Value != tb.Value {
		t.Errorf("the device got two tokens: %q from a, %q from b", ta.Value, tb.Value)
	}
	if again, err := a.Token(ctx, "phone"); err != nil || again.Value != tb.Value {
		t.Errorf("the device's next ask: %q, %v; want %q", again.Value, err, tb.Value)
	}
	if n := f.up.mints.Load(); n != 2 {
		t.Errorf("upstream mints %d, want 2 (a's, discarded, and b's)", n)
	}
}

// TestUnstoredTokenIsKeptAndStoredLater: a device's new token whose store
// fails (here Redis answers it with an error; in the simulator, a replica
// frozen past every attempt's budget) is still the device's: the next ask
// on the replica gets it, not a second mint, and the replica stores it
// once Redis takes it, so that the other replicas hand out the same.
func TestUnstoredTokenIsKeptAndStoredLater(t *testing.T) {
	f := newFixture(t)
	gated, entered, gate := f.heldMint(0)
	a := f.minterWith(t, func(c *device.Config) { c.Mint = gated })
	b := f.minter(t)
	ctx := context.Background()

	fromA := ask(a, "phone")
	<-entered
	key := strings.TrimSuffix(claimKey(t, f), ":claim")
	f.mr.Set(key, "not a hash") // every store of a's token fails (WRONGTYPE)
	close(gate)
	ra := <-fromA
	if ra.err != nil {
		t.Fatalf("a: %v", ra.err)
	}
	first := ra.tok
	if again, err := a.Token(ctx, "phone"); err != nil || again.Value != first.Value {
		t.Fatalf("the next ask on a: %q, %v; want the unsaved %q", again.Value, err, first.Value)
	}
	f.mr.Del(key) // Redis takes the store again
	if f.fake.Waiters() == 0 {
		t.Fatal("a keeps no timer to store its unsaved token again")
	}
	f.advance(time.Second) // a tries again every second
	for !f.mr.Exists(key) {
		runtime.Gosched() // a's store runs on a goroutine of its own
	}
	if other, err := b.Token(ctx, "phone"); err != nil || other.Value != first.Value {
		t.Errorf("b: %q, %v; want %q", other.Value, err, first.Value)
	}
	if n := f.up.mints.Load(); n != 1 {
		t.Errorf("upstream mints %d, want 1", n)
	}
}

// keptHook sends on kept after each answered script call that keeps a
// device claim (see TestClaimOutlivesASlowMint).
func keptHook(kept chan<- struct{}) redis.Hook { return keptHooks{kept} }

type keptHooks struct{ kept chan<- struct{} }

func (keptHooks) DialHook(next redis.DialHook) redis.DialHook { return next }

func (keptHooks) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h keptHooks) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		args := cmd.Args()
		name := strings.ToLower(cmd.Name())
		if err == nil && (name == "evalsha" || name == "eval") && len(args) == 6 {
			if key, _ := args[3].(string); strings.HasSuffix(key, ":claim") {
				h.kept <- struct{}{}
			}
		}
		return err
	}
}

// heldMint returns an upstream Mint whose first call, once the fake has
// answered it (with longer added to the token's life), waits until
// release is closed: a replica minting slowly, or frozen with its token
// in hand. entered is closed when it starts waiting.
func (f *fixture) heldMint(longer time.Duration) (mint func(context.Context, string) (upstream.Token, error), entered, release chan struct{}) {
	entered, release = make(chan struct{}), make(chan struct{})
	var once sync.Once
	mint = func(ctx context.Context, access string) (upstream.Token, error) {
		tok, err := f.up.Mint(ctx, access)
		tok.Lifetime += longer
		once.Do(func() { close(entered); <-release })
		return tok, err
	}
	return mint, entered, release
}

// answer is what a Minter's Token returned.
type answer struct {
	tok cache.Token
	err error
}

// ask asks m for device's token on a goroutine of its own.
func ask(m *device.Minter, device string) <-chan answer {
	c := make(chan answer, 1)
	go func() {
		tok, err := m.Token(context.Background(), device)
		c <- answer{tok, err}
	}()
	return c
}

// TestRunStopsTheBackgroundWork: Run returns once the asks under way have
// ended, and asks after it fail as unavailable, so that a stopped Keeper
// leaves nothing running against its closed Redis client.
func TestRunStopsTheBackgroundWork(t *testing.T) {
	f := newFixture(t)
	held, entered, release := f.heldMint(0)
	m := f.minterWith(t, func(c *device.Config) { c.Mint = held })
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- m.Run(ctx) }()
	first := ask(m, "phone")
	<-entered
	cancel()
	select {
	case err := <-ran:
		t.Fatalf("Run returned (%v) while an ask was under way", err)
	case <-first:
		t.Fatal("the ask under way answered while its upstream call was held")
	default:
	}
	close(release)
	<-first
	if err := <-ran; !errors.Is(err, context.Canceled) {
		t.Errorf("Run: %v, want context.Canceled", err)
	}
	if _, err := m.Token(context.Background(), "tablet"); !errors.Is(err, fault.ErrUnavailable) {
		t.Errorf("an ask after Run returned: %v, want %v", err, fault.ErrUnavailable)
	}
}

// TestStoreDeliveredLateKeepsTheDeadline: a store that reaches Redis
// later than its budget after it was sent (writes paused, a slow link
// delivering what its sender gave up on) must not start the token's life
// late: a replica reading the stored token dates it no later than the
// upstream's expiry. (Defect 10 of docs/simulation.md: seed 3016 of a
// sweep found it; without the fix, planted, the reading is late again.)
func TestStoreDeliveredLateKeepsTheDeadline(t *testing.T) {
	late := 3 * storeBudget
	if over := storedLateOverstates(t, late); over > 0 {
		t.Errorf("b dates the token %v later than it expires (the store ran %v after it was sent)", over, late)
	}
	plant.Set(plant.DeviceStoreUnbounded, true)
	defer plant.Set(plant.DeviceStoreUnbounded, false)
	if over := storedLateOverstates(t, late); over <= 0 {
		t.Errorf("without the fix (plant %s), b dates the token %v before it expires, want later: the test no longer runs the store late", plant.DeviceStoreUnbounded, -over)
	}
}

// storedLateOverstates mints a device's token on a replica whose store
// runs late by late, and returns how much later than the upstream's
// expiry another replica reading it dates it.
func storedLateOverstates(t *testing.T, late time.Duration) time.Duration {
	t.Helper()
	f := newFixture(t)
	rdb := f.client(t)
	rdb.AddHook(lateStore{f: f, by: late})
	a := f.minterOver(t, rdb, func(*device.Config) {})
	b := f.minter(t)
	ctx := context.Background()
	minted, err := a.Token(ctx, "phone")
	if err != nil {
		t.Fatal(err)
	}
	read, err := b.Token(ctx, "phone")
	if err != nil {
		t.Fatal(err)
	}
	if read.Value != minted.Value || f.up.mints.Load() != 1 {
		t.Fatalf("b handed out %q after %d mints, want a's token %q after one", read.Value, f.up.mints.Load(), minted.Value)
	}
	return read.Deadline.Sub(minted.Deadline)
}

// lateStore runs the store of a device's token by later than it was
// sent: the fixture's clock and Redis's move on before Redis runs it.
type lateStore struct {
	f  *fixture
	by time.Duration
}

func (lateStore) DialHook(next redis.DialHook) redis.DialHook { return next }

func (lateStore) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h lateStore) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if args := cmd.Args(); strings.EqualFold(cmd.Name(), "eval") && len(args) > 1 {
			if script, _ := args[1].(string); strings.Contains(script, "store.lua") {
				h.f.advance(h.by)
			}
		}
		return next(ctx, cmd)
	}
}
