package tokenkeeper

// The Keeper's adapters: what the building blocks take (a refresher's
// Source, the HTTP face's minter and controller) made of the Keeper's parts.

import (
	"context"
	"errors"
	"fmt"
	"runtime"

	"github.com/tokenkeeper/tokenkeeper/cache"
	"github.com/tokenkeeper/tokenkeeper/httpapi"
	"github.com/tokenkeeper/tokenkeeper/internal/device"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// accessSource keeps the RDP access token itself, for per-device tokens.
type accessSource struct{ c *upstream.Client }

func (a accessSource) Token(ctx context.Context) (upstream.Token, error) { return a.c.SignOn(ctx) }

// deviceMinter adapts a device.Minter to the HTTP face.
type deviceMinter struct{ m *device.Minter }

func (d deviceMinter) Token(ctx context.Context, dev string) (cache.Token, error) {
	t, err := d.m.Token(device.WithCaller(ctx, httpapi.CallerFrom(ctx)), dev)
	if be := (*device.BudgetError)(nil); errors.As(err, &be) {
		return t, &httpapi.LimitError{Reason: be.Error(), RetryAfter: be.RetryAfter}
	}
	return t, err
}

// controller adapts the Keeper to the HTTP API's admin routes.
type controller struct{ k *Keeper }

func (c controller) Status(ctx context.Context) (httpapi.Status, error) {
	ss, err := c.k.Status(ctx)
	s := ss[0] // the first token's, at the top level as before the catalog
	out := httpapi.Status{
		Instance: s.Instance, Leader: s.Leader, IsLeader: s.IsLeader, Ready: s.Ready,
		TokenFingerprint: s.TokenFingerprint, Generation: s.Generation, ExpiresAt: s.ExpiresAt,
		LastRefresh: s.LastRefresh, NextRefresh: s.NextRefresh, LastError: s.LastError,
		Replicas: apiReplicas(s.Replicas), Refreshes: apiRefreshes(s.Refreshes),
		Build: &httpapi.Build{Version: c.k.cfg.Version, Commit: c.k.cfg.Commit, GoVersion: runtime.Version()},
	}
	if !c.k.cfg.single {
		for _, t := range ss {
			mode := "shared"
			if t.PerDevice {
				mode = "per-device"
			}
			out.Tokens = append(out.Tokens, httpapi.TokenStatus{
				Name: t.Name, Mode: mode, MintsLastMinute: t.Mints, MintsPerMinute: t.MintBudget,
				Required: !t.Optional, Leader: t.Leader, IsLeader: t.IsLeader, Ready: t.Ready,
				TokenFingerprint: t.TokenFingerprint, Generation: t.Generation, ExpiresAt: t.ExpiresAt,
				LastRefresh: t.LastRefresh, NextRefresh: t.NextRefresh, LastError: t.LastError,
				Refreshes: apiRefreshes(t.Refreshes),
			})
		}
	}
	if err != nil {
		// The replica's own view is still worth showing without Redis.
		out.LastError = err.Error()
	}
	return out, nil
}

func (c controller) Refresh(ctx context.Context, name string) (cache.Token, error) {
	kt := c.k.byName[name]
	if kt == nil {
		return cache.Token{}, fmt.Errorf("%w: %q", ErrUnknownToken, name)
	}
	return kt.ref.Refresh(ctx)
}

// apiReplicas turns the refresher's fleet view into the HTTP API's.
func apiReplicas(rs []Replica) []httpapi.Replica {
	out := make([]httpapi.Replica, 0, len(rs))
	for _, r := range rs {
		out = append(out, httpapi.Replica{
			Instance: r.Instance, Version: r.Version, Ready: r.Ready, Leader: r.Leader,
			TokenFingerprint: r.Fingerprint, ExpiresAt: r.ExpiresAt,
			LastEventAt: r.LastEvent, LastEvent: r.LastEventType, SeenAt: r.Seen, Problem: r.Problem,
			Upstream: r.Upstream, UpstreamError: r.UpstreamError,
		})
	}
	return out
}

// apiRefreshes turns the refresher's last attempts into the HTTP API's.
func apiRefreshes(as []Refresh) []httpapi.Refresh {
	out := make([]httpapi.Refresh, 0, len(as))
	for _, a := range as {
		out = append(out, httpapi.Refresh{
			At: a.At, By: a.By, Outcome: a.Outcome,
			DurationSeconds: a.Took.Seconds(), UpstreamSeconds: a.Upstream.Seconds(),
			TokenFingerprint: a.Fingerprint, ExpiresAt: a.ExpiresAt, Error: a.Error,
		})
	}
	return out
}
