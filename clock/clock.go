// Package clock is the time the fleet's loops run on: Now for dates, and
// timers and tickers for waits, so that tests can drive the election, the
// refresh loop and the poll on a fake clock (see clocktest) instead of
// sleeping.
package clock

import "time"

// Clock tells the time and makes timers and tickers. Implementations are
// safe for concurrent use.
type Clock interface {
	// Now returns the current time. Real's carries Go's monotonic reading.
	Now() time.Time
	// NewTimer returns a Timer that fires once, after d.
	NewTimer(d time.Duration) Timer
	// NewTicker returns a Ticker that fires every d; d must be positive.
	NewTicker(d time.Duration) Ticker
}

// Timer is a time.Timer behind an interface.
type Timer interface {
	// C delivers the time when the timer fires.
	C() <-chan time.Time
	// Stop and Reset behave as time.Timer's (Go 1.23 semantics: no stale
	// value is left in C).
	Stop() bool
	Reset(d time.Duration) bool
}

// Ticker is a time.Ticker behind an interface.
type Ticker interface {
	C() <-chan time.Time
	Stop()
}

// Real returns the system clock.
func Real() Clock { return realClock{} }

type realClock struct{}

func (realClock) Now() time.Time                   { return time.Now() }
func (realClock) NewTimer(d time.Duration) Timer   { return realTimer{time.NewTimer(d)} }
func (realClock) NewTicker(d time.Duration) Ticker { return realTicker{time.NewTicker(d)} }

type realTimer struct{ t *time.Timer }

func (r realTimer) C() <-chan time.Time        { return r.t.C }
func (r realTimer) Stop() bool                 { return r.t.Stop() }
func (r realTimer) Reset(d time.Duration) bool { return r.t.Reset(d) }

type realTicker struct{ t *time.Ticker }

func (r realTicker) C() <-chan time.Time { return r.t.C }
func (r realTicker) Stop()               { r.t.Stop() }
