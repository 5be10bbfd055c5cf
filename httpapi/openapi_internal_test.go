package httpapi

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/tokenkeeper/tokenkeeper/cache"
)

type nopTokens struct{}

func (nopTokens) Current() (cache.Token, bool) { return cache.Token{}, false }

type nopController struct{}

func (nopController) Status(context.Context) (Status, error)               { return Status{}, nil }
func (nopController) Refresh(context.Context, string) (cache.Token, error) { return cache.Token{}, nil }

// openAPIDoc is the part of the OpenAPI document the tests read.
type openAPIDoc struct {
	OpenAPI    string                                     `json:"openapi"`
	Paths      map[string]map[string]openAPIOp            `json:"paths"`
	Components struct{ Schemas map[string]openAPISchema } `json:"components"`
}

type openAPIOp struct {
	OperationID string                     `json:"operationId"`
	Responses   map[string]json.RawMessage `json:"responses"`
}

type openAPISchema struct {
	Required   []string                   `json:"required"`
	Properties map[string]json.RawMessage `json:"properties"`
}

func loadOpenAPI(t *testing.T) openAPIDoc {
	t.Helper()
	var doc openAPIDoc
	if err := json.Unmarshal(openAPI, &doc); err != nil {
		t.Fatalf("openapi.json does not parse: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi = %q, want 3.x", doc.OpenAPI)
	}
	return doc
}

// Keys of the package's own tests, strong enough for New.
const (
	internalReaderKey = "internal-reader-4f9c2a7e1b8d3f60"
	internalAdminKey  = "internal-admin-8e1d5b3c9a7f2e04"
)

var echoParam = regexp.MustCompile(`:([A-Za-z0-9_]+)`)

// TestOpenAPIDescribesEveryRoute checks that every route the server
// registers (admin routes on) is described, and every described route is
// registered, with the same methods.
func TestOpenAPIDescribesEveryRoute(t *testing.T) {
	s, err := New(Config{ReaderKeys: []string{internalReaderKey}, AdminKeys: []string{internalAdminKey}}, Single(nopTokens{}), nopController{})
	if err != nil {
		t.Fatal(err)
	}
	registered := map[string]bool{}
	for _, r := range s.echo.Routes() {
		// The device route takes the rest of the path (*) as the device id.
		path := strings.Replace(r.Path, "/devices/*", "/devices/{device}", 1)
		registered[strings.ToLower(r.Method)+" "+echoParam.ReplaceAllString(path, "{$1}")] = true
	}
	doc := loadOpenAPI(t)
	described := map[string]bool{}
	for path, ops := range doc.Paths {
		for method, op := range ops {
			key := method + " " + path
			described[key] = true
			if op.OperationID == "" {
				t.Errorf("%s: no operationId", key)
			}
			if len(op.Responses) == 0 {
				t.Errorf("%s: no responses", key)
			}
		}
	}
	for key := range registered {
		if !described[key] {
			t.Errorf("route %s is registered but not described in openapi.json", key)
		}
	}
	for key := range described {
		if !registered[key] {
			t.Errorf("openapi.json describes %s, which the server does not register", key)
		}
	}
	if len(registered) < 8 {
		t.Errorf("only %d routes registered: %v", len(registered), registered)
	}
}

// TestOpenAPISchemasMatchTypes checks that the documented properties of
// the status answer are exactly the JSON fields of the Go types.
func TestOpenAPISchemasMatchTypes(t *testing.T) {
	doc := loadOpenAPI(t)
	for name, typ := range map[string]reflect.Type{
		"Status":      reflect.TypeFor[Status](),
		"Replica":     reflect.TypeFor[Replica](),
		"Refresh":     reflect.TypeFor[Refresh](),
		"TokenStatus": reflect.TypeFor[TokenStatus](),
		"Build":       reflect.TypeFor[Build](),
		"ListedToken": reflect.TypeFor[listed](),
	} {
		schema, ok := doc.Components.Schemas[name]
		if !ok {
			t.Errorf("schema %s missing", name)
			continue
		}
		var fields []string
		for f := range typ.Fields() {
			tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if tag != "" && tag != "-" {
				fields = append(fields, tag)
			}
		}
		var props []string
		for p := range schema.Properties {
			props = append(props, p)
		}
		slices.Sort(fields)
		slices.Sort(props)
		if !slices.Equal(fields, props) {
			t.Errorf("schema %s properties = %v, want the JSON fields of %v: %v", name, props, typ, fields)
		}
		for _, r := range schema.Required {
			if !slices.Contains(fields, r) {
				t.Errorf("schema %s requires %q, which %v lacks", name, r, typ)
			}
		}
	}
}

func TestOpenAPIServed(t *testing.T) {
	s, err := New(Config{ReaderKeys: []string{internalReaderKey}}, Single(nopTokens{}), nil)
	if err != nil {
		t.Fatal(err)
	}
	w := httptest.NewRecorder()
	s.Handler().ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/openapi.json", nil))
	if w.Code != http.StatusOK {
		t.Fatalf("GET /openapi.json = %d, want 200", w.Code)
	}
	if got, want := w.Header().Get("Content-Type"), "application/json"; !strings.HasPrefix(got, want) {
		t.Errorf("Content-Type = %q, want %s", got, want)
	}
	if !json.Valid(w.Body.Bytes()) {
		t.Errorf("body is not JSON")
	}
}

func TestStatusPage(t *testing.T) {
	tests := []struct {
		name  string
		admin []string
		want  int
	}{
		{"admin routes on: served without a key", []string{internalAdminKey}, http.StatusOK},
		{"admin routes off: absent", nil, http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ctl controller
			if tt.admin != nil {
				ctl = nopController{}
			}
			s, err := New(Config{ReaderKeys: []string{internalReaderKey}, AdminKeys: tt.admin}, Single(nopTokens{}), ctl)
			if err != nil {
				t.Fatal(err)
			}
			w := httptest.NewRecorder()
			s.Handler().ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/status", nil))
			if w.Code != tt.want {
				t.Fatalf("GET /status = %d, want %d", w.Code, tt.want)
			}
			if tt.want != http.StatusOK {
				return
			}
			h := w.Header()
			if got := h.Get("Content-Type"); got != "text/html; charset=utf-8" {
				t.Errorf("Content-Type = %q", got)
			}
			csp := h.Get("Content-Security-Policy")
			for _, want := range []string{"default-src 'none'", "script-src 'sha256-", "style-src 'sha256-", "connect-src 'self'", "frame-ancestors 'none'"} {
				if !strings.Contains(csp, want) {
					t.Errorf("CSP %q lacks %q", csp, want)
				}
			}
			if strings.Contains(csp, "unsafe") {
				t.Errorf("CSP allows something unsafe: %q", csp)
			}
			for _, k := range []string{"Cache-Control", "X-Tokenkeeper-Instance", "X-Frame-Options"} {
				if h.Get(k) == "" {
					t.Errorf("header %s missing", k)
				}
			}
			body := w.Body.String()
			for _, id := range []string{`id="countdown"`, `id="replicas"`, `id="refreshes"`, `id="leader"`, `fetch("v1/status"`,
				`<th>Upstream</th>`, `r.upstream === "failing"`, `r.upstream_error`} {
				if !strings.Contains(body, id) {
					t.Errorf("page lacks %s", id)
				}
			}
			if strings.Count(body, "<script") != 1 || strings.Count(body, "<style") != 1 || strings.Contains(body, "src=") {
				t.Errorf("page must hold exactly one inline script and style and load nothing")
			}
		})
	}
}
