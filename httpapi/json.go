package httpapi

import (
	"net/http"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/labstack/echo/v4"
)

// Header values shared by every answer. Assigning a shared slice to the
// header map, rather than calling Header.Set, costs no allocation; the
// slices have no spare capacity, so an Add elsewhere copies instead of
// writing into them.
var (
	jsonContentType      = []string{"application/json"}[:1:1]
	noStoreValue         = []string{"no-store"}[:1:1]
	nosniffValue         = []string{"nosniff"}[:1:1]
	frameDenyValue       = []string{"DENY"}[:1:1]
	noReferrerValue      = []string{"no-referrer"}[:1:1]
	wwwAuthenticateValue = []string{`Bearer realm="tokenkeeper"`}[:1:1]
)

// bufPool holds the buffers answers are built in.
var bufPool = sync.Pool{New: func() any {
	b := make([]byte, 0, 512)
	return &b
}}

func getBuf() *[]byte { return bufPool.Get().(*[]byte) }

func putBuf(bp *[]byte) {
	if cap(*bp) <= 64<<10 { // let an odd, huge answer's buffer go
		bufPool.Put(bp)
	}
}

// writeJSON sends body, which is JSON, with status. A failed write means the
// client went away; there is no one left to tell.
func (s *Server) writeJSON(c echo.Context, status int, body []byte) {
	s.writeJSONTo(c.Response(), c.Path(), status, body)
}

// writeJSONTo is writeJSON for a route outside echo, named by its path
// pattern in the log.
func (s *Server) writeJSONTo(w http.ResponseWriter, route string, status int, body []byte) {
	w.Header()["Content-Type"] = jsonContentType
	w.WriteHeader(status)
	if _, err := w.Write(body); err != nil {
		s.log.Debug("httpapi: write answer", "path", route, "err", err)
	}
}

// appendTokenJSON appends the token route's answer up to the value of
// expires_in, which the caller appends with the closing "}\n":
//
//	{"name":"liveness","token":"...","expires_at":"2006-01-02T15:04:05Z","expires_in":
func appendTokenJSON(b []byte, name, token string, deadline time.Time) []byte {
	b = append(b, `{"name":`...)
	b = appendJSONString(b, name)
	b = append(b, `,"token":`...)
	b = appendJSONString(b, token)
	return appendExpiresAt(b, deadline)
}

// appendExpiresAt appends `,"expires_at":"...","expires_in":`.
func appendExpiresAt(b []byte, deadline time.Time) []byte {
	b = append(b, `,"expires_at":"`...)
	b = expiresAt(deadline).AppendFormat(b, time.RFC3339)
	return append(b, `","expires_in":`...)
}

// expiresAt is deadline in UTC, cut to the whole second (never later than
// the real deadline).
func expiresAt(deadline time.Time) time.Time {
	return deadline.UTC().Truncate(time.Second)
}

// expiresIn is the whole seconds from now to deadline, floored; never
// negative.
func expiresIn(deadline, now time.Time) int64 {
	d := deadline.Sub(now)
	if d <= 0 {
		return 0
	}
	return int64(d / time.Second)
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string. It escapes '"', '\\' and the
// control characters, replaces invalid UTF-8 with U+FFFD and escapes U+2028
// and U+2029 as encoding/json does; it does not escape HTML.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// Constant answers.
var (
	healthyBody = []byte(`{"status":"ok"}` + "\n")
	readyBody   = []byte(`{"status":"ready"}` + "\n")
)
