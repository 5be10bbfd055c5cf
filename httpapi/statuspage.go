package httpapi

import (
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"net/http"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
)

// statusPage is the fleet's status page: one self-contained HTML file,
// served at GET /status when admin keys are configured.
//
// The page holds no data, so it is served to anyone; what it shows comes
// from GET /v1/status, which it calls with an admin key that the operator
// types into the page once. The key is kept in the tab's sessionStorage
// (gone when the tab closes) and sent only as "Authorization: Bearer" to
// this origin. For kiosks and scripts the key may be handed over in the
// URL fragment (/status#key=...), which browsers never send to the server;
// the page moves it to sessionStorage and clears it from the address bar.
//
// A strict Content-Security-Policy allows only the page's own inline
// script and style (by hash), fetches to this origin, and no framing.
// The page writes what the answer holds (replica ids, token names, error
// messages) with textContent only, never as HTML; the policy also
// requires Trusted Types for every HTML sink (innerHTML and the like) and
// allows no policy to make them, so a browser that knows Trusted Types
// (Chromium) refuses any such write outright.
//
// With a catalog the answer lists every token (Status.Tokens), and the
// page shows them in a table above the cards, which then describe the
// first token.
//
//go:embed status.html
var statusPage []byte

// statusPageHeaders are the headers of the status page, computed once.
var statusPageHeaders = map[string][]string{
	"Content-Type":            {"text/html; charset=utf-8"},
	"Content-Security-Policy": {statusPageCSP()},
	"X-Frame-Options":         {"DENY"},
	"Referrer-Policy":         {"no-referrer"},
}

// statusPageCSP allows the page's one inline script and one inline style
// by their SHA-256, and nothing else but requests to this origin.
func statusPageCSP() string {
	hash := func(open, close string) string {
		page := string(statusPage)
		i := strings.Index(page, open)
		j := strings.Index(page, close)
		if i < 0 || j < i {
			panic("httpapi: status.html lacks " + open + "..." + close)
		}
		sum := sha256.Sum256([]byte(page[i+len(open) : j]))
		return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
	}
	return strings.Join([]string{
		"default-src 'none'",
		"script-src " + hash("<script>", "</script>"),
		"style-src " + hash("<style>", "</style>"),
		"connect-src 'self'",
		"img-src data:",
		"base-uri 'none'",
		"form-action 'none'",
		"frame-ancestors 'none'",
		"require-trusted-types-for 'script'",
		"trusted-types 'none'",
	}, "; ")
}

// getStatusPage answers GET /status with the page.
func (s *Server) getStatusPage(c echo.Context, _ time.Time) error {
	h := c.Response().Header()
	for k, v := range statusPageHeaders {
		h[k] = v
	}
	c.Response().WriteHeader(http.StatusOK)
	_, err := c.Response().Write(statusPage)
	return err
}
