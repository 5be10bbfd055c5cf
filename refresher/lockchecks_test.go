package refresher_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/redistest"
	"github.com/tokenkeeper/tokenkeeper/refresher"
)

// The checks a replica's elections ask together reach Redis in one round
// trip, each with its own lock's answer.
func TestLockChecksGoTogether(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv := redistest.NewPiped(t)
		link := srv.NewLink(t)
		rdb := link.Client(t)
		admin := srv.Client(t)
		const locks = 50
		for i := range locks {
			if i%2 == 0 {
				if err := admin.Set(t.Context(), fmt.Sprintf("lock-%d", i), "holder", time.Duration(i+1)*time.Second).Err(); err != nil {
					t.Fatal(err)
				}
			}
		}
		checks := refresher.NewLockChecks(rdb, 10*time.Second)
		run := func() (stop func()) {
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error, 1)
			go func() { done <- checks.Run(ctx) }()
			return func() {
				cancel()
				if err := <-done; err != context.Canceled {
					t.Errorf("Run returned %v, want context.Canceled", err)
				}
			}
		}
		// What one check alone costs, the connection dialled.
		stop := run()
		if _, err := refresher.PTTL(checks, t.Context(), "lock-0"); err != nil {
			t.Fatal(err)
		}
		before := link.Writes()
		if _, err := refresher.PTTL(checks, t.Context(), "lock-0"); err != nil {
			t.Fatal(err)
		}
		alone := link.Writes() - before
		stop()

		answers := make([]time.Duration, locks)
		errs := make([]error, locks)
		var asked sync.WaitGroup
		for i := range locks {
			asked.Go(func() { answers[i], errs[i] = refresher.PTTL(checks, t.Context(), fmt.Sprintf("lock-%d", i)) })
		}
		synctest.Wait() // every check asked before the checks run
		before = link.Writes()
		stop = run()
		asked.Wait()
		if got := link.Writes() - before; got != alone {
			t.Errorf("%d checks asked together took %d writes to Redis, want one pipeline's (%d, as one check alone)", locks, got, alone)
		}
		for i := range locks {
			want := time.Duration(-2) // no lock
			if i%2 == 0 {
				want = time.Duration(i+1) * time.Second
			}
			if errs[i] != nil || answers[i] != want {
				t.Errorf("lock-%d: %v, %v, want %v", i, answers[i], errs[i], want)
			}
		}
		stop()

		// A check asked while Run does not run ends with its context.
		actx, acancel := context.WithTimeout(t.Context(), time.Second)
		defer acancel()
		if _, err := refresher.PTTL(checks, actx, "lock-0"); err != context.DeadlineExceeded {
			t.Errorf("a check with nobody to answer it returned %v, want its context's end", err)
		}
	})
}
