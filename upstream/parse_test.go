package upstream

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

var now = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// TestParseLiveness reads answers without a Date header, sent at now: an
// absolute expiry is measured against the local wall clock.
func TestParseLiveness(t *testing.T) {
	const def = 42 * time.Minute
	tests := []struct {
		name      string
		body      string
		wantToken string
		wantLife  time.Duration
		wantErr   error
	}{
		{"token and expiresIn", `{"token":"abc","expiresIn":3600}`, "abc", time.Hour, nil},
		{"livenessToken and expires_in string", `{"livenessToken":"abc","expires_in":"300"}`, "abc", 5 * time.Minute, nil},
		{"access_token and fractional seconds", `{"access_token":"abc","expires_in":1.5}`, "abc", 1500 * time.Millisecond, nil},
		{"expiresAt", `{"token":"abc","expiresAt":"2030-01-02T04:04:05Z"}`, "abc", time.Hour, nil},
		{"expires_at with offset and fraction", `{"token":"abc","expires_at":"2030-01-02T05:04:05.5+01:00"}`, "abc", 1*time.Hour + 500*time.Millisecond, nil},
		{"no expiry", `{"token":"abc"}`, "abc", def, nil},
		{"null expiry", `{"token":"abc","expiresIn":null}`, "abc", def, nil},
		{"expiresIn wins over expiresAt", `{"token":"abc","expiresIn":60,"expiresAt":"2000-01-01T00:00:00Z"}`, "abc", time.Minute, nil},
		{"token wins over access_token", `{"access_token":"b","token":"a"}`, "a", def, nil},
		{"null token falls through", `{"token":null,"access_token":"b"}`, "b", def, nil},
		{"surrounding space", " \n{\"token\":\"abc\"}\n", "abc", def, nil},
		{"extra fields", `{"token":"abc","type":"liveness","nested":{"a":[1,2]}}`, "abc", def, nil},
		{"8 KiB token", `{"token":"` + strings.Repeat("a", maxTokenBytes) + `"}`, strings.Repeat("a", maxTokenBytes), def, nil},
		{"24h", `{"token":"abc","expiresIn":86400}`, "abc", 24 * time.Hour, nil},

		{"empty body", ``, "", 0, errMalformed},
		{"HTML", `<!DOCTYPE html><html></html>`, "", 0, errMalformed},
		{"truncated", `{"token":"abc`, "", 0, errMalformed},
		{"array", `["abc"]`, "", 0, errMalformed},
		{"string", `"abc"`, "", 0, errMalformed},
		{"token not a string", `{"token":123}`, "", 0, errMalformed},
		{"expiresIn not a number", `{"token":"abc","expiresIn":"soon"}`, "", 0, errMalformed},
		{"expiresIn bool", `{"token":"abc","expiresIn":true}`, "", 0, errMalformed},
		{"expiresIn hex string", `{"token":"abc","expiresIn":"0x10"}`, "", 0, errMalformed},
		{"expiresIn Inf string", `{"token":"abc","expiresIn":"Inf"}`, "", 0, errMalformed},
		{"expiresIn padded string", `{"token":"abc","expiresIn":" 300"}`, "", 0, errMalformed},
		{"expiresAt not RFC 3339", `{"token":"abc","expiresAt":"tomorrow"}`, "", 0, errMalformed},
		{"expiresAt a number", `{"token":"abc","expiresAt":1893553445}`, "", 0, errMalformed},
		{"null", `null`, "", 0, errInvalidToken},
		{"no token", `{"expiresIn":3600}`, "", 0, errInvalidToken},
		{"empty token", `{"token":""}`, "", 0, errInvalidToken},
		{"space in token", `{"token":"a b"}`, "", 0, errInvalidToken},
		{"newline in token", `{"token":"ab\n"}`, "", 0, errInvalidToken},
		{"NUL in token", `{"token":"ab\u0000"}`, "", 0, errInvalidToken},
		{"DEL in token", `{"token":"ab\u007f"}`, "", 0, errInvalidToken},
		{"non-ASCII token", `{"token":"abé"}`, "", 0, errInvalidToken},
		{"token over 8 KiB", `{"token":"` + strings.Repeat("a", maxTokenBytes+1) + `"}`, "", 0, errInvalidToken},
		{"zero expiresIn", `{"token":"abc","expiresIn":0}`, "", 0, errInvalidExpiry},
		{"negative expiresIn", `{"token":"abc","expiresIn":-1}`, "", 0, errInvalidExpiry},
		{"negative zero expires_in string", `{"token":"abc","expires_in":"-0"}`, "", 0, errInvalidExpiry},
		{"absurd expiresIn", `{"token":"abc","expiresIn":86401}`, "", 0, errInvalidExpiry},
		{"huge expiresIn", `{"token":"abc","expiresIn":1e300}`, "", 0, errInvalidExpiry},
		{"overflowing expiresIn", `{"token":"abc","expiresIn":1e400}`, "", 0, errMalformed},
		{"expiresAt in the past", `{"token":"abc","expiresAt":"2030-01-02T03:04:04Z"}`, "", 0, errInvalidExpiry},
		{"expiresAt now", `{"token":"abc","expiresAt":"2030-01-02T03:04:05Z"}`, "", 0, errInvalidExpiry},
		{"expiresAt in two days", `{"token":"abc","expiresAt":"2030-01-04T03:04:05Z"}`, "", 0, errInvalidExpiry},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			token, life, err := parseLiveness([]byte(tt.body), "", now, def)
			if !errors.Is(err, tt.wantErr) || (err != nil) != (tt.wantErr != nil) {
				t.Fatalf("error = %v, want %v", err, tt.wantErr)
			}
			if token != tt.wantToken || life != tt.wantLife {
				t.Errorf("got %q, %v; want %q, %v", token, life, tt.wantToken, tt.wantLife)
			}
		})
	}
}

// TestParseLivenessDate: an absolute expiry is measured against the answer's
// Date header, less a second, whatever the local clock says; only without a
// readable Date is it measured against the local wall clock at send time.
func TestParseLivenessDate(t *testing.T) {
	httpDate := func(t time.Time) string { return t.Format(http.TimeFormat) }
	expiresAt := func(t time.Time) string {
		return `{"token":"abc","expiresAt":"` + t.Format(time.RFC3339) + `"}`
	}
	tests := []struct {
		name    string
		body    string
		date    string // the Date header; "" for none
		sent    time.Time
		want    time.Duration
		wantErr error
	}{
		{"Date and sent agree", expiresAt(now.Add(time.Hour)), httpDate(now), now, time.Hour - time.Second, nil},
		{"upstream clock 15s ahead", expiresAt(now.Add(15*time.Second + 45*time.Minute)), httpDate(now.Add(15 * time.Second)), now,
			45*time.Minute - time.Second, nil},
		{"local clock an hour ahead", expiresAt(now.Add(45 * time.Minute)), httpDate(now), now.Add(time.Hour), 45*time.Minute - time.Second, nil},
		{"local clock an hour behind", expiresAt(now.Add(45 * time.Minute)), httpDate(now), now.Add(-time.Hour), 45*time.Minute - time.Second, nil},
		{"RFC 850 Date", expiresAt(now.Add(time.Hour)), now.Format(time.RFC850), now, time.Hour - time.Second, nil},
		{"ANSI C Date", expiresAt(now.Add(time.Hour)), now.Format(time.ANSIC), now, time.Hour - time.Second, nil},
		{"no Date: local wall clock at send", expiresAt(now.Add(45 * time.Minute)), "", now, 45 * time.Minute, nil},
		{"unreadable Date: local wall clock at send", expiresAt(now.Add(45 * time.Minute)), "yesterday", now, 45 * time.Minute, nil},
		{"RFC 3339 Date is not an HTTP date", expiresAt(now.Add(45 * time.Minute)), now.Add(time.Hour).Format(time.RFC3339), now, 45 * time.Minute, nil},
		{"expiresIn ignores Date", `{"token":"abc","expiresIn":60}`, httpDate(now.Add(time.Hour)), now, time.Minute, nil},
		{"no expiry ignores Date", `{"token":"abc"}`, httpDate(now.Add(time.Hour)), now, time.Hour, nil},

		{"expiry within Date's second", expiresAt(now.Add(time.Second)), httpDate(now), now, 0, errInvalidExpiry},
		{"expired by the upstream's clock, not by ours", expiresAt(now.Add(-time.Minute)), httpDate(now), now.Add(-time.Hour), 0, errInvalidExpiry},
		{"more than 24h after Date", expiresAt(now.Add(25 * time.Hour)), httpDate(now), now.Add(2 * time.Hour), 0, errInvalidExpiry},
		{"no Date, in the past by our clock", expiresAt(now.Add(-time.Second)), "", now, 0, errInvalidExpiry},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, got, err := parseLiveness([]byte(tt.body), tt.date, tt.sent, time.Hour)
			if !errors.Is(err, tt.wantErr) || (err != nil) != (tt.wantErr != nil) {
				t.Fatalf("error = %v, want %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("lifetime = %v, want %v", got, tt.want)
			}
		})
	}
}

// FuzzParseLiveness feeds arbitrary answers and Date headers to the parser:
// it must never accept an invalid token or lifetime, and the Date header may
// change only the lifetime of an absolute expiry, never the token nor
// whether the answer is well formed.
func FuzzParseLiveness(f *testing.F) {
	for _, seed := range []struct{ body, date string }{
		{`{"token":"abc","expiresIn":3600}`, ""},
		{`{"livenessToken":"abc","expires_in":"300"}`, "Wed, 02 Jan 2030 03:04:05 GMT"},
		{`{"access_token":"abc","expiresAt":"2030-01-02T04:04:05Z"}`, ""},
		{`{"access_token":"abc","expiresAt":"2030-01-02T04:04:05Z"}`, "Wed, 02 Jan 2030 03:04:20 GMT"},
		{`{"token":"abc","expires_at":"2030-01-02T03:34:05Z"}`, "Wednesday, 02-Jan-30 02:04:05 GMT"},
		{`{"token":"abc","expiresAt":"2030-01-02T03:04:06Z"}`, "Wed Jan  2 03:04:05 2030"},
		{`{"token":"a\u0001b"}`, ""},
		{`<html>`, "Wed, 02 Jan 2030 03:04:05 GMT"},
		{`{"token":"abc","expiresIn":"1e5"}`, "garbage"},
	} {
		f.Add([]byte(seed.body), seed.date)
	}
	f.Fuzz(func(t *testing.T, body []byte, date string) {
		token, life, err := parseLiveness(body, date, now, time.Hour)
		token0, _, err0 := parseLiveness(body, "", now, time.Hour)
		if token != token0 && err == nil && err0 == nil {
			t.Errorf("Date %q changed the token", date)
		}
		for _, cause := range []error{errMalformed, errInvalidToken} {
			if errors.Is(err, cause) != errors.Is(err0, cause) {
				t.Errorf("Date %q changed whether the answer is %v: %v, without it %v", date, cause, err, err0)
			}
		}
		if err != nil {
			if token != "" || life != 0 {
				t.Errorf("error %v with token %q, lifetime %v", err, token, life)
			}
			if !errors.Is(err, errMalformed) && !errors.Is(err, errInvalidToken) && !errors.Is(err, errInvalidExpiry) {
				t.Errorf("error %v wraps none of the package's causes", err)
			}
			return
		}
		if checkToken(token) != nil {
			t.Errorf("accepted token %q", token)
		}
		if life <= 0 || life > maxLifetime {
			t.Errorf("accepted lifetime %v", life)
		}
	})
}

func TestParseRetryAfter(t *testing.T) {
	tests := []struct {
		name, value string
		want        time.Duration
	}{
		{"none", "", 0},
		{"seconds", "120", 2 * time.Minute},
		{"zero", "0", 0},
		{"negative", "-5", 0},
		{"huge", "99999999999999999", maxLifetime},
		{"date", now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{"past date", now.Add(-time.Hour).Format(http.TimeFormat), 0},
		{"garbage", "soon", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			if tt.value != "" {
				h.Set("Retry-After", tt.value)
			}
			if got := parseRetryAfter(h, now); got != tt.want {
				t.Errorf("parseRetryAfter(%q) = %v, want %v", tt.value, got, tt.want)
			}
		})
	}
}

func TestErrorCode(t *testing.T) {
	tests := []struct {
		name, body string
		secrets    []string
		want       string
	}{
		{"oauth2", `{"error":"invalid_client","error_description":"x"}`, nil, "invalid_client"},
		{"gateway code repeating the status", `{"error":{"code":"401","message":"token expired"}}`, nil, "token expired"},
		{"gateway number code", `{"error":{"code":401}}`, nil, ""},
		{"gateway own code", `{"error":{"code":"RateLimited","message":"slow down"}}`, nil, "RateLimited"},
		{"no error", `{"message":"x"}`, nil, ""},
		{"HTML", `<html>`, nil, ""},
		{"echoed secret", `{"error":"bad secret hunter2"}`, []string{"hunter2"}, ""},
		{"echoed secret in a gateway message", `{"error":{"code":"401","message":"bad hunter2"}}`, []string{"hunter2"}, ""},
		{"echoed escaped secret", `{"error":"bad secret a%2Bb"}`, []string{"a+b"}, ""},
		{"control character", `{"error":"a\u0001b"}`, nil, ""},
		{"long", `{"error":"` + strings.Repeat("x", 100) + `"}`, nil, strings.Repeat("x", maxCodeBytes)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := safeCode(errorCode([]byte(tt.body), 401), tt.secrets...); got != tt.want {
				t.Errorf("code = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestErrorString(t *testing.T) {
	tests := []struct {
		err  *Error
		want string
	}{
		{&Error{Op: "auth", Status: 401, Code: "invalid_client"}, "upstream: auth: status 401: invalid_client"},
		{&Error{Op: "liveness", Status: 200, Err: errMalformed}, "upstream: liveness: status 200: malformed answer"},
		{&Error{Op: "liveness", Err: errors.New("dial tcp: refused")}, "upstream: liveness: dial tcp: refused"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
}
