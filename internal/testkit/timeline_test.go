package testkit_test

import (
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/testkit"
)

// The Timeline stops at every deadline, lets what fired there run to its
// end (a chain of goroutines included) before it moves on, and keeps the
// bubble's clock with its own.
func TestTimelineStepsDeadlineByDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tl := testkit.NewTimeline(t)
		start := tl.Now()
		var hooked []time.Duration
		tl.Clock.OnAdvance(func(now time.Time) { hooked = append(hooked, now.Sub(start)) })

		// A loop that re-arms its timer for 300ms after each firing, and
		// hands each firing to a second goroutine, which records it.
		var mu sync.Mutex
		var seen []time.Duration
		fired := make(chan time.Time)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for at := range fired {
				mu.Lock()
				seen = append(seen, at.Sub(start))
				mu.Unlock()
			}
		}()
		stop := make(chan struct{})
		go func() {
			defer close(fired)
			timer := tl.Clock.NewTimer(300 * time.Millisecond)
			for {
				select {
				case <-stop:
					return
				case at := <-timer.C():
					fired <- at
					timer.Reset(300 * time.Millisecond)
				}
			}
		}()
		t.Cleanup(func() { close(stop); <-done })
		count := func() int {
			mu.Lock()
			defer mu.Unlock()
			return len(seen)
		}

		// Each look comes after a step has run to its end.
		var looks []int
		took := tl.Until("three firings recorded", time.Minute, func() bool {
			looks = append(looks, count())
			return count() == 3
		})
		if took != 900*time.Millisecond {
			t.Errorf("Until took %v of fake time, want 900ms", took)
		}
		if want := []int{0, 1, 2, 3}; !slices.Equal(looks, want) {
			t.Errorf("Until looked at %v firings, want %v: once before the first step and after each", looks, want)
		}
		if got := time.Since(start); got != took {
			t.Errorf("the bubble's clock moved %v, the Timeline %v: want the same", got, took)
		}

		tl.Advance(650 * time.Millisecond)
		if got := tl.Now().Sub(start); got != 1550*time.Millisecond {
			t.Errorf("Advance ended at +%v, want +1.55s", got)
		}
		mu.Lock()
		want := []time.Duration{300 * time.Millisecond, 600 * time.Millisecond, 900 * time.Millisecond, 1200 * time.Millisecond, 1500 * time.Millisecond}
		if !slices.Equal(seen, want) {
			t.Errorf("firings at %v, want %v", seen, want)
		}
		mu.Unlock()
		if want := append(want, 1550*time.Millisecond); !slices.Equal(hooked, want) {
			t.Errorf("OnAdvance saw %v, want %v", hooked, want)
		}
	})
}
