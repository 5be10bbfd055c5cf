package sim

import (
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tokenkeeper/tokenkeeper/clock"
)

// hostClock is one replica's clock: the bubble's time with the replica's
// own offset, its timers on the bubble's time, stalled while the replica
// is frozen. (A bubble's readings carry no monotonic reading, so a step of
// the offset while the replica runs would move its measured durations too,
// which no real host's do: the offset is set before the replica starts.)
//
// It is also the source of the replica's random choices (the refresh
// jitter, the backoff: refresher.Config.Clock), drawn from the seed.
type hostClock struct {
	offset atomic.Int64 // nanoseconds, besides the drift
	drift  atomic.Int64 // parts per million the clock runs fast (negative: slow), while a ClockDrift lasts

	mu         sync.Mutex
	frozen     chan struct{} // closed when the replica thaws; nil when it runs
	driftSince time.Time     // since when it drifts
	spans      []driftSpan   // every drift so far, in order

	rnd *rand.Rand
}

var _ clock.Clock = (*hostClock)(nil)

func newHostClock(seed uint64, replica int) *hostClock {
	return &hostClock{rnd: rand.New(&lockedSource{src: rand.NewPCG(seed, uint64(replica)+0x4057)})}
}

func (c *hostClock) Now() time.Time { return time.Now().Add(c.get()) }

func (c *hostClock) step(d time.Duration) { c.offset.Add(int64(d)) }

// get is how far the clock is ahead of the bubble's now, drift included.
func (c *hostClock) get() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.getLocked()
}

func (c *hostClock) getLocked() time.Duration {
	off := time.Duration(c.offset.Load())
	if ppm := c.drift.Load(); ppm != 0 {
		off += time.Duration(float64(time.Since(c.driftSince)) * float64(ppm) / 1e6)
	}
	return off
}

// setDrift makes the clock run ppm parts per million fast (negative:
// slow) from now on; 0 stops the drift, keeping the offset it built up.
func (c *hostClock) setDrift(ppm int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offset.Store(int64(c.getLocked()))
	c.driftSince = time.Now()
	c.drift.Store(ppm)
	c.spans = append(c.spans, driftSpan{from: c.driftSince, ppm: ppm})
}

// driftSpan is a stretch of the bubble's time from which the clock ran
// ppm parts per million fast (negative: slow), until the next span.
type driftSpan struct {
	from time.Time
	ppm  int64
}

// driftedSince is how far the clock can have moved against the bubble's
// time since t: the drift, in absolute value, summed over the time since
// t (rounded up to the microsecond). A deadline the replica set on its
// clock at t or later, converted to the bubble's time with the clock's
// offset now, is off by at most this much, either way; without a drift
// since t, it is exact.
func (c *hostClock) driftedSince(t time.Time) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	var sum float64 // ns × ppm
	for i, sp := range c.spans {
		end := now
		if i+1 < len(c.spans) {
			end = c.spans[i+1].from
		}
		from := sp.from
		if from.Before(t) {
			from = t
		}
		if d := end.Sub(from); d > 0 && sp.ppm != 0 {
			sum += float64(d) * math.Abs(float64(sp.ppm))
		}
	}
	if sum == 0 {
		return 0
	}
	return time.Duration(math.Ceil(sum/1e6/1e3)) * time.Microsecond
}

// real is how long d of the host's time lasts in the bubble's, rounded
// up so that a timer never fires before the host's clock reads its
// deadline: a loop that re-arms a timer until the clock reads the due
// time (as the leader's does) would otherwise spin at one instant of the
// bubble, whose time then never moves.
func (c *hostClock) real(d time.Duration) time.Duration {
	if ppm := c.drift.Load(); ppm != 0 && d > 0 {
		return time.Duration(math.Ceil(float64(d+1)*1e6/float64(1e6+ppm))) + 1
	}
	return d
}

// Rand is the replica's generator, seeded from the run's seed.
func (c *hostClock) Rand() *rand.Rand { return c.rnd }

// freeze stalls the replica's timers until thaw.
func (c *hostClock) freeze() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.frozen == nil {
		c.frozen = make(chan struct{})
	}
}

func (c *hostClock) thaw() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.frozen != nil {
		close(c.frozen)
		c.frozen = nil
	}
}

// thawed returns a channel closed once the replica runs (at once when it
// does).
func (c *hostClock) thawed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.frozen == nil {
		return closedChan
	}
	return c.frozen
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

func (c *hostClock) isFrozen() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.frozen != nil
}

// NewTimer returns a timer that fires after d, or, when the replica is
// frozen then, as it thaws.
func (c *hostClock) NewTimer(d time.Duration) clock.Timer {
	t := &hostTimer{c: c, ch: make(chan time.Time, 1)}
	t.mu.Lock()
	t.arm(d)
	t.mu.Unlock()
	return t
}

// hostTimer is a timer of a hostClock. Stop and Reset guarantee, as Go's
// timers do, that no value of before the call is received after it.
type hostTimer struct {
	c  *hostClock
	ch chan time.Time

	mu      sync.Mutex // guards the fields below
	t       *time.Timer
	seq     uint64 // which arming may deliver
	pending bool   // armed and not yet delivered
}

func (t *hostTimer) C() <-chan time.Time { return t.ch }

// arm starts the timer; t.mu held.
func (t *hostTimer) arm(d time.Duration) {
	t.seq++
	seq := t.seq
	t.pending = true
	t.t = time.AfterFunc(t.c.real(d), func() {
		<-t.c.thawed()
		t.mu.Lock()
		defer t.mu.Unlock()
		if seq != t.seq {
			return
		}
		t.pending = false
		select {
		case t.ch <- t.c.Now():
		default:
		}
	})
}

// disarm stops the timer and drains its channel; t.mu held.
func (t *hostTimer) disarm() bool {
	was := t.pending
	t.pending = false
	t.seq++
	if t.t != nil {
		t.t.Stop()
	}
	select {
	case <-t.ch:
	default:
	}
	return was
}

func (t *hostTimer) Stop() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.disarm()
}

func (t *hostTimer) Reset(d time.Duration) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	was := t.disarm()
	t.arm(d)
	return was
}

// NewTicker returns a ticker of period d whose ticks stall while the
// replica is frozen (one is delivered as it thaws) and, like Go's, are
// dropped when the last is not yet received.
func (c *hostClock) NewTicker(d time.Duration) clock.Ticker {
	t := &hostTicker{c: c, d: d, ch: make(chan time.Time, 1)}
	t.mu.Lock()
	t.arm()
	t.mu.Unlock()
	return t
}

type hostTicker struct {
	c  *hostClock
	d  time.Duration
	ch chan time.Time

	mu      sync.Mutex // guards t and stopped
	t       *time.Timer
	stopped bool
}

func (t *hostTicker) C() <-chan time.Time { return t.ch }

// arm schedules the first tick; t.mu held. Each tick schedules the next
// on the same timer (one tick is in flight at a time).
func (t *hostTicker) arm() {
	t.t = time.AfterFunc(t.c.real(t.d), t.tick)
}

// tick delivers a tick, once the replica runs, and schedules the next.
func (t *hostTicker) tick() {
	<-t.c.thawed()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return
	}
	select {
	case t.ch <- t.c.Now():
	default:
	}
	t.t.Reset(t.c.real(t.d))
}

func (t *hostTicker) Stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.stopped = true
	t.t.Stop()
}

// lockedSource is a rand.Source safe for concurrent use.
type lockedSource struct {
	mu  sync.Mutex
	src rand.Source
}

func (s *lockedSource) Uint64() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.src.Uint64()
}
