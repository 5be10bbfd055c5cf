package testkit

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/clocktest"
)

// Timeline runs the loops of a test on fake time, deterministically. It
// lives inside a testing/synctest bubble (synctest.Test), and everything
// the test runs must live there too: the loops, and a Redis reached over
// in-memory connections (redistest.NewPiped), since a goroutine blocked on
// a socket is never idle in the bubble's eyes.
//
// The rule: the time moves only when every goroutine of the bubble but the
// test's is durably blocked, as the runtime tells (synctest.Wait): waiting
// on a channel of the bubble (a Clock timer's among them), in time.Sleep,
// sync.Cond.Wait or sync.WaitGroup.Wait. A goroutine that runs, is
// runnable, waits for a mutex or is in a system call holds the time still.
// Then the time moves only to the next deadline of Clock's timers and
// tickers: there the OnAdvance hooks run (a miniredis's SetTime: key
// expiry, TIME and PEXPIREAT follow), what is due fires, and the time moves
// no further until every goroutine is blocked again. A Redis command and
// its answer, a PUBLISH on its way (miniredis hands it to a goroutine per
// subscriber, which writes it to a pipe the subscriber's reader takes) and
// the subscriber acting on it are goroutines at work, so no step starts
// while one is in flight. No count of Gosched rounds, no sleep, no guess
// of how long anything takes.
//
// The bubble's own clock (time.Now, time.Sleep, context deadlines, the
// Redis client's timeouts) moves in step with Clock: each step first
// sleeps the bubble's clock to the next deadline, which it reaches only
// once everything is idle, firing the bubble's own timers on the way in
// order. Clock starts at the bubble's time, so the two agree after every
// step; a loop woken by a timer of the bubble's during a step (a Redis
// read that timed out) may see Clock up to that step behind.
//
// A loop that keeps re-arming a timer due at once, at one instant, would
// hold the time still for ever: Advance and Until fail the test after
// MaxSpins steps at one instant.
type Timeline struct {
	t testing.TB
	// Clock is the fake clock of the loops under test: give it to their
	// Config.Clock.
	Clock *clocktest.Fake
	spins int // steps in a row at the same instant
}

// MaxSpins is how many steps in a row may stay at one instant of fake
// time before a Timeline reports a loop that spins.
const MaxSpins = 10000

// NewTimeline returns a Timeline whose Clock starts at the bubble's time.
// It must be called inside synctest.Test. When the test ends, after the
// cleanups registered later have run (replicas stopped, servers closed),
// it lets the bubble's clock run a minute on, so that goroutines of the
// Redis client that sleep before they notice they are closed can exit.
func NewTimeline(t testing.TB) *Timeline {
	t.Helper()
	synctest.Wait() // panics outside a bubble
	tl := &Timeline{t: t, Clock: clocktest.New(time.Now())}
	t.Cleanup(func() {
		time.Sleep(time.Minute)
	})
	return tl
}

// Settle returns once every other goroutine of the bubble is durably
// blocked: what the last step (or the test) set in motion has been done.
func (tl *Timeline) Settle() { synctest.Wait() }

// Now is Clock's time.
func (tl *Timeline) Now() time.Time { return tl.Clock.Now() }

// Advance moves the time forward by d, deadline by deadline, letting the
// loops settle at each, and returns settled at Now()+d, with everything
// due by then fired (Advance(0) fires what is due now).
func (tl *Timeline) Advance(d time.Duration) {
	tl.t.Helper()
	end := tl.Clock.Now().Add(d)
	for {
		synctest.Wait()
		next, ok := tl.Clock.Next()
		if !ok || next.After(end) {
			if !tl.Clock.Now().Before(end) {
				return
			}
			next = end
		}
		tl.stepTo(next)
	}
}

// Until moves the time forward deadline by deadline until cond holds,
// looking after each step, once everything has settled, and returns the
// fake time it took. It fails the test when cond does not hold within
// limit of fake time.
func (tl *Timeline) Until(what string, limit time.Duration, cond func() bool) time.Duration {
	tl.t.Helper()
	start := tl.Clock.Now()
	end := start.Add(limit)
	for {
		synctest.Wait()
		if cond() {
			return tl.Clock.Now().Sub(start)
		}
		next, ok := tl.Clock.Next()
		if !ok || next.After(end) {
			if !tl.Clock.Now().Before(end) {
				tl.t.Fatalf("%s: not within %v of fake time", what, limit)
			}
			next = end
		}
		tl.stepTo(next)
	}
}

// stepTo moves both clocks to at (or fires what is due now, when at is not
// after Now) and lets the loops settle.
func (tl *Timeline) stepTo(at time.Time) {
	tl.t.Helper()
	now := tl.Clock.Now()
	if !at.After(now) {
		if tl.spins++; tl.spins > MaxSpins {
			tl.t.Fatalf("fake time stuck at %v: %d steps at that instant; a loop keeps re-arming a timer due at once", now, tl.spins)
		}
		at = now
	} else {
		tl.spins = 0
	}
	if d := time.Until(at); d > 0 {
		time.Sleep(d) // the bubble's clock: returns at `at`, once every goroutine is idle
	}
	tl.Clock.Advance(at.Sub(now))
	synctest.Wait()
}
