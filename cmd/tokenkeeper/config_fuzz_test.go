package main

import (
	"errors"
	"io"
	"maps"
	"strings"
	"testing"
)

// FuzzParseServe feeds arbitrary environments to the configuration parser:
// it must never panic, never accept timings that cannot work together,
// and never quote a secret back in its errors.
func FuzzParseServe(f *testing.F) {
	f.Add("TOKENKEEPER_REDIS_URL=redis://localhost:6379/0\nTOKENKEEPER_API_KEYS=k\nRDP_CLIENT_ID=id\nRDP_CLIENT_SECRET=s")
	f.Add("TOKENKEEPER_REDIS_URL=rediss://u:p@h:1/2\nTOKENKEEPER_ALLOW_ANONYMOUS=true\nRDP_AUTH=v1\nRDP_CLIENT_ID=a\nRDP_USERNAME=u\nRDP_PASSWORD=p")
	f.Add("TOKENKEEPER_LOCK_TTL=1ns\nTOKENKEEPER_REFRESH_BEFORE=59m\nTOKENKEEPER_SERVE_MARGIN=1m")
	f.Add("TOKENKEEPER_API_KEYS=,,\nTOKENKEEPER_RATE_LIMIT=NaN\nTOKENKEEPER_ENCRYPTION_KEYS=a:AAAA")
	f.Add("TOKENKEEPER_LISTEN=[::1]:0\nTOKENKEEPER_TOKEN_LIFETIME=9223372036854775807ns")
	f.Add("TOKENKEEPER_REDIS_URL=redis://r\nTOKENKEEPER_API_KEYS=k\nRDP_CLIENT_ID=id\nRDP_CLIENT_SECRET=s\nTOKENKEEPER_SERVE_MARGIN=10s\nRDP_TIMEOUT=10s")
	// A secret that is words of a fixed message, not a quote of it.
	f.Add("TOKENKEEPER_API_KEYS=redis://\nRDP_CLIENT_ID=id")
	f.Fuzz(func(t *testing.T, envText string) {
		env := map[string]string{}
		for _, line := range strings.Split(envText, "\n") {
			if k, v, ok := strings.Cut(line, "="); ok {
				env[k] = v
			}
		}
		noFile := func(string) ([]byte, error) { return nil, errors.New("no files here") }
		parse := func(env map[string]string) (Config, error) {
			return parseServe(nil, func(k string) string { return env[k] }, noFile, io.Discard)
		}
		c, err := parse(env)
		if err != nil {
			for _, k := range []string{"RDP_CLIENT_SECRET", "RDP_PASSWORD", "TOKENKEEPER_API_KEYS", "TOKENKEEPER_ADMIN_KEYS", "TOKENKEEPER_ENCRYPTION_KEYS"} {
				v := env[k]
				if len(v) < 8 || !strings.Contains(err.Error(), v) {
					continue
				}
				// The secret may be words of a fixed message ("redis://"
				// from an example URL). It is quoted only if the error
				// follows it: parsed again with a twin secret, one the
				// parser judges the same way, the error no longer holds it.
				twin := maps.Clone(env)
				twin[k] = twinSecret(v)
				if twin[k] == v {
					continue // no letter or digit to tell the two apart
				}
				if _, err2 := parse(twin); err2 == nil || !strings.Contains(err2.Error(), v) {
					t.Fatalf("error quotes %s: %v", k, err)
				}
			}
			return
		}
		if c.Redis == nil || c.LockTTL <= 0 || c.ServeMargin <= 0 || c.RefreshBefore <= 0 {
			t.Fatalf("accepted a config with a missing or non-positive setting: %+v", c)
		}
		if c.RefreshBefore+c.ServeMargin >= c.TokenLifetime {
			t.Fatalf("accepted refresh window %v + margin %v >= lifetime %v", c.RefreshBefore, c.ServeMargin, c.TokenLifetime)
		}
		if c.ServeMargin <= c.RDP.Timeout {
			t.Fatalf("accepted serve margin %v <= upstream timeout %v", c.ServeMargin, c.RDP.Timeout)
		}
		if len(c.APIKeys) == 0 && !c.AllowAnonymous {
			t.Fatal("accepted no reader keys without anonymous reads")
		}
	})
}

// twinSecret returns s with the case of each ASCII letter swapped and each
// digit moved on by one: another secret of the same length, alphabet,
// number of different characters and structure (separators are kept), so
// the parser accepts or refuses it for the same reasons as s.
func twinSecret(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z':
			return r - 'a' + 'A'
		case r >= 'A' && r <= 'Z':
			return r - 'A' + 'a'
		case r >= '0' && r <= '9':
			return '0' + (r-'0'+1)%10
		}
		return r
	}, s)
}
