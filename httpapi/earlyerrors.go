package httpapi

import (
	"bytes"
	"crypto/tls"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// net/http answers some requests itself, before any handler runs: headers
// larger than MaxHeaderBytes (431), a malformed request line, header or
// Host (400), an unknown Transfer-Encoding (501), an unsupported HTTP
// version (505). It writes each answer straight to the connection with one
// call, as plain text, in this shape (net/http server.go, conn.serve):
//
//	HTTP/1.1 <code> <text>[: <detail>]\r\n
//	Content-Type: text/plain; charset=utf-8\r\n
//	Connection: close\r\n
//	\r\n
//	<code> <text>[: <detail>]       ("Unsupported transfer encoding" for 501)
//
// and closes the connection. earlyConn recognises exactly that write and
// sends the API's JSON error with the API's headers instead. Any other
// write passes through untouched: a handler's answer carries the headers
// serveHTTP sets and a Date, so it never has this shape. Should a later Go
// write these answers differently, they go out as plain text again and
// TestEarlyErrorsAreJSON fails.
const (
	earlyStatusPrefix = "HTTP/1.1 "
	earlyHeaders      = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
	earlyBody501      = "Unsupported transfer encoding"
)

// earlyListener gives Serve connections that answer net/http's own errors
// as JSON.
type earlyListener struct {
	net.Listener
	s *Server
}

// Accept wraps each connection in an earlyConn. A *tls.Conn is left as it
// is: net/http must see its type to run the TLS handshake and HTTP/2.
func (l earlyListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return c, err
	}
	if _, ok := c.(*tls.Conn); ok {
		return c, nil
	}
	return &earlyConn{Conn: c, s: l.s}, nil
}

// earlyConn is a connection whose error answers written by net/http itself
// are rewritten as JSON (see earlyHeaders), and whose write deadline is
// kept coarse (see SetWriteDeadline).
type earlyConn struct {
	net.Conn
	s *Server

	mu    sync.Mutex // guards armed and asked, and applying clear
	armed time.Time  // the write deadline the connection has; zero: none
	asked time.Time  // the last write deadline asked for that was not zero
	// clear is set when no deadline was asked for while the connection
	// still has one: it is cleared before the next write.
	clear atomic.Bool
}

// writeDeadlineSlack is how much later than net/http asks a connection's
// write deadline may fall.
const writeDeadlineSlack = time.Second

// SetWriteDeadline sets the write deadline to t, coarsely. net/http clears
// the deadline after every answer (t zero) and sets it again, WriteTimeout
// from the request's arrival, when the next request comes; arming and
// disarming the connection's timer twice costs a few percent of a token
// read. So:
//
//   - no deadline is applied lazily, just before the next write, unless a
//     deadline is asked for first (as net/http does before any write);
//   - a deadline is set writeDeadlineSlack late, and a later ask that
//     falls no later than the deadline in force, and within the slack of
//     it, leaves that deadline alone: the requests of the next second do
//     not touch the timer;
//   - a deadline earlier than the last one asked for, a deadline in the
//     past (a way to interrupt a write) and SetDeadline are applied at
//     once, exactly.
//
// A slow reader is still cut off at most writeDeadlineSlack after the
// server's WriteTimeout.
func (c *earlyConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.IsZero() {
		if !c.armed.IsZero() {
			c.clear.Store(true)
		}
		return nil
	}
	if !c.armed.IsZero() && !t.Before(c.asked) && !c.armed.Before(t) && c.armed.Sub(t) <= writeDeadlineSlack {
		c.asked = t
		c.clear.Store(false)
		return nil
	}
	set := t
	if time.Until(t) > 0 {
		set = t.Add(writeDeadlineSlack)
	}
	return c.setWriteDeadline(set, t)
}

// setWriteDeadline gives the connection the write deadline set, asked for
// as t; c.mu is held.
func (c *earlyConn) setWriteDeadline(set, t time.Time) error {
	c.clear.Store(false)
	if err := c.Conn.SetWriteDeadline(set); err != nil {
		c.armed, c.asked = time.Time{}, time.Time{}
		return err
	}
	c.armed, c.asked = set, t
	return nil
}

// SetDeadline sets both deadlines exactly.
func (c *earlyConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clear.Store(false)
	c.armed, c.asked = t, t
	return c.Conn.SetDeadline(t)
}

// clearWriteDeadline applies a pending clear (see SetWriteDeadline).
func (c *earlyConn) clearWriteDeadline() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.clear.Load() {
		return nil
	}
	return c.setWriteDeadline(time.Time{}, time.Time{})
}

// Write sends p, or the JSON answer in place of net/http's plain-text one.
func (c *earlyConn) Write(p []byte) (int, error) {
	if c.clear.Load() {
		if err := c.clearWriteDeadline(); err != nil {
			return 0, err
		}
	}
	status, detail, ok := parseEarlyAnswer(p)
	if !ok {
		return c.Conn.Write(p)
	}
	c.s.metrics.unmatched.count(status)
	c.s.log.Debug("httpapi: request refused before routing", "status", status, "detail", detail, "remote", c.RemoteAddr().String())
	if _, err := c.Conn.Write(c.s.earlyAnswer(status, detail, time.Now())); err != nil {
		return 0, err
	}
	return len(p), nil
}

// CloseWrite half-closes the connection when it can, as net/http does
// after a 431 so that the client reads the answer before the reset.
func (c *earlyConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// parseEarlyAnswer reports whether p is one of net/http's own error
// answers, with its status and the detail net/http gave ("malformed Host
// header"; empty when none). net/http's details are fixed strings that never
// hold request input.
func parseEarlyAnswer(p []byte) (status int, detail string, ok bool) {
	rest, ok := bytes.CutPrefix(p, []byte(earlyStatusPrefix))
	if !ok {
		return 0, "", false
	}
	end := bytes.IndexByte(rest, '\r')
	if end < 0 {
		return 0, "", false
	}
	line := rest[:end]
	body, ok := bytes.CutPrefix(rest[end:], []byte(earlyHeaders))
	if !ok || len(line) < 4 || line[3] != ' ' {
		return 0, "", false
	}
	status, err := strconv.Atoi(string(line[:3]))
	if err != nil || status < 400 || status > 599 {
		return 0, "", false
	}
	if !bytes.Equal(body, line) && !(status == http.StatusNotImplemented && string(body) == earlyBody501) {
		return 0, "", false
	}
	_, d, _ := bytes.Cut(line[4:], []byte(": "))
	return status, string(d), true
}

// earlyAnswer is the JSON answer to send for net/http's error answer with
// status and detail: the status line, the headers serveHTTP sets on every
// answer, a Date, and Connection: close, since net/http closes the
// connection after it.
func (s *Server) earlyAnswer(status int, detail string, now time.Time) []byte {
	code, message := statusCode(status), detail
	switch {
	case status == http.StatusRequestHeaderFieldsTooLarge:
		code = "header_too_large"
		message = "request headers too large: at most " + strconv.Itoa(maxHeaderBytes>>10) + " KiB"
	case status == http.StatusBadRequest && detail != "":
		message = "malformed request: " + detail
	case status == http.StatusBadRequest:
		message = "malformed request"
	case status == http.StatusNotImplemented:
		message = "unsupported transfer encoding"
	case message == "":
		message = strings.ToLower(http.StatusText(status))
	}
	body := make([]byte, 0, 128)
	body = append(body, `{"error":{"code":`...)
	body = appendJSONString(body, code)
	body = append(body, `,"message":`...)
	body = appendJSONString(body, message)
	body = append(body, "}}\n"...)

	// The headers in the order net/http writes a handler's: its own
	// sorted, then Date, Content-Length and Connection.
	b := make([]byte, 0, 384+len(body))
	b = append(b, earlyStatusPrefix...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(status)...)
	b = append(b, "\r\nCache-Control: "...)
	b = append(b, noStoreValue[0]...)
	b = append(b, "\r\nContent-Type: "...)
	b = append(b, jsonContentType[0]...)
	b = append(b, "\r\nReferrer-Policy: "...)
	b = append(b, noReferrerValue[0]...)
	b = append(b, "\r\nX-Content-Type-Options: "...)
	b = append(b, nosniffValue[0]...)
	b = append(b, "\r\nX-Frame-Options: "...)
	b = append(b, frameDenyValue[0]...)
	b = append(b, "\r\nX-Tokenkeeper-Instance: "...)
	b = append(b, s.instance...)
	b = append(b, "\r\nDate: "...)
	b = now.UTC().AppendFormat(b, http.TimeFormat)
	b = append(b, "\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, "\r\nConnection: close\r\n\r\n"...)
	return append(b, body...)
}
