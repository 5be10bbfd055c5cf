package tokenkeeper_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tokenkeeper/tokenkeeper"
	"github.com/tokenkeeper/tokenkeeper/upstream"
)

// TestValidateNamesTheField: each rule of a Config lives in the front
// door alone (the building blocks trust what it gives them), and each
// problem names the field a command line maps to its own setting.
func TestValidateNamesTheField(t *testing.T) {
	base := func() tokenkeeper.Config {
		return tokenkeeper.Config{RDP: &upstream.Config{}, HTTP: tokenkeeper.HTTPConfig{AllowAnonymous: true}}
	}
	tests := []struct {
		name   string
		change func(*tokenkeeper.Config)
		field  string
		holds  string
	}{
		{"lock TTL too short", func(c *tokenkeeper.Config) { c.LockTTL = 100 * time.Millisecond }, "LockTTL", "at least 300ms"},
		{"poll too often", func(c *tokenkeeper.Config) { c.PollInterval = time.Millisecond }, "PollInterval", "at least 10ms"},
		{"backoff upside down", func(c *tokenkeeper.Config) { c.RetryMin, c.RetryMax = time.Minute, time.Second }, "RetryMax", "RetryMin"},
		{"negative window", func(c *tokenkeeper.Config) { c.RefreshBefore = -time.Second }, "RefreshBefore", "negative"},
		{"handover never", func(c *tokenkeeper.Config) { c.HandoverAfter = -1 }, "HandoverAfter", "at least 1"},
		{"no reader", func(c *tokenkeeper.Config) {
			c.HTTP = tokenkeeper.HTTPConfig{AdminKeys: []string{"x"}, AllowWeakKeys: true}
		}, "HTTP.ReaderKeys", "required"},
		{"bad identity", func(c *tokenkeeper.Config) {
			c.HTTP.Security.Identities = []tokenkeeper.Identity{{Subject: "CN=ok"}, {Subject: "mesh"}}
		}, "HTTP.Security.Identities[1]", "neither CN="},
		{"bad encryption keys", func(c *tokenkeeper.Config) { c.EncryptionKeys = "k1:not-base64!" }, "EncryptionKeys", "not base64"},
		{"bad mode", func(c *tokenkeeper.Config) { c.RedisMode = "ring" }, "RedisMode", "single, sentinel or cluster"},
		{"negative wait", func(c *tokenkeeper.Config) { c.RedisWait.Replicas = -1 }, "RedisWait.Replicas", "negative"},
		{"bad token name", func(c *tokenkeeper.Config) {
			c.Tokens = []tokenkeeper.TokenConfig{{Name: "ok", RDP: &upstream.Config{}}, {Name: "Not-OK", RDP: &upstream.Config{}}}
		}, "Tokens[1].Name", "not a token name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base()
			tt.change(&cfg)
			err := cfg.Validate()
			var fe *tokenkeeper.FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field || !strings.Contains(fe.Problem, tt.holds) {
				t.Fatalf("Validate = %v; want a *FieldError of %s holding %q", err, tt.field, tt.holds)
			}
		})
	}
	if err := base().Validate(); err != nil {
		t.Fatalf("the defaults: %v", err)
	}
}
