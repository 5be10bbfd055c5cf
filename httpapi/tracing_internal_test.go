package httpapi

import "testing"

// Every route's pattern, and no path's own words: a token name or device
// id in the path never reaches a span.
func TestRouteOf(t *testing.T) {
	for _, tc := range []struct{ path, want string }{
		{"/v1/tokens", "/v1/tokens"},
		{"/v1/tokens/liveness", "/v1/tokens/{name}"},
		{"/v1/tokens/liveness/", "other"},
		{"/v1/tokens/liveness/refresh", "/v1/tokens/{name}/refresh"},
		{"/v1/tokens/phones/devices/device-0b8d4e6f27", "/v1/tokens/{name}/devices/{device}"},
		{"/v1/tokens/phones/devices/a/b", "/v1/tokens/{name}/devices/{device}"},
		{"/v1/tokens/phones/secret-looking-thing", "other"},
		{"/v1/tokens//refresh", "other"},
		{"/healthz", "/healthz"},
		{"/readyz", "/readyz"},
		{"/metrics", "/metrics"},
		{"/openapi.json", "/openapi.json"},
		{"/v1/status", "/v1/status"},
		{"/status", "/status"},
		{"/", "other"},
		{"/v1/tokensx", "other"},
	} {
		if got := routeOf(tc.path); got != tc.want {
			t.Errorf("routeOf(%q) = %q, want %q", tc.path, got, tc.want)
		}
	}
}
