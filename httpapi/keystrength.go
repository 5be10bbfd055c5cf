package httpapi

import (
	"fmt"
	"math"
	"strings"
)

// minKeyBits is the least estimated randomness, in bits, of a reader or
// admin key that New accepts without Config.AllowWeakKeys: at a million
// guesses a second, finding one key of 128 random bits takes some 10^25
// years, however many replicas and addresses a guesser uses.
const minKeyBits = 128

// keyBits estimates the randomness of key in bits, as its length times
// the bits of one character of the smallest of these alphabets that holds
// every character: digits (10), hex digits of one case (16), digits and
// letters of one case (36), base64 or base64url (letters, digits, + / - _
// and =: 64), printable ASCII (95). A character outside ASCII counts as
// one of the 95. A key made of fewer than 8 different characters, or that
// repeats a shorter string, is estimated at 0. It is an upper bound for a
// key drawn at random from that alphabet, and says nothing of a key chosen
// by a person: `openssl rand -hex 32` or `openssl rand -base64 32` make
// good keys. A key written as a digest (digestPrefix) cannot be measured:
// keyBits does not apply to it.
func keyBits(key string) float64 {
	var lowerHex, upperHex, lower, upper, digit, b64, other, distinct int
	var seen [256]bool
	n := 0
	for _, r := range key {
		n++
		switch {
		case r >= '0' && r <= '9':
			digit++
		case r >= 'a' && r <= 'f':
			lowerHex++
		case r >= 'A' && r <= 'F':
			upperHex++
		case r >= 'a' && r <= 'z':
			lower++
		case r >= 'A' && r <= 'Z':
			upper++
		case r == '+' || r == '/' || r == '-' || r == '_' || r == '=':
			b64++
		default:
			other++
		}
		if r < 256 && !seen[r] {
			seen[r] = true
			distinct++
		} else if r >= 256 {
			distinct++ // counted each time: rare enough not to matter
		}
	}
	if distinct < minDistinct || repeats(key) {
		return 0
	}
	var alphabet float64
	switch {
	case other > 0:
		alphabet = 95
	case b64 > 0 || (lowerHex+lower > 0 && upperHex+upper > 0):
		alphabet = 64
	case lower > 0 || upper > 0:
		alphabet = 36
	case lowerHex > 0 || upperHex > 0:
		alphabet = 16
	default:
		alphabet = 10
	}
	return float64(n) * math.Log2(alphabet)
}

// minDistinct is the fewest different characters a key of any length
// must hold to be measured at all.
const minDistinct = 8

// repeats reports whether s is a shorter string written more than once.
func repeats(s string) bool {
	for p := 1; p <= len(s)/2; p++ {
		if len(s)%p == 0 && strings.Repeat(s[:p], len(s)/p) == s {
			return true
		}
	}
	return false
}

// CheckKeyStrength returns why key is too weak to resist guessing (under
// minKeyBits by keyBits), or nil. A digest (digestPrefix) passes: its key
// cannot be measured, and whoever wrote the digest vouches for it. The
// message never quotes the key.
func CheckKeyStrength(key string) error {
	if strings.HasPrefix(key, digestPrefix) {
		return nil
	}
	bits := keyBits(key)
	switch {
	case bits >= minKeyBits:
		return nil
	case len(key) >= 2 && repeats(key):
		return fmt.Errorf("is too weak to resist guessing: it repeats a shorter string; use %d bits of randomness (32 hex digits or 22 base64 characters drawn at random, as openssl rand -hex 32 makes)", minKeyBits)
	case bits == 0:
		return fmt.Errorf("is too weak to resist guessing: it has fewer than %d different characters; use %d bits of randomness (32 hex digits or 22 base64 characters drawn at random, as openssl rand -hex 32 makes)", minDistinct, minKeyBits)
	}
	return fmt.Errorf("is too weak to resist guessing: about %.0f bits of randomness, %d needed (32 hex digits or 22 base64 characters drawn at random, as openssl rand -hex 32 makes)", bits, minKeyBits)
}
