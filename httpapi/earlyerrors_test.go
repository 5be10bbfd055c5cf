package httpapi_test

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// serveRaw runs ev's server with Serve on 127.0.0.1:0 until the test ends
// and returns its address.
func serveRaw(t *testing.T, ev *env) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ev.srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String()
}

// exchange writes raw to addr on a connection of its own and returns
// everything the server answers until it closes the connection.
func exchange(t *testing.T, addr, raw string) []byte {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatalf("write request: %v", err)
	}
	got, err := io.ReadAll(conn)
	if err != nil && len(got) == 0 {
		t.Fatalf("read answer: %v", err)
	}
	return got
}

// TestEarlyErrorsAreJSON sends requests that net/http itself refuses before
// any handler runs, over raw TCP to Serve, and checks that every answer is
// the API's JSON error with the API's headers.
func TestEarlyErrorsAreJSON(t *testing.T) {
	ev := newEnv(t, nil)
	addr := serveRaw(t, ev)
	const marker = "evil-input-7d1c" // never echoed back
	tests := []struct {
		name    string
		raw     string
		status  int
		code    string
		message string // the message holds it
	}{
		{"oversized header", "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + marker + strings.Repeat("a", 32<<10) + "\r\n\r\n",
			431, "header_too_large", "too large"},
		{"many headers", "GET /healthz HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X-"+marker+": 0123456789abcdef0123456789\r\n", 1000) + "\r\n",
			431, "header_too_large", "too large"},
		{"malformed request line", marker + "\r\n\r\n", 400, "bad_request", "malformed request"},
		{"no version", "GET /" + marker + "\r\n\r\n", 400, "bad_request", "malformed request"},
		{"bad path escape", "GET /v1/tokens/%zz" + marker + " HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request", "malformed request"},
		{"missing Host", "GET /healthz HTTP/1.1\r\n\r\n", 400, "bad_request", "missing required Host header"},
		{"malformed Host", "GET /healthz HTTP/1.1\r\nHost: " + marker + "/\\\r\n\r\n", 400, "bad_request", "malformed Host header"},
		{"header without colon", "GET /healthz HTTP/1.1\r\nHost: x\r\n" + marker + "\r\n\r\n", 400, "bad_request", "malformed request"},
		{"control character in header", "GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: " + marker + "\x01\r\n\r\n", 400, "bad_request", "malformed request"},
		{"unsupported transfer encoding", "POST /v1/tokens/liveness/refresh HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: " + marker + "\r\n\r\n",
			501, "not_implemented", "unsupported transfer encoding"},
		{"unsupported version", "GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505, "http_version_not_supported", "unsupported protocol version"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw := exchange(t, addr, tt.raw)
			res, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), nil)
			if err != nil {
				t.Fatalf("read answer %q: %v", raw, err)
			}
			body, err := io.ReadAll(res.Body)
			if err != nil {
				t.Fatalf("read body of %q: %v", raw, err)
			}
			if got, want := res.StatusCode, tt.status; got != want {
				t.Fatalf("status = %d, want %d (answer %q)", got, want, raw)
			}
			for _, h := range []struct{ name, want string }{
				{"Content-Type", "application/json"},
				{"Content-Length", strconv.Itoa(len(body))},
				{"X-Tokenkeeper-Instance", "replica-1"},
				{"X-Content-Type-Options", "nosniff"},
				{"X-Frame-Options", "DENY"},
				{"Referrer-Policy", "no-referrer"},
				{"Cache-Control", "no-store"},
			} {
				if got := res.Header.Values(h.name); len(got) != 1 || got[0] != h.want {
					t.Errorf("%s = %q, want [%q]", h.name, got, h.want)
				}
			}
			if !res.Close || !bytes.Contains(raw, []byte("\r\nConnection: close\r\n")) {
				t.Errorf("answer %q does not say Connection: close", raw)
			}
			if _, err := http.ParseTime(res.Header.Get("Date")); err != nil {
				t.Errorf("Date = %q: %v", res.Header.Get("Date"), err)
			}
			var eb errorBody
			decodeStrict(t, body, &eb)
			if eb.Error.Code != tt.code {
				t.Errorf("code = %q, want %q", eb.Error.Code, tt.code)
			}
			if !strings.Contains(eb.Error.Message, tt.message) {
				t.Errorf("message = %q, want it to hold %q", eb.Error.Message, tt.message)
			}
			if bytes.Contains(raw, []byte(marker)) {
				t.Errorf("answer repeats the request: %q", raw)
			}
			if !bytes.HasSuffix(raw, body) || !bytes.HasSuffix(body, []byte("}\n")) {
				t.Errorf("answer %q does not end with its JSON body", raw)
			}
		})
	}
	// net/http's own answers are counted like unmatched requests.
	mfs, err := ev.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	counted := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "tokenkeeper_http_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["route"] == "unmatched" {
				counted[labels["code"]] = m.GetCounter().GetValue()
			}
		}
	}
	for code, want := range map[string]float64{"431": 2, "400": 7, "501": 1, "505": 1} {
		if got := counted[code]; got != want {
			t.Errorf(`requests_total{route="unmatched",code=%q} = %v, want %v`, code, got, want)
		}
	}
}

// TestEarlyErrorAfterGoodRequest: on a kept-alive connection, a good
// request's answer is untouched and the malformed request after it is
// answered with JSON.
func TestEarlyErrorAfterGoodRequest(t *testing.T) {
	ev := newEnv(t, nil)
	addr := serveRaw(t, ev)
	raw := exchange(t, addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nBROKEN\r\n\r\n")
	br := bufio.NewReader(bytes.NewReader(raw))
	for _, want := range []struct {
		status      int
		contentType string
		body        string
	}{
		{200, "application/json", `{"status":"ok"}` + "\n"},
		{400, "application/json", `{"error":{"code":"bad_request","message":"malformed request"}}` + "\n"},
	} {
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("read answer (all: %q): %v", raw, err)
		}
		body, _ := io.ReadAll(res.Body)
		if res.StatusCode != want.status || res.Header.Get("Content-Type") != want.contentType || string(body) != want.body {
			t.Errorf("answer = %d %q %q, want %d %q %q", res.StatusCode, res.Header.Get("Content-Type"), body, want.status, want.contentType, want.body)
		}
	}
}

// TestServeLeavesAnswersUntouched compares, byte for byte, the answers
// Serve gives with those of a plain http.Server running the same Handler:
// only net/http's own error answers are rewritten.
func TestServeLeavesAnswersUntouched(t *testing.T) {
	ev := newEnv(t, nil)
	addr := serveRaw(t, ev)
	plainLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	plain := &http.Server{Handler: ev.srv.Handler(), MaxHeaderBytes: 16 << 10}
	go plain.Serve(plainLn)
	t.Cleanup(func() { plain.Close() })

	date := regexp.MustCompile(`(?m)^Date: [^\r]*\r$`)
	for _, raw := range []string{
		"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
		"GET /v1/tokens/liveness HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + readerKey + "\r\nConnection: close\r\n\r\n",
		"GET /v1/tokens/liveness HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
		"GET /v1/tokens/a%2Fb HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + readerKey + "\r\nConnection: close\r\n\r\n",
		"GET /v1/tokens/%FF%FE HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + readerKey + "\r\nConnection: close\r\n\r\n",
		"POST /healthz HTTP/1.0\r\n\r\n",
		"POST /v1/tokens/liveness/refresh HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + adminKey + "\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n" + strings.Repeat("x", 5000),
		"GET /nope HTTP/1.1\r\nHost: x\r\nX-Almost-Too-Big: " + strings.Repeat("a", 15<<10) + "\r\nConnection: close\r\n\r\n",
	} {
		name, _, _ := strings.Cut(raw, "\r\n")
		t.Run(name, func(t *testing.T) {
			got := date.ReplaceAll(exchange(t, addr, raw), []byte("Date: (date)\r"))
			want := date.ReplaceAll(exchange(t, plainLn.Addr().String(), raw), []byte("Date: (date)\r"))
			if !bytes.Equal(got, want) {
				t.Errorf("answer through Serve:\n%q\nwant, as a plain http.Server gives it:\n%q", got, want)
			}
			// Every error answer that reaches the handler is already JSON.
			res, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(got)), nil)
			if err != nil {
				t.Fatalf("read answer %q: %v", got, err)
			}
			if res.StatusCode >= 400 {
				body, _ := io.ReadAll(res.Body)
				if res.Header.Get("Content-Type") != "application/json" {
					t.Errorf("error answer %d has Content-Type %q", res.StatusCode, res.Header.Get("Content-Type"))
				}
				var eb errorBody
				decodeStrict(t, body, &eb)
			}
		})
	}
}
