package redistest_test

import (
	"errors"
	"os"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
)

// A piped miniredis works inside a bubble, its keys expire on the time it
// is given, and a link to it can be cut, refused and restored.
func TestPipedAndLinks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := t.Context()
		srv := redistest.NewPiped(t)
		rdb := srv.Client(t)
		if err := rdb.Set(ctx, "k", "v", time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		now, err := rdb.Time(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		srv.Mini.SetTime(now.Add(time.Minute - time.Millisecond))
		if n, _ := rdb.Exists(ctx, "k").Result(); n != 1 {
			t.Fatal("the key expired before its time")
		}
		srv.Mini.SetTime(now.Add(time.Minute))
		if n, _ := rdb.Exists(ctx, "k").Result(); n != 0 {
			t.Fatal("the key outlived its time")
		}

		link := srv.NewLink(t)
		c := link.Client(t) // read timeout: a second
		if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
		link.Cut()
		began := time.Now() // the bubble's clock: fake
		if err := c.Get(ctx, "k").Err(); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("GET through a cut link: %v, want a timeout", err)
		}
		if waited := time.Since(began); waited != time.Second {
			t.Errorf("GET through a cut link gave up after %v of the bubble's time, want the read timeout, 1s", waited)
		}
		if err := rdb.Get(ctx, "k").Err(); err != nil {
			t.Fatalf("another client, not through the link: %v", err)
		}
		link.Restore()
		if got, err := c.Get(ctx, "k").Result(); err != nil || got != "v" {
			t.Fatalf("GET once restored: %q, %v", got, err)
		}
		link.Refuse()
		if err := c.Get(ctx, "k").Err(); err == nil {
			t.Fatal("GET through a refused link: got no error")
		}
		link.Restore()
		if got, err := c.Get(ctx, "k").Result(); err != nil || got != "v" {
			t.Fatalf("GET once restored: %q, %v", got, err)
		}
	})
}
