package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// echo serves, on a loopback port, a target that sends every line back.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// start runs a proxy to target on a loopback port until the test ends.
func start(t *testing.T, target string) (*Proxy, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := New(target, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return p, ln.Addr().String()
}

// roundTrip sends line through c and returns the answer and how long it took.
func roundTrip(t *testing.T, c net.Conn, r *bufio.Reader, line string) (string, time.Duration) {
	t.Helper()
	began := time.Now()
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		t.Fatal(err)
	}
	got, err := r.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSuffix(got, "\n"), time.Since(began)
}

func TestProxyHoldsAnswers(t *testing.T) {
	p, addr := start(t, echo(t))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)

	if got, _ := roundTrip(t, c, r, "off"); got != "off" {
		t.Errorf("answer %q, want %q", got, "off")
	}
	const delay = 150 * time.Millisecond
	if err := p.SetLatency(Latency{Min: delay, Max: delay}); err != nil {
		t.Fatal(err)
	}
	got, took := roundTrip(t, c, r, "on")
	if got != "on" || took < delay {
		t.Errorf("with latency %v: answer %q after %v, want %q after at least %v", delay, got, took, "on", delay)
	}
	s, _ := p.Stats()
	if s.Conns != 1 || s.Delayed != 1 || s.Longest != delay {
		t.Errorf("stats %+v, want 1 connection, 1 chunk held for %v", s, delay)
	}
}

func TestProxyKeepsOrder(t *testing.T) {
	p, addr := start(t, echo(t))
	if err := p.SetLatency(Latency{Max: 40 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	var want strings.Builder
	for i := range 20 {
		line := strings.Repeat(string(rune('a'+i)), 3) + "\n"
		want.WriteString(line)
		if _, err := io.WriteString(c, line); err != nil {
			t.Fatal(err)
		}
	}
	got := make([]byte, want.Len())
	if _, err := io.ReadFull(r, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != want.String() {
		t.Errorf("got %q, want %q in order", got, want.String())
	}
}

func TestControlAPI(t *testing.T) {
	p := New("127.0.0.1:1", slog.New(slog.DiscardHandler))
	srv := httptest.NewServer(p.Handler())
	defer srv.Close()
	put := func(body string) (int, statsJSON) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPut, srv.URL+"/latency", strings.NewReader(body))
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var s statsJSON
		if resp.StatusCode == http.StatusOK {
			if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
				t.Fatal(err)
			}
		}
		return resp.StatusCode, s
	}
	tests := []struct {
		name, body string
		status     int
		min, max   string
	}{
		{"range", `{"min":"150ms","max":"400ms"}`, http.StatusOK, "150ms", "400ms"},
		{"off", `{"min":"0s","max":"0s"}`, http.StatusOK, "0s", "0s"},
		{"max below min", `{"min":"2s","max":"1s"}`, http.StatusBadRequest, "", ""},
		{"negative", `{"min":"-1s","max":"1s"}`, http.StatusBadRequest, "", ""},
		{"not a duration", `{"min":"slow","max":"1s"}`, http.StatusBadRequest, "", ""},
		{"not JSON", `150ms`, http.StatusBadRequest, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, s := put(tt.body)
			if status != tt.status || s.Min != tt.min || s.Max != tt.max {
				t.Errorf("PUT %s: got %d min %q max %q, want %d min %q max %q", tt.body, status, s.Min, s.Max, tt.status, tt.min, tt.max)
			}
		})
	}
}
