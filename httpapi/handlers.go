package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// getToken answers GET /v1/tokens/:name. The key is checked before the
// name, so that without a key no name can be told from another.
func (s *Server) getToken(c echo.Context, now time.Time) error {
	if err := s.authorize(c.Request(), grantReader|grantAdmin, s.anonymous); err != nil {
		return err
	}
	if c.Param("name") != tokenName {
		return errUnknownToken
	}
	tok, ok := s.tokens.Current()
	// Current promises a servable token; refusing one past its deadline
	// as well costs a comparison and keeps invariant 2 local.
	if !ok || tok.Value == "" || !now.Before(tok.Deadline) {
		return errNoToken
	}
	bp := getBuf()
	b := append((*bp)[:0], s.tokenHead(tok.Value, tok.Deadline)...)
	b = strconv.AppendInt(b, expiresIn(tok.Deadline, now), 10)
	b = append(b, "}\n"...)
	s.writeJSON(c, http.StatusOK, b)
	*bp = b
	putBuf(bp)
	s.metrics.reads.Inc()
	return nil
}

// encodedToken is the token route's answer for one token up to
// expires_in's value, which is all of it that changes between reads.
type encodedToken struct {
	value    string
	deadline time.Time
	head     []byte // read-only once stored
}

// tokenHead returns the token route's answer for value and deadline up to
// expires_in's value. The token changes about once an hour, so it is
// encoded once per token and shared by the reads that follow.
func (s *Server) tokenHead(value string, deadline time.Time) []byte {
	if e := s.encoded.Load(); e != nil && e.value == value && e.deadline.Equal(deadline) {
		return e.head
	}
	e := &encodedToken{value: value, deadline: deadline}
	e.head = appendTokenJSON(nil, tokenName, value, deadline)
	s.encoded.Store(e) // a racing store is harmless: each read uses the answer it checked or built
	return e.head
}

// getHealth answers GET /healthz: the process runs.
func (s *Server) getHealth(c echo.Context, _ time.Time) error {
	s.writeJSON(c, http.StatusOK, healthyBody)
	return nil
}

// getReady answers GET /readyz: 200 only while a servable token is held.
func (s *Server) getReady(c echo.Context, now time.Time) error {
	if s.draining.Load() {
		return errNotReady
	}
	if tok, ok := s.tokens.Current(); !ok || tok.Value == "" || !now.Before(tok.Deadline) {
		return errNotReady
	}
	s.writeJSON(c, http.StatusOK, readyBody)
	return nil
}

// metricsHandler answers GET /metrics with the Gatherer's metrics, behind a
// metrics or admin key when metrics keys are configured.
func (s *Server) metricsHandler() handlerFunc {
	h := promhttp.HandlerFor(s.gatherer, promhttp.HandlerOpts{
		ErrorLog:      promLogger{s.log},
		ErrorHandling: promhttp.ContinueOnError,
	})
	open := len(s.metricsKeys) == 0
	return func(c echo.Context, _ time.Time) error {
		if !open {
			if err := s.authorize(c.Request(), grantMetrics|grantAdmin, false); err != nil {
				return err
			}
		}
		h.ServeHTTP(c.Response(), c.Request())
		return nil
	}
}

// promLogger passes promhttp's gathering errors to the server's log.
type promLogger struct{ log *slog.Logger }

func (l promLogger) Println(v ...any) {
	l.log.Warn("httpapi: gathering metrics", "err", fmt.Sprint(v...))
}

// getStatus answers GET /v1/status (admin key).
func (s *Server) getStatus(c echo.Context, _ time.Time) error {
	if err := s.authorize(c.Request(), grantAdmin, false); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Request().Context(), s.refreshTimeout)
	defer cancel()
	st, err := s.ctl.Status(ctx)
	if err != nil {
		return s.controlError(c.Request().Context(), ctx, "status", err)
	}
	if st.Instance == "" {
		st.Instance = s.instance
	}
	st.ExpiresIn = 0
	if !st.ExpiresAt.IsZero() {
		st.ExpiresIn = expiresIn(st.ExpiresAt, s.now())
		st.ExpiresAt = expiresAt(st.ExpiresAt)
	}
	st.LastRefresh = utc(st.LastRefresh)
	st.NextRefresh = utc(st.NextRefresh)
	st.fleetUTC()
	st.GeneratedAt = utc(s.now())
	body, err := json.Marshal(st)
	if err != nil {
		return err
	}
	s.writeJSON(c, http.StatusOK, append(body, '\n'))
	return nil
}

// utc is t in UTC to the millisecond, without a monotonic reading; zero
// stays zero.
func utc(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.UTC().Truncate(time.Millisecond)
}

// postRefresh answers POST /v1/tokens/:name/refresh (admin key): it asks the
// leader for a new token and waits for it up to RefreshTimeout. The answer
// names the new token's expiry and fingerprint, never the token.
func (s *Server) postRefresh(c echo.Context, _ time.Time) error {
	if err := s.authorize(c.Request(), grantAdmin, false); err != nil {
		return err
	}
	if c.Param("name") != tokenName {
		return errUnknownToken
	}
	reqCtx := c.Request().Context()
	ctx, cancel := context.WithTimeout(reqCtx, s.refreshTimeout)
	defer cancel()
	tok, err := s.ctl.Refresh(ctx)
	if err != nil {
		return s.controlError(reqCtx, ctx, "refresh", err)
	}
	s.log.Debug("httpapi: refresh done", "fingerprint", tok.Fingerprint(), "deadline", tok.Deadline)
	bp := getBuf()
	b := append((*bp)[:0], `{"name":`...)
	b = appendJSONString(b, tokenName)
	b = append(b, `,"fingerprint":`...)
	b = appendJSONString(b, tok.Fingerprint())
	b = appendExpiresAt(b, tok.Deadline)
	b = strconv.AppendInt(b, expiresIn(tok.Deadline, s.now()), 10)
	b = append(b, "}\n"...)
	s.writeJSON(c, http.StatusOK, b)
	*bp = b
	putBuf(bp)
	return nil
}

// controlError maps a Controller failure of op to an answer. reqCtx is the
// request's own context and ctx the one bounded by RefreshTimeout that the
// Controller got, to tell our timeout from the request ending.
func (s *Server) controlError(reqCtx, ctx context.Context, op string, err error) error {
	switch {
	case reqCtx.Err() != nil:
		s.log.Debug("httpapi: request ended during "+op, "err", err)
		return errShuttingDown
	case ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded):
		s.log.Warn("httpapi: "+op+" timed out", "timeout", s.refreshTimeout, "err", err)
		return &apiError{
			status: http.StatusGatewayTimeout, code: "timeout",
			message: op + " did not finish within " + s.refreshTimeout.String() + "; it may still complete",
		}
	case errors.Is(err, ErrUnavailable):
		s.log.Warn("httpapi: "+op+" unavailable", "err", err)
		return &apiError{status: http.StatusServiceUnavailable, code: "unavailable", message: err.Error(), retryAfter: true}
	case op == "status":
		s.log.Warn("httpapi: status failed", "err", err)
		return &apiError{status: http.StatusInternalServerError, code: "status_failed", message: err.Error()}
	default:
		s.log.Warn("httpapi: refresh failed", "err", err)
		return &apiError{status: http.StatusBadGateway, code: "refresh_failed", message: err.Error()}
	}
}
