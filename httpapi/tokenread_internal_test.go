package httpapi

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestTokenReadName checks which requests take readToken's way: exactly
// the plain GETs echo would route to the token route, with the name echo
// would give.
func TestTokenReadName(t *testing.T) {
	tests := []struct {
		method, target, body string
		name                 string
		ok                   bool
	}{
		{"GET", "/v1/tokens/liveness", "", "liveness", true},
		{"GET", "/v1/tokens/liveness?x=1", "", "liveness", true},
		{"GET", "/v1/tokens/a.b-c_d~e", "", "a.b-c_d~e", true},
		{"GET", "/v1/tokens/live%6Eess", "", "", false}, // escaped: echo routes on the raw path
		{"GET", "/v1/tokens/a%2Fb", "", "", false},
		{"GET", "/v1/tokens/liveness", "x", "", false}, // a body: echo's body limit
		{"GET", "/v1/tokens/liveness/", "", "", false},
		{"GET", "/v1/tokens/liveness/devices/d", "", "", false},
		{"GET", "/v1/tokens/", "", "", false},
		{"GET", "/v1/tokens", "", "", false},
		{"GET", "/v1/tokensx/liveness", "", "", false},
		{"GET", "//v1/tokens/liveness", "", "", false},
		{"HEAD", "/v1/tokens/liveness", "", "", false},
		{"POST", "/v1/tokens/liveness", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.target, func(t *testing.T) {
			var r *http.Request
			if tt.body != "" {
				r = httptest.NewRequest(tt.method, tt.target, strings.NewReader(tt.body))
			} else {
				r = httptest.NewRequest(tt.method, tt.target, nil)
			}
			name, ok := tokenReadName(r)
			if name != tt.name || ok != tt.ok {
				t.Errorf("tokenReadName = %q, %v; want %q, %v", name, ok, tt.name, tt.ok)
			}
		})
	}
}
