package tokenkeeper_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokenkeeper/tokenkeeper"
)

type nopSource struct{}

func (nopSource) Token(context.Context) (tokenkeeper.UpstreamToken, error) {
	return tokenkeeper.UpstreamToken{}, nil
}

// New checks the Redis client's timeouts against the lock TTL itself, so
// that no embedder needs a helper to tune them.
func TestNewChecksRedisTimeouts(t *testing.T) {
	tests := []struct {
		name    string
		opt     redis.Options
		lockTTL time.Duration
		want    string // "" for accepted
	}{
		{"go-redis defaults, default TTL", redis.Options{}, 0, ""},
		{"go-redis defaults, short TTL", redis.Options{}, 2 * time.Second, "is longer than half of LockTTL (1s)"},
		{"long write timeout", redis.Options{ReadTimeout: time.Second, WriteTimeout: 6 * time.Second}, 0, "Redis: WriteTimeout 6s is longer than half of LockTTL (5s)"},
		{"no read timeout", redis.Options{ReadTimeout: -1}, 0, "Redis: ReadTimeout is off"},
		{"context deadlines honoured", redis.Options{ReadTimeout: -1, ContextTimeoutEnabled: true}, 2 * time.Second, ""},
		{"tuned", redis.Options{ReadTimeout: time.Second, WriteTimeout: time.Second}, 2 * time.Second, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opt := tt.opt
			opt.Addr = "127.0.0.1:1" // never dialled: New makes no call
			rdb := redis.NewClient(&opt)
			defer rdb.Close()
			_, err := tokenkeeper.New(tokenkeeper.Config{Redis: rdb, Source: nopSource{}, LockTTL: tt.lockTTL,
				HTTP: tokenkeeper.HTTPConfig{AllowAnonymous: true}})
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("New: %v, want accepted", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("New: %v, want an error containing %q", err, tt.want)
			}
		})
	}
}
