package upstream

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Causes of a rejected answer, found with errors.Is in an [*Error]'s chain.
var (
	// errMalformed: the answer is not a JSON object of the expected shape
	// (HTML page, truncated JSON, wrong field types, empty or oversized body).
	errMalformed = errors.New("upstream: malformed answer")
	// errInvalidToken: the answer holds no token, or one that is empty, longer
	// than maxTokenBytes, or has a byte outside printable ASCII.
	errInvalidToken = errors.New("upstream: invalid token")
	// errInvalidExpiry: the answer's expiry is zero, negative, in the past, or
	// more than maxLifetime away (an absolute expiry is measured against the
	// answer's Date header, see [Token]).
	errInvalidExpiry = errors.New("upstream: invalid expiry")
)

const (
	// maxTokenBytes is the longest token accepted.
	maxTokenBytes = 8 << 10
	// maxLifetime is the longest lifetime accepted for a token; anything
	// longer is taken for a broken answer.
	maxLifetime = 24 * time.Hour
	// maxCodeBytes bounds the error code copied from an upstream answer.
	maxCodeBytes = 64
)

// parseLiveness reads a liveness answer whose request was sent at sent and
// whose Date header is date ("" when absent). The token is the first present
// of "token", "livenessToken", "access_token"; the lifetime, to be counted
// from sent, is the first present of "expiresIn", "expires_in" (seconds,
// number or numeric string), "expiresAt", "expires_at" (an RFC 3339 instant
// on the upstream's clock, see expiryBase), or def when none is present.
// Errors wrap errMalformed, errInvalidToken or errInvalidExpiry and never
// contain the body or the token.
func parseLiveness(body []byte, date string, sent time.Time, def time.Duration) (string, time.Duration, error) {
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return "", 0, fmt.Errorf("%w: empty body", errMalformed)
	}
	if trimmed[0] == '<' {
		return "", 0, fmt.Errorf("%w: HTML instead of JSON", errMalformed)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(trimmed, &fields); err != nil {
		return "", 0, fmt.Errorf("%w: not a JSON object", errMalformed)
	}

	value, err := pickToken(fields)
	if err != nil {
		return "", 0, err
	}
	lifetime, err := pickLifetime(fields, date, sent, def)
	if err != nil {
		return "", 0, err
	}
	return value, lifetime, nil
}

func pickToken(fields map[string]json.RawMessage) (string, error) {
	for _, key := range []string{"token", "livenessToken", "access_token"} {
		raw, ok := present(fields, key)
		if !ok {
			continue
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", fmt.Errorf("%w: %s is not a string", errMalformed, key)
		}
		if err := checkToken(s); err != nil {
			return "", err
		}
		return s, nil
	}
	return "", fmt.Errorf("%w: no token in the answer", errInvalidToken)
}

// checkToken accepts a non-empty token of printable ASCII (0x21 to 0x7e, so
// no spaces or control characters) of at most maxTokenBytes.
func checkToken(s string) error {
	if s == "" {
		return fmt.Errorf("%w: empty", errInvalidToken)
	}
	if len(s) > maxTokenBytes {
		return fmt.Errorf("%w: longer than %d bytes", errInvalidToken, maxTokenBytes)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return fmt.Errorf("%w: byte outside printable ASCII", errInvalidToken)
		}
	}
	return nil
}

func pickLifetime(fields map[string]json.RawMessage, date string, sent time.Time, def time.Duration) (time.Duration, error) {
	for _, key := range []string{"expiresIn", "expires_in"} {
		if raw, ok := present(fields, key); ok {
			d, err := parseSeconds(raw)
			if err != nil {
				return 0, fmt.Errorf("%w (%s)", err, key)
			}
			return d, nil
		}
	}
	for _, key := range []string{"expiresAt", "expires_at"} {
		if raw, ok := present(fields, key); ok {
			var s string
			if err := json.Unmarshal(raw, &s); err != nil {
				return 0, fmt.Errorf("%w: %s is not a string", errMalformed, key)
			}
			at, err := time.Parse(time.RFC3339, s)
			if err != nil {
				return 0, fmt.Errorf("%w: %s is not RFC 3339", errMalformed, key)
			}
			return checkLifetime(at.Sub(expiryBase(date, sent)), key)
		}
	}
	return def, nil
}

// expiryBase returns the instant an absolute expiry is measured from, so
// that the lifetime is the expiry minus it. The upstream's clock need not
// agree with ours, so the answer's own clock is used: its Date header (when
// http.ParseTime reads it) plus one second, since Date has whole-second
// resolution and the server's clock when it wrote Date was less than a second
// past it; the lifetime is thus never overstated. Counting that lifetime from
// sent is conservative too, since the server wrote Date after we sent.
//
// Only when date is missing or unreadable is sent itself returned, on the
// local wall clock (the expiry is compared with sent's wall reading, not its
// monotonic one): that assumes the local and upstream clocks agree, and a
// local clock behind the upstream's overstates the lifetime by the
// difference.
func expiryBase(date string, sent time.Time) time.Time {
	if d, err := http.ParseTime(date); err == nil {
		return d.Add(time.Second)
	}
	return sent
}

// parseSeconds reads a JSON number or a string holding one as a count of
// seconds in (0, maxLifetime].
func parseSeconds(raw json.RawMessage) (time.Duration, error) {
	text := string(raw)
	if strings.HasPrefix(text, `"`) {
		if err := json.Unmarshal(raw, &text); err != nil {
			return 0, fmt.Errorf("%w: expiry is not a number", errMalformed)
		}
	}
	// json.Valid keeps out what ParseFloat alone would take: "Inf", "0x10", " 1".
	f, err := strconv.ParseFloat(text, 64)
	if err != nil || !json.Valid([]byte(text)) {
		return 0, fmt.Errorf("%w: expiry is not a number", errMalformed)
	}
	if !(f > 0) || f > maxLifetime.Seconds() {
		return 0, fmt.Errorf("%w: %v seconds", errInvalidExpiry, f)
	}
	return time.Duration(f * float64(time.Second)), nil
}

func checkLifetime(d time.Duration, key string) (time.Duration, error) {
	switch {
	case d <= 0:
		return 0, fmt.Errorf("%w: %s is in the past", errInvalidExpiry, key)
	case d > maxLifetime:
		return 0, fmt.Errorf("%w: %s is more than %v away", errInvalidExpiry, key, maxLifetime)
	}
	return d, nil
}

// present returns fields[key] unless it is missing or null.
func present(fields map[string]json.RawMessage, key string) (json.RawMessage, bool) {
	raw, ok := fields[key]
	if !ok || string(raw) == "null" {
		return nil, false
	}
	return raw, true
}

// readBody reads at most max bytes of r. A longer body gives the first max
// bytes and an errMalformed error.
func readBody(r io.Reader, max int64) ([]byte, error) {
	body, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(body)) > max {
		return body[:max], fmt.Errorf("%w: body over %d bytes", errMalformed, max)
	}
	return body, nil
}

// parseRetryAfter reads a Retry-After header, in seconds or as an HTTP date,
// relative to now. Missing, unparsable or past values give 0; values are
// capped at maxLifetime.
func parseRetryAfter(h http.Header, now time.Time) time.Duration {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	var d time.Duration
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs > int64(maxLifetime/time.Second) {
			return maxLifetime
		}
		d = time.Duration(secs) * time.Second
	} else if at, err := http.ParseTime(v); err == nil {
		d = at.Sub(now)
	}
	return min(max(d, 0), maxLifetime)
}

// errorCode extracts the error code from an OAuth2 error body
// ({"error":"invalid_client"}) or a gateway error body
// ({"error":{"code":"401","message":"token expired"}}); a gateway code that
// only repeats status gives way to the message. "" when there is none.
func errorCode(body []byte, status int) string {
	var e struct {
		Error json.RawMessage `json:"error"`
	}
	if json.Unmarshal(body, &e) != nil || len(e.Error) == 0 {
		return ""
	}
	var s string
	if json.Unmarshal(e.Error, &s) == nil {
		return s
	}
	var obj struct {
		Code    json.RawMessage `json:"code"`
		Message string          `json:"message"`
	}
	if json.Unmarshal(e.Error, &obj) != nil {
		return ""
	}
	code := strings.Trim(string(obj.Code), `"`)
	if code == "" || code == strconv.Itoa(status) {
		return obj.Message
	}
	return code
}

// safeCode returns code fit for an error message: "" when it contains any
// of secrets (plain or URL-encoded) or a byte outside printable ASCII and
// space, else code cut to maxCodeBytes.
func safeCode(code string, secrets ...string) string {
	for _, s := range secrets {
		if s == "" {
			continue
		}
		if strings.Contains(code, s) || strings.Contains(code, url.QueryEscape(s)) {
			return ""
		}
	}
	for i := 0; i < len(code); i++ {
		if code[i] < 0x20 || code[i] > 0x7e {
			return ""
		}
	}
	if len(code) > maxCodeBytes {
		code = code[:maxCodeBytes]
	}
	return code
}

// fingerprint names a credential safely in logs: "sha256:" and the first 12
// hex digits of its SHA-256, as cache.Fingerprint does.
func fingerprint(s string) string {
	if s == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(s))
	return "sha256:" + hex.EncodeToString(sum[:6])
}
