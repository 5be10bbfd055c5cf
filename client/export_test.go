package client

import (
	"context"
	"time"

	"github.com/tokenkeeper/tokenkeeper/clock"
)

// SetClock replaces c's clock.
func SetClock(c *Client, clk clock.Clock) { c.clock = clk }

// SetSleep replaces how c waits for a Retry-After.
func SetSleep(c *Client, f func(ctx context.Context, d time.Duration) error) { c.sleep = f }

// Waiters is how many callers wait for the request in flight for name.
func Waiters(c *Client, name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cl := c.flight[name]; cl != nil {
		return cl.waiters
	}
	return 0
}
