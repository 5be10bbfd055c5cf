package httpapi

import (
	"crypto/sha256"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestAppendJSONString(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"plain", "abc.DEF-123_~", `"abc.DEF-123_~"`},
		{"empty", "", `""`},
		{"quote and backslash", `a"b\c`, `"a\"b\\c"`},
		{"common controls", "\n\r\t", `"\n\r\t"`},
		{"other controls", "\x00\x01\x08\x0c\x1f", `"\u0000\u0001\u0008\u000c\u001f"`},
		{"DEL passes", "\x7f", "\"\x7f\""},
		{"HTML passes", "<a&b>", `"<a&b>"`},
		{"UTF-8 passes", "é€😀", `"é€😀"`},
		{"line separators", "\u2028\u2029", `"\u2028\u2029"`},
		{"invalid UTF-8", "a\xffb\xc3", `"a\ufffdb\ufffd"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(appendJSONString(nil, tt.in)); got != tt.want {
				t.Errorf("appendJSONString(%q) = %s, want %s", tt.in, got, tt.want)
			}
		})
	}
}

// FuzzAppendJSONString checks that every string encodes to valid JSON that
// decodes as encoding/json's encoding of it does.
func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "token", `"\`, "\x00\x1f\x7f", "é\xff\u2028", "a\xc3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := appendJSONString(nil, s)
		if !json.Valid(got) {
			t.Fatalf("appendJSONString(%q) = %s: not valid JSON", s, got)
		}
		var back string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatal(err)
		}
		ref, _ := json.Marshal(s)
		var want string
		if err := json.Unmarshal(ref, &want); err != nil {
			t.Fatal(err)
		}
		if back != want {
			t.Errorf("appendJSONString(%q) decodes to %q, want %q", s, back, want)
		}
	})
}

func TestExpires(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name     string
		deadline time.Time
		at       string
		in       int64
	}{
		{"whole", now.Add(10 * time.Second), "2026-01-02T03:04:15Z", 10},
		{"fraction floors", now.Add(10*time.Second + 999*time.Millisecond), "2026-01-02T03:04:15Z", 10},
		{"past is zero", now.Add(-time.Second), "2026-01-02T03:04:04Z", 0},
		{"zone", now.Add(time.Second).In(time.FixedZone("Z", 5*3600+1800)), "2026-01-02T03:04:06Z", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := expiresAt(tt.deadline).Format(time.RFC3339); got != tt.at {
				t.Errorf("expiresAt = %s, want %s", got, tt.at)
			}
			if got := expiresIn(tt.deadline, now); got != tt.in {
				t.Errorf("expiresIn = %d, want %d", got, tt.in)
			}
		})
	}
}

func TestCredential(t *testing.T) {
	tests := []struct {
		name          string
		header        map[string]string
		key           string
		wantPresented bool
	}{
		{"none", nil, "", false},
		{"bearer", map[string]string{"Authorization": "Bearer k"}, "k", true},
		{"BEARER", map[string]string{"Authorization": "BEARER k"}, "k", true},
		{"bearer padded", map[string]string{"Authorization": "Bearer   k  "}, "k", true},
		{"bearer empty", map[string]string{"Authorization": "Bearer "}, "", true},
		{"other scheme", map[string]string{"Authorization": "Basic k"}, "", true},
		{"x-api-key", map[string]string{"X-API-Key": "k"}, "k", true},
		{"bearer wins", map[string]string{"Authorization": "Bearer a", "X-API-Key": "b"}, "a", true},
		{"bad bearer falls back", map[string]string{"Authorization": "Basic a", "X-API-Key": "b"}, "b", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := make(map[string][]string)
			for k, v := range tt.header {
				h[canonical(k)] = []string{v}
			}
			key, presented := credential(h)
			if key != tt.key || presented != tt.wantPresented {
				t.Errorf("credential = %q, %v, want %q, %v", key, presented, tt.key, tt.wantPresented)
			}
		})
	}
}

func canonical(k string) string {
	if k == "X-API-Key" {
		return "X-Api-Key"
	}
	return k
}

func TestDigestOf(t *testing.T) {
	for _, n := range []int{1, 32, 33, 256, 257, 1000} {
		key := strings.Repeat("k", n)
		if got, want := digestOf(key), sha256.Sum256([]byte(key)); got != want {
			t.Errorf("digestOf(%d bytes) = %x, want %x", n, got, want)
		}
	}
}

func TestStatusCode(t *testing.T) {
	tests := []struct {
		status int
		want   string
	}{
		{429, "too_many_requests"},
		{418, "im_a_teapot"},
		{431, "request_header_fields_too_large"},
		{599, "error"},
	}
	for _, tt := range tests {
		if got := statusCode(tt.status); got != tt.want {
			t.Errorf("statusCode(%d) = %q, want %q", tt.status, got, tt.want)
		}
	}
}
