package clocktest_test

import (
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper/clock/clocktest"
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
