package httpapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// digestPrefix marks a configured key given as the SHA-256 of the key
// rather than the key itself: "sha256:" and 64 hex digits. Such a key
// matches a request that presents the key whose digest it is.
const digestPrefix = "sha256:"

// grant is the set of roles a presented key holds; a key may hold several.
type grant uint8

const (
	grantReader grant = 1 << iota
	grantAdmin
	grantMetrics
)

// keySet holds the SHA-256 digests of the configured keys of one role,
// each with the tokens it may use.
type keySet struct {
	digests [][sha256.Size]byte
	scopes  []scope  // by digest; nil: every token
	names   []string // by digest: the key's name, or the setting it came from
}

// weakKeysHint ends the error that refuses a weak key.
const weakKeysHint = "weak keys are accepted only for a demo (Config.AllowWeakKeys, TOKENKEEPER_ALLOW_WEAK_KEYS=true)"

// newKeySet digests keys, rejecting those no client could present and,
// with strong, those too weak to resist guessing. env names the setting
// the keys come from, for the message; keys are never quoted.
func newKeySet(env string, keys []string, strong bool) (keySet, error) {
	var ks keySet
	for i, k := range keys {
		d, err := parseKey(k)
		if err != nil {
			return keySet{}, fmt.Errorf("httpapi: %s: key %d of %d %v", env, i+1, len(keys), err)
		}
		if strong {
			if err := CheckKeyStrength(k); err != nil {
				return keySet{}, fmt.Errorf("httpapi: %s: key %d of %d %v; %s", env, i+1, len(keys), err, weakKeysHint)
			}
		}
		ks.add(d, nil, fmt.Sprintf("%s[%d]", env, i))
	}
	return ks, nil
}

func (ks *keySet) add(d [sha256.Size]byte, sc scope, name string) {
	ks.digests = append(ks.digests, d)
	ks.scopes = append(ks.scopes, sc)
	ks.names = append(ks.names, name)
}

// parseKey returns the digest of a configured key, or why no client could
// present it. A key written as digestPrefix and 64 hex digits is taken as
// a digest already.
func parseKey(k string) ([sha256.Size]byte, error) {
	var d [sha256.Size]byte
	switch {
	case k == "":
		return d, errors.New("is empty")
	case strings.TrimSpace(k) != k:
		return d, errors.New("has leading or trailing white space")
	case strings.ContainsFunc(k, func(r rune) bool { return r < 0x20 || r == 0x7f }):
		return d, errors.New("contains a control character")
	}
	hexDigest, ok := strings.CutPrefix(k, digestPrefix)
	if !ok {
		return sha256.Sum256([]byte(k)), nil
	}
	if len(hexDigest) != hex.EncodedLen(sha256.Size) {
		return d, fmt.Errorf("starts with %q but is not followed by 64 hex digits", digestPrefix)
	}
	if _, err := hex.Decode(d[:], []byte(hexDigest)); err != nil {
		return d, fmt.Errorf("starts with %q but is not followed by 64 hex digits", digestPrefix)
	}
	return d, nil
}

// match returns the index of digest among the set's keys, or -1. It
// compares against every key, whatever matches, so the time taken depends
// only on the set's size.
func (ks keySet) match(digest *[sha256.Size]byte) int {
	found := -1
	for i := range ks.digests {
		eq := subtle.ConstantTimeCompare(digest[:], ks.digests[i][:])
		found = subtle.ConstantTimeSelect(eq, i, found)
	}
	return found
}

// credential returns the key a request presents: the token of an
// "Authorization: Bearer <key>" header, else the X-API-Key header.
// presented is true when either header is there, even if unusable
// (another scheme, an empty value): such a request is not anonymous.
func credential(h http.Header) (key string, presented bool) {
	if v := h["Authorization"]; len(v) > 0 {
		presented = true
		const prefix = "Bearer "
		if a := v[0]; len(a) > len(prefix) && strings.EqualFold(a[:len(prefix)], prefix) {
			if key = strings.TrimSpace(a[len(prefix):]); key != "" {
				return key, true
			}
		}
	}
	if v := h["X-Api-Key"]; len(v) > 0 {
		return v[0], true
	}
	return "", presented
}

// who is what a request's key may do.
type who struct {
	g         grant
	scopes    [3]scope // of the matching key, by role: reader, admin, metrics
	name      string   // the matching key's name (the first role's)
	digest    [sha256.Size]byte
	presented bool // a key header, or a certificate of an identity, was there, even if unusable
	identity  bool // a client certificate's identity, not a key
}

// allows reports whether one of the roles in need that the key holds may
// use the token at index.
func (w *who) allows(need grant, index int) bool {
	for i, role := range [...]grant{grantReader, grantAdmin, grantMetrics} {
		if need&w.g&role != 0 && w.scopes[i].allows(index) {
			return true
		}
	}
	return false
}

// authenticate returns the roles among want of the key the request
// presents (none for an unknown key), with their scopes. Only the key
// sets of the roles in want are searched.
func (s *Server) authenticate(h http.Header, want grant) (w who) {
	key, presented := credential(h)
	w.presented = presented
	if key == "" {
		return w
	}
	w.digest = digestOf(key)
	for i, set := range [...]struct {
		role grant
		keys *keySet
	}{{grantReader, &s.readerKeys}, {grantAdmin, &s.adminKeys}, {grantMetrics, &s.metricsKeys}} {
		if want&set.role == 0 {
			continue
		}
		if k := set.keys.match(&w.digest); k >= 0 {
			w.g |= set.role
			w.scopes[i] = set.keys.scopes[k]
			if w.name == "" {
				w.name = set.keys.names[k]
			}
		}
	}
	return w
}

// digestOf is the SHA-256 of key. Keys of usual length are hashed from a
// stack copy: []byte(key) would allocate for anything over 32 bytes.
func digestOf(key string) [sha256.Size]byte {
	var buf [256]byte
	if len(key) <= len(buf) {
		n := copy(buf[:], key)
		return sha256.Sum256(buf[:n])
	}
	return sha256.Sum256([]byte(key))
}

// authorize admits a request whose key holds one of the roles in need and
// has not used up its rate. Without such a key it answers errUnauthorized,
// or errForbidden when the key is a reader or admin key that is not enough
// here; over the rate, errRateLimited. anonymous admits requests that
// present no key at all, limited per client address.
func (s *Server) authorize(r *http.Request, need grant, anonymous bool, now time.Time) error {
	w := s.authenticate(r.Header, need|grantReader|grantAdmin)
	return s.admit(r, &w, need, anonymous, now)
}

// admit decides on a request whose key, if any, is w. Without a key, a
// verified client certificate of a configured identity stands for one.
// A valid key is decided on its own: nobody's failed authentications
// delay or refuse it. An unknown key is a failed authentication, answered
// by the guard (after a delay, or 429, when its client fails often). now is
// the request's time, which the key's rate limit is counted at.
func (s *Server) admit(r *http.Request, w *who, need grant, anonymous bool, now time.Time) error {
	if !w.presented && r.TLS != nil {
		s.guard.identify(r.TLS, w)
	}
	switch {
	case w.g&need != 0:
		return s.limits.allowKey(&w.digest, now)
	case !w.presented && anonymous:
		return s.limits.allowAddr(s.guard.clientAddr(r))
	case w.g != 0:
		return errForbidden
	case w.presented:
		return s.guard.failed(r, w)
	default:
		return errUnauthorized
	}
}

// authorizeWho is authorize for a route of one token, t (nil when the
// name is not kept). A key that may not use t gets the same 404 as for a
// name that does not exist, so that a key cannot learn the names of
// tokens outside its scope. The key is checked before the name: without a
// valid key no name can be told from another. It returns who the key is.
func (s *Server) authorizeWho(r *http.Request, need grant, anonymous bool, t *served, now time.Time) (who, error) {
	w := s.authenticate(r.Header, need|grantReader|grantAdmin)
	if err := s.admit(r, &w, need, anonymous, now); err != nil {
		return w, err
	}
	if t == nil || (w.g&need != 0 && !w.allows(need, t.index)) {
		return w, errUnknownToken
	}
	return w, nil
}

// callerKey carries the name of the key a request presented to Devices.
type callerKey struct{}

// CallerFrom returns the name of the key that asked for a device's token
// (a catalog key's name, TOKENKEEPER_API_KEYS[i] for a key of the
// environment, or "anonymous"), for an audit trail; "" outside such a
// request.
func CallerFrom(ctx context.Context) string {
	name, _ := ctx.Value(callerKey{}).(string)
	return name
}
