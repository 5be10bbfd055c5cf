package refresher

import (
	"context"
	"encoding/json"

	"github.com/tokenkeeper/tokenkeeper/cache"
)

// The refresher's control protocol, carried on the store's events channel
// (cache.Message with this package's content in Body):
//
//	refresh    a replica asks the leader for a new token now (ID)
//	refreshed  the leader answers a request (ID; Fingerprint of the token
//	           stored, or Error; Retry when leadership ended first)
//	released   the leader released the lock on shutdown or handover
//
// A request may be sent again with the same ID; a leader answers it once
// more from what it remembers, and a requester also takes any token
// fetched after it asked as its answer, so a lost message costs a resend.
const (
	msgRefresh   = "refresh"
	msgRefreshed = "refreshed"
	msgReleased  = "released"
)

// message is a control message, decoded.
type message struct {
	Type        string `json:"-"`
	From        string `json:"-"`
	ID          string `json:"id,omitempty"`
	Fingerprint string `json:"fp,omitempty"`
	Error       string `json:"error,omitempty"`
	Retry       bool   `json:"retry,omitempty"`
	// Trace is a W3C traceparent: a request's, the span that asked; an
	// answer's, the attempt that answered it. Each side links to the other.
	Trace string `json:"tp,omitempty"`
}

// decode reads the refresher's content of m; other messages (the store's
// MsgToken) keep their type and fingerprint.
func decode(m cache.Message) message {
	out := message{Type: m.Type, From: m.From, Fingerprint: m.Fingerprint, Trace: m.Trace}
	if len(m.Body) > 0 {
		_ = json.Unmarshal(m.Body, &out) // a malformed body reads as empty
		out.Type, out.From = m.Type, m.From
	}
	return out
}

// sendMsg publishes m on the events channel.
func (r *Refresher) sendMsg(ctx context.Context, m message) error {
	body, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return r.store.Publish(ctx, cache.Message{Type: m.Type, Body: body})
}
