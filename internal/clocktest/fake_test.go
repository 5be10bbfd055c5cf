package clocktest_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/clocktest"
)

func TestFakeFiresInOrder(t *testing.T) {
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	f := clocktest.New(start)
	timer := f.NewTimer(3 * time.Second)
	tick := f.NewTicker(time.Second)
	if got := f.Waiters(); got != 2 {
		t.Fatalf("Waiters = %d, want 2", got)
	}
	f.Advance(999 * time.Millisecond)
	select {
	case <-tick.C():
		t.Fatal("the ticker fired before its period")
	default:
	}
	f.Advance(time.Millisecond)
	if got := <-tick.C(); !got.Equal(start.Add(time.Second)) {
		t.Fatalf("tick at %v, want %v", got, start.Add(time.Second))
	}
	f.Advance(2 * time.Second)
	if got := <-timer.C(); !got.Equal(start.Add(3 * time.Second)) {
		t.Fatalf("timer at %v, want %v", got, start.Add(3*time.Second))
	}
	if got := f.Waiters(); got != 1 {
		t.Fatalf("Waiters after the timer fired = %d, want 1 (the ticker)", got)
	}
	if timer.Reset(time.Second) {
		t.Error("Reset of a fired timer reported it armed")
	}
	if !timer.Stop() {
		t.Error("Stop of an armed timer reported it idle")
	}
	tick.Stop()
	if got := f.Waiters(); got != 0 {
		t.Fatalf("Waiters after Stop = %d, want 0", got)
	}
	if got := f.Now(); !got.Equal(start.Add(3 * time.Second)) {
		t.Fatalf("Now = %v, want %v", got, start.Add(3*time.Second))
	}
}

func TestFakeNextAndOnAdvance(t *testing.T) {
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	f := clocktest.New(start)
	if _, ok := f.Next(); ok {
		t.Fatal("Next with nothing armed reported a deadline")
	}
	var seen []time.Duration
	var timerAt time.Duration // what the hook saw when the timer had fired
	timer := f.NewTimer(3 * time.Second)
	f.OnAdvance(func(now time.Time) {
		seen = append(seen, now.Sub(start))
		select {
		case <-timer.C():
			timerAt = now.Sub(start)
		default:
		}
	})
	tick := f.NewTicker(2 * time.Second)
	defer tick.Stop()
	if next, ok := f.Next(); !ok || !next.Equal(start.Add(2*time.Second)) {
		t.Fatalf("Next = %v, %v; want the ticker's first deadline", next, ok)
	}
	f.Advance(5 * time.Second)
	// The hooks see every deadline on the way, before what is due then
	// fires, and the end.
	want := []time.Duration{2 * time.Second, 3 * time.Second, 4 * time.Second, 5 * time.Second}
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Fatalf("OnAdvance saw %v, want %v", seen, want)
	}
	if timerAt != 4*time.Second {
		t.Fatalf("the hook found the 3s timer fired at %v, want at the next stop (4s): it fires after the hook of its own deadline", timerAt)
	}
	if next, _ := f.Next(); !next.Equal(start.Add(6 * time.Second)) {
		t.Fatalf("Next after 5s = %v, want the ticker at 6s", next.Sub(start))
	}
	f.Advance(0)
	if len(seen) != 4 {
		t.Fatalf("Advance(0) called the hooks: %v", seen)
	}
}
