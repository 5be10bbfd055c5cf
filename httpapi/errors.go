package httpapi

import (
	"errors"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"
)

// A controller wraps fault.ErrUnavailable or fault.ErrNoLeader (with %w)
// to say that the control plane cannot act now but may soon: the refresh
// and status routes answer them with 503 and Retry-After; other refresh
// failures answer 502.

// apiError is an error answer: its status, its machine-readable code and a
// message for people. Messages never repeat request input.
type apiError struct {
	status     int
	code       string
	message    string
	retryAfter bool // add Retry-After
	// retryAfterValue, when set, is the Retry-After to send instead of
	// the server's.
	retryAfterValue []string
}

func (e *apiError) Error() string { return "httpapi: " + e.code + ": " + e.message }

// The answers the handlers give most; package values, so that returning one
// allocates nothing.
var (
	errUnauthorized = &apiError{
		status: http.StatusUnauthorized, code: "unauthorized",
		message: "a valid API key is required: Authorization: Bearer <key> or X-API-Key: <key>",
	}
	errForbidden = &apiError{
		status: http.StatusForbidden, code: "forbidden",
		message: "this key may not use this endpoint",
	}
	errUnknownToken = &apiError{
		status: http.StatusNotFound, code: "not_found",
		message: "no such token",
	}
	errPerDevice = &apiError{
		status: http.StatusBadRequest, code: "per_device",
		message: "this token is minted per device: GET /v1/tokens/{name}/devices/{device}",
	}
	errNotPerDevice = &apiError{
		status: http.StatusNotFound, code: "not_found",
		message: "this token is the same for every caller: GET /v1/tokens/{name}",
	}
	errNoToken = &apiError{
		status: http.StatusServiceUnavailable, code: "no_token", retryAfter: true,
		message: "this replica holds no servable token; retry shortly",
	}
	errNotReady = &apiError{
		status: http.StatusServiceUnavailable, code: "not_ready", retryAfter: true,
		message: "this replica holds no servable token",
	}
	errRateLimited = &apiError{
		status: http.StatusTooManyRequests, code: "rate_limited", retryAfter: true,
		retryAfterValue: []string{"1"},
		message:         "too many requests with this key; retry after the delay in Retry-After",
	}
	errRouteNotFound = &apiError{
		status: http.StatusNotFound, code: "not_found",
		message: "no such endpoint",
	}
	errMethodNotAllowed = &apiError{
		status: http.StatusMethodNotAllowed, code: "method_not_allowed",
		message: "method not allowed on this endpoint",
	}
	errTooLarge = &apiError{
		status: http.StatusRequestEntityTooLarge, code: "payload_too_large",
		message: "request body too large",
	}
	errInternal = &apiError{
		status: http.StatusInternalServerError, code: "internal",
		message: "internal error",
	}
	errShuttingDown = &apiError{
		status: http.StatusServiceUnavailable, code: "unavailable", retryAfter: true,
		message: "the request ended before the answer was ready (the server may be shutting down)",
	}
)

// toAPIError maps any handler or router error to the answer to give.
// echo's errors keep their status but get our code and message: echo's own
// messages are not ours to vouch for.
func (s *Server) toAPIError(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	var he *echo.HTTPError
	if errors.As(err, &he) {
		switch he.Code {
		case http.StatusNotFound:
			return errRouteNotFound
		case http.StatusMethodNotAllowed:
			return errMethodNotAllowed
		case http.StatusRequestEntityTooLarge:
			return errTooLarge
		}
		if he.Code >= 400 && he.Code <= 599 {
			return &apiError{status: he.Code, code: statusCode(he.Code), message: strings.ToLower(http.StatusText(he.Code))}
		}
	}
	s.log.Error("httpapi: handler failed", "err", err)
	return errInternal
}

// statusCode turns an HTTP status into an error code: "Too Many Requests"
// gives "too_many_requests".
func statusCode(status int) string {
	text := http.StatusText(status)
	if text == "" {
		return "error"
	}
	var b strings.Builder
	for _, r := range strings.ToLower(text) {
		switch {
		case r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			b.WriteRune(r)
		case r == ' ' || r == '-':
			b.WriteByte('_')
		}
	}
	return b.String()
}

// writeError answers err as JSON, unless an answer has already begun.
func (s *Server) writeError(c echo.Context, err error) {
	if c.Response().Committed {
		s.log.Debug("httpapi: error after the answer began", "path", c.Path(), "err", err)
		return
	}
	s.writeErrorTo(c.Response(), c.Path(), err)
}

// writeErrorTo answers err as JSON on w, which has not begun an answer, for
// the route with the path pattern route, and returns the answer's status.
func (s *Server) writeErrorTo(w http.ResponseWriter, route string, err error) int {
	ae := s.toAPIError(err)
	h := w.Header()
	switch {
	case ae.status == http.StatusUnauthorized:
		h["Www-Authenticate"] = wwwAuthenticateValue
	case ae.retryAfterValue != nil:
		h["Retry-After"] = ae.retryAfterValue
	case ae.retryAfter:
		h["Retry-After"] = s.retryAfterValue
	}
	bp := getBuf()
	b := append((*bp)[:0], `{"error":{"code":`...)
	b = appendJSONString(b, ae.code)
	b = append(b, `,"message":`...)
	b = appendJSONString(b, ae.message)
	b = append(b, "}}\n"...)
	s.writeJSONTo(w, route, ae.status, b)
	*bp = b
	putBuf(bp)
	return ae.status
}

// routerError is the echo HTTPErrorHandler. The route handlers answer their
// own errors, so it sees those of the router (unknown routes, 404; known
// routes asked with another method, 405) and of the body limit (413),
// which runs before instrument. Their duration is not recorded.
func (s *Server) routerError(err error, c echo.Context) {
	s.writeError(c, err)
	rm := s.metrics.unmatched
	if he, ok := errors.AsType[*echo.HTTPError](err); !ok || he.Code != http.StatusNotFound {
		if known, ok := s.metrics.routes[c.Path()]; ok {
			rm = known
		}
	}
	rm.count(c.Response().Status)
}
