package sim

import (
	"sync/atomic"
	"time"

	"github.com/tokenkeeper/tokenkeeper/clock"
)

// hostClock is one replica's clock: the bubble's time with the replica's
// own offset; its timers run on the bubble's time. (A bubble's readings
// carry no monotonic reading, so a step of the offset while the replica
// runs would move its measured durations too, which no real host's do:
// the offset is set before the replica starts.)
type hostClock struct {
	offset atomic.Int64 // nanoseconds
}

var _ clock.Clock = (*hostClock)(nil)

func (c *hostClock) Now() time.Time { return time.Now().Add(time.Duration(c.offset.Load())) }

func (c *hostClock) NewTimer(d time.Duration) clock.Timer { return clock.Real().NewTimer(d) }

func (c *hostClock) NewTicker(d time.Duration) clock.Ticker { return clock.Real().NewTicker(d) }

func (c *hostClock) step(d time.Duration) { c.offset.Add(int64(d)) }

func (c *hostClock) get() time.Duration { return time.Duration(c.offset.Load()) }
