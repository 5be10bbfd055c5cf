package httpapi_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/clock"
	"github.com/tokenkeeper/tokenkeeper/httpapi"
	"github.com/tokenkeeper/tokenkeeper/internal/clocktest"
)

// BenchmarkGuessesPerAddress measures how fast one client address learns
// whether keys are right, with the default throttling. A guess counts when
// its answer tells: 401 or a too_many_failures 429 (a valid key never gets
// either). Before keys had to be strong, a throttled address got 429 for
// the right key too, so only 401s counted.
//
// sequential: one guess at a time, each sent when the last was answered
// (1 ms round trip), over 10 minutes of fake time: the delays bound it.
// parallel: 16 guesses per CPU at once, in real time: what bounds it is
// the replica's speed at refusing, since failures past those allowed to
// wait (4) are refused at once; the keys' 128 bits are what make that rate
// harmless.
func BenchmarkGuessesPerAddress(b *testing.B) {
	newSrv := func(c clock.Clock) http.Handler {
		tokens := &fakeTokens{}
		tokens.set(cache.Token{Value: tokenValue, Deadline: t0.Add(100 * time.Hour)}, true)
		srv, err := httpapi.New(httpapi.Config{ReaderKeys: []string{readerKey}, Clock: c, Registerer: prometheus.NewRegistry()}, httpapi.Single(tokens), nil)
		if err != nil {
			b.Fatal(err)
		}
		return srv.Handler()
	}
	told := func(code int) bool { return code == http.StatusUnauthorized || code == http.StatusTooManyRequests }
	guess := func(h http.Handler, i int) int {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, request("198.51.100.7:4000", "", "guess-"+strconv.Itoa(i)))
		return w.Code
	}
	b.Run("sequential", func(b *testing.B) {
		const span = 10 * time.Minute
		var informative int
		for range b.N {
			clk := clocktest.New(t0)
			h := newSrv(clk)
			informative = 0
			for i := 0; clk.Now().Sub(t0) < span; i++ {
				done := make(chan int, 1)
				go func() { done <- guess(h, i) }()
				var code int
			wait:
				for {
					select {
					case code = <-done:
						break wait
					default:
					}
					if next, ok := clk.Next(); ok {
						clk.Advance(next.Sub(clk.Now()))
					}
					time.Sleep(10 * time.Microsecond)
				}
				if told(code) {
					informative++
				}
				clk.Advance(time.Millisecond) // the round trip
			}
		}
		b.ReportMetric(float64(informative)/span.Seconds(), "guesses/s")
	})
	b.Run("parallel", func(b *testing.B) {
		// 64 guessers for 2 s of real time; a guess still waiting then is
		// abandoned (its request's context ends), as a guesser would.
		const guessers, span = 64, 2 * time.Second
		var informative, n atomic.Int64
		for range b.N {
			h := newSrv(nil)
			ctx, cancel := context.WithTimeout(context.Background(), span)
			var wg sync.WaitGroup
			for range guessers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for ctx.Err() == nil {
						w := httptest.NewRecorder()
						h.ServeHTTP(w, request("198.51.100.7:4000", "", "guess-"+strconv.Itoa(int(n.Add(1)))).WithContext(ctx))
						if code := w.Code; ctx.Err() == nil && told(code) {
							informative.Add(1)
						}
					}
				}()
			}
			wg.Wait()
			cancel()
		}
		secs := float64(b.N) * span.Seconds()
		b.ReportMetric(float64(n.Load())/secs, "requests/s")
		b.ReportMetric(float64(informative.Load())/secs, "guesses/s")
	})
}
