package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tokenkeeper/tokenkeeper/internal/fault"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// getToken answers GET /v1/tokens/:name on echo's route, for the token
// reads readToken leaves to echo (an escaped path, a body).
func (s *Server) getToken(c echo.Context, now time.Time) error {
	var status int
	return s.serveToken(c.Response(), c.Request(), c.Param("name"), now, &status)
}

// getDeviceToken answers GET /v1/tokens/:name/devices/*:
// {"name","device","token","expires_at","expires_in"} for the device.
func (s *Server) getDeviceToken(c echo.Context, now time.Time) error {
	t := s.catalog.byName[c.Param("name")]
	w, err := s.authorizeWho(c.Request(), grantReader|grantAdmin, s.anonymous, t, now)
	if err != nil {
		return err
	}
	if t.Devices == nil {
		return errNotPerDevice
	}
	dev := c.Param("*")
	caller := w.name
	if caller == "" {
		caller = "anonymous"
	}
	tok, err := t.Devices.Token(context.WithValue(c.Request().Context(), callerKey{}, caller), dev)
	var limited *LimitError
	switch {
	case errors.As(err, &limited):
		secs := int64((limited.RetryAfter + time.Second - 1) / time.Second)
		return &apiError{status: http.StatusTooManyRequests, code: "rate_limited", message: limited.Reason,
			retryAfter: true, retryAfterValue: []string{strconv.FormatInt(max(secs, 1), 10)}}
	case errors.Is(err, fault.ErrBadDevice):
		return &apiError{status: http.StatusBadRequest, code: "bad_device", message: strings.TrimPrefix(err.Error(), fault.ErrBadDevice.Error()+": ")}
	case c.Request().Context().Err() != nil:
		return errShuttingDown
	case err != nil:
		s.log.Warn("httpapi: no device token", "token", t.Name, "err", err)
		return &apiError{status: http.StatusServiceUnavailable, code: "no_token", message: "no token can be minted for this device now; retry shortly", retryAfter: true}
	case tok.Value == "" || !now.Before(tok.Deadline):
		return errNoToken
	}
	b := append([]byte(`{"name":`), appendJSONString(nil, t.Name)...)
	b = append(b, `,"device":`...)
	b = appendJSONString(b, dev)
	b = append(b, `,"token":`...)
	b = appendJSONString(b, tok.Value)
	b = appendExpiresAt(b, tok.Deadline)
	b = strconv.AppendInt(b, expiresIn(tok.Deadline, now), 10)
	b = append(b, "}\n"...)
	s.writeJSON(c, http.StatusOK, b)
	s.metrics.reads.Inc()
	s.guard.audit.read(s.guard, c.Request(), w.name, t, tok, true, now)
	return nil
}

// listed is one token in GET /v1/tokens: never its value.
type listed struct {
	Name      string    `json:"name"`
	Ready     bool      `json:"ready"`
	Required  bool      `json:"required"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	ExpiresIn int64     `json:"expires_in"`
}

// listTokens answers GET /v1/tokens: the tokens the key may read, with
// whether this replica may serve each now and until when; never a value.
func (s *Server) listTokens(c echo.Context, now time.Time) error {
	w := s.authenticate(c.Request().Header, grantReader|grantAdmin)
	if err := s.admit(c.Request(), &w, grantReader|grantAdmin, s.anonymous, now); err != nil {
		return err
	}
	out := struct {
		Tokens []listed `json:"tokens"`
	}{Tokens: make([]listed, 0, len(s.catalog.order))}
	for _, t := range s.catalog.order {
		if w.g != 0 && !w.allows(grantReader|grantAdmin, t.index) {
			continue
		}
		l := listed{Name: t.Name, Required: !t.Optional}
		if tok, ok := t.current(now); ok {
			l.Ready, l.ExpiresAt, l.ExpiresIn = true, expiresAt(tok.Deadline), expiresIn(tok.Deadline, now)
		}
		out.Tokens = append(out.Tokens, l)
	}
	body, err := json.Marshal(out)
	if err != nil {
		return err
	}
	s.writeJSON(c, http.StatusOK, append(body, '\n'))
	return nil
}

// getHealth answers GET /healthz: the process runs.
func (s *Server) getHealth(c echo.Context, _ time.Time) error {
	s.writeJSON(c, http.StatusOK, healthyBody)
	return nil
}

// getReady answers GET /readyz: 200 while every token that is not
// optional is servable; with ?token=NAME, while that one is. An unknown
// name gets the same 503 as a token not ready: /readyz is open to anyone,
// and must not tell which names exist.
func (s *Server) getReady(c echo.Context, now time.Time) error {
	if s.draining.Load() {
		return errNotReady
	}
	if name := c.QueryParam("token"); name != "" {
		if t := s.catalog.byName[name]; t == nil {
			return errNotReady
		} else if _, ok := t.current(now); !ok {
			return errNotReady
		}
		s.writeJSON(c, http.StatusOK, readyBody)
		return nil
	}
	for _, t := range s.catalog.order {
		if _, ok := t.current(now); !ok && !t.Optional {
			return errNotReady
		}
	}
	s.writeJSON(c, http.StatusOK, readyBody)
	return nil
}

// metricsHandler answers GET /metrics with the Gatherer's metrics, behind a
// metrics or admin key when metrics keys are configured.
func (s *Server) metricsHandler() handlerFunc {
	// OpenMetrics when the scraper asks for it (Prometheus does): the
	// format that carries exemplars, the trace ids of
	// tokenkeeper_refresh_duration_seconds.
	h := promhttp.HandlerFor(s.gatherer, promhttp.HandlerOpts{
		ErrorLog:          promLogger{s.log},
		ErrorHandling:     promhttp.ContinueOnError,
		EnableOpenMetrics: true,
	})
	open := len(s.metricsKeys.digests) == 0
	return func(c echo.Context, now time.Time) error {
		if !open {
			if err := s.authorize(c.Request(), grantMetrics|grantAdmin, false, now); err != nil {
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
func (s *Server) getStatus(c echo.Context, now time.Time) error {
	w := s.authenticate(c.Request().Header, grantAdmin|grantReader)
	if err := s.admit(c.Request(), &w, grantAdmin, false, now); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.Request().Context(), s.refreshTimeout)
	defer cancel()
	st, err := s.ctl.Status(ctx)
	s.guard.audit.admin(s.guard, c.Request(), w.name, "status", "", "", err)
	if err != nil {
		return s.controlError(c.Request().Context(), ctx, "status", err)
	}
	if st.Instance == "" {
		st.Instance = s.instance
	}
	st.scope(w.scopes[1], s.catalog)
	st.ExpiresIn = 0
	if !st.ExpiresAt.IsZero() {
		st.ExpiresIn = expiresIn(st.ExpiresAt, s.now())
		st.ExpiresAt = expiresAt(st.ExpiresAt)
	}
	st.LastRefresh = utc(st.LastRefresh)
	st.NextRefresh = utc(st.NextRefresh)
	st.fleetUTC()
	now = s.now() // after the Controller answered
	st.tokensUTC(now)
	st.GeneratedAt = utc(now)
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
func (s *Server) postRefresh(c echo.Context, now time.Time) error {
	t := s.catalog.byName[c.Param("name")]
	w, err := s.authorizeWho(c.Request(), grantAdmin, false, t, now)
	if err != nil {
		return err
	}
	reqCtx := c.Request().Context()
	ctx, cancel := context.WithTimeout(reqCtx, s.refreshTimeout)
	defer cancel()
	tok, err := s.ctl.Refresh(ctx, t.Name)
	s.guard.audit.admin(s.guard, c.Request(), w.name, "refresh", t.Name, fingerprintOf(tok, err), err)
	if err != nil {
		return s.controlError(reqCtx, ctx, "refresh", err)
	}
	s.log.Debug("httpapi: refresh done", "fingerprint", tok.Fingerprint(), "deadline", tok.Deadline)
	bp := getBuf()
	b := append((*bp)[:0], `{"name":`...)
	b = appendJSONString(b, t.Name)
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
	case errors.Is(err, fault.ErrUnavailable), errors.Is(err, fault.ErrNoLeader):
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
