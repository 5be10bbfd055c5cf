package main

import (
	"github.com/tokenkeeper/tokenkeeper/httpapi"
	"github.com/tokenkeeper/tokenkeeper/refresher"
)

// apiReplicas turns the refresher's fleet view into the HTTP API's.
func apiReplicas(rs []refresher.Replica) []httpapi.Replica {
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
func apiRefreshes(as []refresher.Attempt) []httpapi.Refresh {
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
