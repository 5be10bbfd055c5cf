package httpapi

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net/http"
	"strings"
)

// DigestPrefix marks a configured key given as the SHA-256 of the key
// rather than the key itself: "sha256:" and 64 hex digits. Such a key
// matches a request that presents the key whose digest it is.
const DigestPrefix = "sha256:"

// grant is the set of roles a presented key holds; a key may hold several.
type grant uint8

const (
	grantReader grant = 1 << iota
	grantAdmin
	grantMetrics
)

// keySet holds the SHA-256 digests of the configured keys of one kind.
type keySet [][sha256.Size]byte

// newKeySet digests keys, rejecting those no client could present. A key
// written as DigestPrefix and 64 hex digits is taken as a digest already.
// env names the setting the keys come from, for the message; keys are
// never quoted.
func newKeySet(env string, keys []string) (keySet, error) {
	ks := make(keySet, 0, len(keys))
	for i, k := range keys {
		switch {
		case k == "":
			return nil, fmt.Errorf("httpapi: %s: key %d of %d is empty", env, i+1, len(keys))
		case strings.TrimSpace(k) != k:
			return nil, fmt.Errorf("httpapi: %s: key %d of %d has leading or trailing white space", env, i+1, len(keys))
		case strings.ContainsFunc(k, func(r rune) bool { return r < 0x20 || r == 0x7f }):
			return nil, fmt.Errorf("httpapi: %s: key %d of %d contains a control character", env, i+1, len(keys))
		}
		if hexDigest, ok := strings.CutPrefix(k, DigestPrefix); ok {
			var d [sha256.Size]byte
			if len(hexDigest) != hex.EncodedLen(sha256.Size) {
				return nil, fmt.Errorf("httpapi: %s: key %d of %d starts with %q but is not followed by 64 hex digits", env, i+1, len(keys), DigestPrefix)
			}
			if _, err := hex.Decode(d[:], []byte(hexDigest)); err != nil {
				return nil, fmt.Errorf("httpapi: %s: key %d of %d starts with %q but is not followed by 64 hex digits", env, i+1, len(keys), DigestPrefix)
			}
			ks = append(ks, d)
			continue
		}
		ks = append(ks, sha256.Sum256([]byte(k)))
	}
	return ks, nil
}

// has reports whether digest is one of the set's. It compares against every
// key, whatever matches, so the time taken depends only on the set's size.
func (ks keySet) has(digest *[sha256.Size]byte) bool {
	match := 0
	for i := range ks {
		match |= subtle.ConstantTimeCompare(digest[:], ks[i][:])
	}
	return match == 1
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

// authenticate returns the roles among want of the key the request
// presents (none for an unknown key), its digest, and whether it presented
// one at all. Only the key sets of the roles in want are searched.
func (s *Server) authenticate(h http.Header, want grant) (g grant, digest [sha256.Size]byte, presented bool) {
	key, presented := credential(h)
	if key == "" {
		return 0, digest, presented
	}
	digest = digestOf(key)
	if want&grantReader != 0 && s.readerKeys.has(&digest) {
		g |= grantReader
	}
	if want&grantAdmin != 0 && s.adminKeys.has(&digest) {
		g |= grantAdmin
	}
	if want&grantMetrics != 0 && s.metricsKeys.has(&digest) {
		g |= grantMetrics
	}
	return g, digest, true
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
func (s *Server) authorize(r *http.Request, need grant, anonymous bool) error {
	g, digest, presented := s.authenticate(r.Header, need|grantReader|grantAdmin)
	switch {
	case g&need != 0:
		return s.limits.allowKey(&digest)
	case !presented && anonymous:
		return s.limits.allowAddr(r.RemoteAddr)
	case g != 0:
		return errForbidden
	default:
		return errUnauthorized
	}
}
