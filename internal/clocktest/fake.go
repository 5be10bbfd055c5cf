// Package clocktest is a clock.Clock that moves only when a test says so.
package clocktest

import (
	"sort"
	"sync"
	"time"

	"github.com/tokenkeeper/tokenkeeper/clock"
)

// Fake is a clock.Clock whose time moves only by Advance. Timers and
// tickers fire during Advance, in the order of their deadlines. It is safe
// for concurrent use.
type Fake struct {
	mu      sync.Mutex
	now     time.Time           // guarded by mu
	waiters []*waiter           // guarded by mu: armed timers and tickers
	hooks   []func(t time.Time) // guarded by mu: called as the time moves (OnAdvance)
}

// New returns a Fake set at start.
func New(start time.Time) *Fake { return &Fake{now: start} }

// waiter is one armed timer or ticker.
type waiter struct {
	f      *Fake
	c      chan time.Time
	at     time.Time
	period time.Duration // 0 for a timer
	armed  bool          // guarded by f.mu
}

// Now returns the fake time.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// NewTimer returns a timer that fires when the fake time reaches Now()+d.
func (f *Fake) NewTimer(d time.Duration) clock.Timer {
	w := &waiter{f: f, c: make(chan time.Time, 1)}
	w.Reset(d)
	return w
}

// NewTicker returns a ticker that fires every d of fake time.
func (f *Fake) NewTicker(d time.Duration) clock.Ticker {
	if d <= 0 {
		panic("clocktest: non-positive ticker period")
	}
	w := &waiter{f: f, c: make(chan time.Time, 1), period: d}
	w.Reset(d)
	return ticker{w}
}

// ticker is a waiter seen as a clock.Ticker.
type ticker struct{ w *waiter }

func (t ticker) C() <-chan time.Time { return t.w.c }
func (t ticker) Stop()               { t.w.Stop() }

// OnAdvance registers fn to be called with the new time whenever Advance
// moves the time: at each deadline it stops at, before the timers due then
// fire, and at the end. Another clock that must agree with this one (a
// miniredis's SetTime, say) follows it so. fn is called without the
// Fake's lock held, from the goroutine that calls Advance.
func (f *Fake) OnAdvance(fn func(t time.Time)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hooks = append(f.hooks, fn)
}

// Advance moves the time forward by d, firing what falls due on the way:
// it stops at each deadline in turn, tells the OnAdvance hooks, and fires
// every timer and ticker due then. A timer whose channel is full when it
// fires drops that tick, as a time.Ticker does.
//
// Advance fires whatever falls due within d at once, without waiting for
// the goroutines to react to one firing before the next: a test that needs
// them to (a loop that re-arms its timer) advances to one deadline at a
// time, with Next, and waits for the loops to settle in between (see
// internal/testkit.Timeline).
func (f *Fake) Advance(d time.Duration) {
	f.mu.Lock()
	end := f.now.Add(d)
	for {
		sort.Slice(f.waiters, func(i, j int) bool { return f.waiters[i].at.Before(f.waiters[j].at) })
		if len(f.waiters) == 0 || f.waiters[0].at.After(end) {
			break
		}
		if at := f.waiters[0].at; at.After(f.now) {
			f.now = at
			f.callHooks() // unlocks and locks again: the waiters may change meanwhile
			continue
		}
		w := f.waiters[0]
		select {
		case w.c <- f.now:
		default:
		}
		if w.period > 0 {
			w.at = w.at.Add(w.period)
		} else {
			w.armed = false
			f.waiters = f.waiters[1:]
		}
	}
	moved := end.After(f.now)
	f.now = end
	if moved {
		f.callHooks()
	}
	f.mu.Unlock()
}

// callHooks calls the OnAdvance hooks with the time; f.mu is held, and
// released while they run.
func (f *Fake) callHooks() {
	if len(f.hooks) == 0 {
		return
	}
	now, hooks := f.now, append([]func(time.Time){}, f.hooks...)
	f.mu.Unlock()
	for _, fn := range hooks {
		fn(now)
	}
	f.mu.Lock()
}

// Next returns the earliest deadline of the armed timers and tickers, and
// false when none is armed. A deadline may be Now or earlier: a timer armed
// for 0 is due at once, and fires at the next Advance, of any d.
func (f *Fake) Next() (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.waiters) == 0 {
		return time.Time{}, false
	}
	next := f.waiters[0].at
	for _, w := range f.waiters[1:] {
		if w.at.Before(next) {
			next = w.at
		}
	}
	return next, true
}

// Waiters returns how many timers and tickers are armed: a test waits for
// the loop under test to arm its next timer before it advances the time.
func (f *Fake) Waiters() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.waiters)
}

func (w *waiter) C() <-chan time.Time { return w.c }

func (w *waiter) Stop() bool {
	w.f.mu.Lock()
	defer w.f.mu.Unlock()
	return w.disarm()
}

func (w *waiter) Reset(d time.Duration) bool {
	w.f.mu.Lock()
	defer w.f.mu.Unlock()
	was := w.disarm()
	// No stale value is left in C (Go 1.23 timers).
	select {
	case <-w.c:
	default:
	}
	if w.period > 0 && d > 0 {
		w.period = d
	}
	w.at = w.f.now.Add(d)
	w.armed = true
	w.f.waiters = append(w.f.waiters, w)
	return was
}

// disarm removes w from the armed list; f.mu is held.
func (w *waiter) disarm() bool {
	if !w.armed {
		return false
	}
	w.armed = false
	for i, x := range w.f.waiters {
		if x == w {
			w.f.waiters = append(w.f.waiters[:i], w.f.waiters[i+1:]...)
			break
		}
	}
	return true
}
