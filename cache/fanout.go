package cache

// The fan-out: messages of the token's channel handed to the store's
// subscribers, without dropping one a subscriber waits for.

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"sync"
)

// Message is a message on the events channel. The store publishes
// MsgToken itself, from the write script, with the token as stored, which
// a replica adopts without reading Redis; any other type is a control
// message of another package (the refresher's protocol), whose content
// the store carries in Body without reading it.
type Message struct {
	// Type is MsgToken or a control message's type.
	Type string `json:"type"`
	// From is the instance that published it.
	From string `json:"from,omitempty"`
	// Fingerprint of the token stored (MsgToken), never the token.
	Fingerprint string `json:"fp,omitempty"`
	// Body is a control message's own content, opaque to the store.
	Body json.RawMessage `json:"body,omitempty"`
	// Trace is the W3C traceparent of the span that sent it, when traced:
	// for MsgToken, the fenced write's.
	Trace string `json:"tp,omitempty"`
}

// MsgToken is the type of the message the write script publishes when it
// stores a token.
const MsgToken = "token"

// Publish sends a control message to every replica, this one included.
func (s *Store) Publish(ctx context.Context, m Message) error {
	if m.From == "" {
		m.From = s.cfg.Instance
	}
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("cache: encode message: %w", err)
	}
	if err := s.events.publish(ctx, s.cfg.Keys.Events, b); err != nil {
		return fmt.Errorf("cache: publish: %w", err)
	}
	return nil
}

// Subscribe starts a subscription to the control messages Run receives.
// No message is dropped: each subscription queues its messages, without
// bound, until they are taken with Next, so a subscriber must keep taking
// them until it calls Close.
func (s *Store) Subscribe() *Subscription {
	sub := &Subscription{s: s, ready: make(chan struct{}, 1)}
	s.mu.Lock()
	s.subs[sub] = struct{}{}
	s.mu.Unlock()
	return sub
}

func (s *Store) broadcast(m Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for sub := range s.subs {
		sub.put(m)
	}
}

// Subscription is one subscriber's queue of control messages, in the order
// Run received them. Wait on Ready, then take messages with Next until it
// reports none. Its methods are safe for concurrent use.
type Subscription struct {
	s     *Store
	ready chan struct{} // holds one token while the queue may be non-empty

	mu     sync.Mutex
	queue  []Message // guarded by mu
	closed bool      // guarded by mu
}

// Ready returns a channel that receives when messages are waiting. One
// receive may stand for many messages: take them all with Next.
func (sub *Subscription) Ready() <-chan struct{} { return sub.ready }

// Next takes the oldest waiting message, or reports false when none waits.
func (sub *Subscription) Next() (Message, bool) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if len(sub.queue) == 0 {
		return Message{}, false
	}
	m := sub.queue[0]
	sub.queue[0] = Message{}
	sub.queue = sub.queue[1:]
	return m, true
}

// Close ends the subscription and drops what it still holds.
func (sub *Subscription) Close() {
	sub.s.mu.Lock()
	delete(sub.s.subs, sub)
	sub.s.mu.Unlock()
	sub.mu.Lock()
	sub.closed, sub.queue = true, nil
	sub.mu.Unlock()
}

func (sub *Subscription) put(m Message) {
	sub.mu.Lock()
	if sub.closed {
		sub.mu.Unlock()
		return
	}
	sub.queue = append(sub.queue, m)
	sub.mu.Unlock()
	select {
	case sub.ready <- struct{}{}:
	default: // a token is already waiting
	}
}
