// Package testkit holds what the project's tests share: waiting for a
// condition, a buffer that goroutines may write to while a test reads it,
// a registry whose metrics a test reads with prometheus/testutil
// (Metrics), and the driver that runs loops on fake time without a sleep
// (Timeline, on clock/clocktest's clock).
package testkit

import (
	"bytes"
	"sync"
	"testing"
	"time"
)

// Eventually polls cond every few milliseconds until it holds, and fails
// the test when within passes first. It returns how long it waited. It
// waits for a condition, never for time to pass: within only bounds a
// test that would otherwise hang.
func Eventually(t testing.TB, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(2 * time.Millisecond)
	}
	return time.Since(start)
}

// Buffer is a bytes.Buffer safe for concurrent writers and readers: logs
// of a replica under test, output of a child process.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer // guarded by mu
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns what was written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
