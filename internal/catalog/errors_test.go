package catalog_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/tokenkeeper/tokenkeeper/internal/catalog"
)

// oauth2File is a valid file of one oauth2 token, lines 1 to 7, with more
// appended: each case adds or changes lines to make one problem.
const oauth2File = `tokens:
  - name: a
    source: oauth2
    oauth2:
      token_url: https://idp.example.com/token
      client_id: c
      client_secret: ${SECRET}
`

// rdpFile is a valid file of one rdp-liveness token, lines 1 to 6.
const rdpFile = `tokens:
  - name: a
    source: rdp-liveness
    rdp:
      client_id: c
      client_secret: ${SECRET}
`

// keyFile is oauth2File with a keys section starting at line 8.
const keyFile = oauth2File + `keys:
  - name: k
    key: ${SECRET2}
`

// with returns file with the line numbered line (from 1) replaced by
// repl, which may be several lines or none.
func with(file string, line int, repl string) string {
	lines := strings.Split(file, "\n")
	if repl == "" {
		return strings.Join(append(lines[:line-1:line-1], lines[line:]...), "\n")
	}
	return strings.Join(append(append(lines[:line-1:line-1], repl), lines[line:]...), "\n")
}

// insert returns file with text inserted before the line numbered line.
func insert(file string, line int, text string) string {
	lines := strings.Split(file, "\n")
	return strings.Join(append(append(lines[:line-1:line-1], text), lines[line-1:]...), "\n")
}

type errCase struct {
	name  string
	file  string
	line  int
	field string
	want  []string // in the problem
	count int      // problems expected; 0 means 1
}

var errCases = []errCase{
	// Unknown fields and wrong types.
	{"unknown top field", oauth2File + "extra: 1\n", 8, "extra", []string{"unknown field", "tokens, keys"}, 0},
	{"unknown token field", insert(oauth2File, 4, "    margin: 1m"), 4, "tokens[0].margin", []string{"unknown field"}, 0},
	{"unknown oauth2 field", oauth2File + "      scope: x\n", 8, "tokens[0].oauth2.scope", []string{"unknown field", "scopes"}, 0},
	{"unknown rdp field", rdpFile + "      secret: x\n", 7, "tokens[0].rdp.secret", []string{"unknown field"}, 0},
	{"unknown key field", keyFile + "    scope: [a]\n", 11, "keys[0].scope", []string{"unknown field"}, 0},
	{"per-device oauth2", insert(oauth2File, 4, "    mode: per-device"), 4, "tokens[0].mode", []string{"needs source rdp-liveness"}, 0},
	{"mode bogus", insert(rdpFile, 4, "    mode: each"), 4, "tokens[0].mode", []string{`"each"`}, 0},
	{"mints on a shared token", insert(rdpFile, 4, "    mints_per_minute: 5"), 4, "tokens[0].mints_per_minute", []string{"per-device tokens only"}, 0},
	{"mints negative", insert(rdpFile, 4, "    mode: per-device\n    mints_per_device_hour: -1"), 5, "tokens[0].mints_per_device_hour", []string{"negative"}, 0},
	{"required maybe", insert(oauth2File, 4, "    required: maybe"), 4, "tokens[0].required", []string{"true or false", `"maybe"`}, 0},
	{"required yes", insert(oauth2File, 4, "    required: yes"), 4, "tokens[0].required", []string{"true or false"}, 0},
	{"scopes number", oauth2File + "      scopes: 3\n", 8, "tokens[0].oauth2.scopes", []string{"want a list", "a number"}, 0},
	{"scopes item list", oauth2File + "      scopes: [[a]]\n", 8, "tokens[0].oauth2.scopes[0]", []string{"want text", "a list"}, 0},
	{"scope with space", oauth2File + "      scopes: [\"a b\"]\n", 8, "tokens[0].oauth2.scopes[0]", []string{"no spaces"}, 0},
	{"auth_per_minute text", insert(oauth2File, 4, "    auth_per_minute: lots"), 4, "tokens[0].auth_per_minute", []string{"whole number"}, 0},
	{"auth_per_minute float", insert(oauth2File, 4, "    auth_per_minute: 1.5"), 4, "tokens[0].auth_per_minute", []string{"whole number"}, 0},
	{"auth_per_minute zero", insert(oauth2File, 4, "    auth_per_minute: 0"), 4, "tokens[0].auth_per_minute", []string{"at least 1"}, 0},
	{"duration without unit", insert(oauth2File, 4, "    lifetime: 60"), 4, "tokens[0].lifetime", []string{`"60" is not a duration`}, 0},
	{"duration negative", insert(oauth2File, 4, "    timeout: -1s"), 4, "tokens[0].timeout", []string{"positive"}, 0},
	{"duration list", insert(oauth2File, 4, "    timeout: [1s]"), 4, "tokens[0].timeout", []string{"duration", "a list"}, 0},
	{"oauth2 not a mapping", "tokens:\n  - name: a\n    source: oauth2\n    oauth2: yes\n", 4, "tokens[0].oauth2", []string{"want a mapping"}, 0},
	{"token not a mapping", "tokens:\n  - a\n", 2, "tokens[0]", []string{"want a mapping", "text"}, 0},
	{"tokens not a list", "tokens: {a: 1}\n", 1, "tokens", []string{"want a list", "a mapping"}, 0},
	{"params not strings", oauth2File + "      params: {a: [1]}\n", 8, "tokens[0].oauth2.params.a", []string{"want text"}, 0},
	{"params refused", oauth2File + "      params:\n        foo: bar\n        Scope: x\n", 10, "tokens[0].oauth2.params.Scope", []string{"scopes"}, 0},
	{"field name not text", oauth2File + "      [a]: b\n", 8, "tokens[0].oauth2", []string{"plain text"}, 0},
	{"anchor holder", "base: &b {client_id: c}\n" + oauth2File, 1, "base", []string{"unknown field"}, 0},
	{"merge key in block", oauth2File + "      <<: {audience: x}\n", 8, "tokens[0].oauth2", []string{"merge keys"}, 0},

	// Names.
	{"duplicate token name", oauth2File + strings.TrimPrefix(oauth2File, "tokens:\n"), 8, "tokens[1].name", []string{`"a"`, "line 2"}, 0},
	{"bad token name", with(oauth2File, 2, "  - name: Billing_API"), 2, "tokens[0].name", []string{"not a valid name"}, 0},
	{"long token name", with(oauth2File, 2, "  - name: "+strings.Repeat("a", 41)), 2, "tokens[0].name", []string{"not a valid name"}, 0},
	{"missing token name", "tokens:\n  - source: oauth2\n    oauth2:\n      token_url: https://idp.example.com/token\n      client_id: c\n      client_secret: ${SECRET}\n", 2, "tokens[0].name", []string{"required"}, 0},
	{"bad key name", with(keyFile, 9, "  - name: Ops!"), 9, "keys[0].name", []string{"not a valid name"}, 0},
	{"duplicate key name", keyFile + "  - name: k\n    key_file: /run/secrets/scraper\n", 11, "keys[1].name", []string{`"k"`, "line 9"}, 0},
	{"duplicate key value", keyFile + "  - name: other\n    key: ${OPS_KEY}\n", 12, "keys[1].key", []string{`"other"`, `"k"`}, 0},
	{"duplicate key value file", keyFile + "  - name: other\n    key_file: /run/secrets/ops\n", 12, "keys[1].key_file", []string{`"other"`, `"k"`, "its own"}, 0},

	// Secrets.
	{"secret in clear", with(oauth2File, 7, "      client_secret: hunter2-CLEAR"), 7, "tokens[0].oauth2.client_secret",
		[]string{"never written in the file in clear", "client_secret_file: /path/to/file", "client_secret: ${SOME_VARIABLE}"}, 0},
	{"secret half reference", with(oauth2File, 7, "      client_secret: hunter2-CLEAR${SECRET}"), 7, "tokens[0].oauth2.client_secret", []string{"in clear"}, 0},
	{"secret number", with(oauth2File, 7, "      client_secret: 12345"), 7, "tokens[0].oauth2.client_secret", []string{"in clear"}, 0},
	{"password in clear", rdpFile + "      auth: v1\n      username: u\n      password: hunter2-CLEAR\n", 9, "tokens[0].rdp.password", []string{"password_file: /path/to/file"}, 0},
	{"key in clear", with(keyFile, 10, "    key: hunter2-CLEAR"), 10, "keys[0].key", []string{"key_file: /path/to/file", "key: ${SOME_VARIABLE}"}, 0},
	{"missing secret file", with(oauth2File, 7, "      client_secret_file: /nope/secret"), 7, "tokens[0].oauth2.client_secret_file", []string{"cannot read /nope/secret", "not exist"}, 0},
	{"empty secret file", with(oauth2File, 7, "      client_secret_file: /empty"), 7, "tokens[0].oauth2.client_secret_file", []string{"/empty is empty"}, 0},
	{"newline secret file", with(keyFile, 10, "    key_file: /newline"), 10, "keys[0].key_file", []string{"/newline is empty"}, 0},
	{"unset env", with(oauth2File, 7, "      client_secret: ${UNSET_VAR}"), 7, "tokens[0].oauth2.client_secret", []string{"UNSET_VAR is not set"}, 0},
	{"empty env", with(oauth2File, 7, "      client_secret: ${EMPTY}"), 7, "tokens[0].oauth2.client_secret", []string{"EMPTY is empty"}, 0},
	{"unset env plain field", with(oauth2File, 6, "      client_id: ${UNSET_VAR}"), 6, "tokens[0].oauth2.client_id", []string{"UNSET_VAR is not set"}, 0},
	{"both secret forms", oauth2File + "      client_secret_file: /run/secrets/rdp\n", 8, "tokens[0].oauth2.client_secret", []string{"not both"}, 0},
	{"both key and key_file", keyFile + "    key_file: /run/secrets/ops\n", 11, "keys[0].key", []string{"key_file", "not both"}, 0},
	{"key without key", with(keyFile, 10, "    role: admin"), 9, "keys[0].key", []string{"required", "key_file"}, 0},
	{"oauth2 without secret", with(oauth2File, 7, ""), 4, "tokens[0].oauth2.client_secret", []string{"required"}, 0},

	// Keys.
	{"scope unknown token", keyFile + "    tokens: [a, nope]\n", 11, "keys[0].tokens[1]", []string{`"nope"`, "no token"}, 0},
	{"scope star with others", keyFile + "    tokens: [a, \"*\"]\n", 11, "keys[0].tokens[1]", []string{"alone"}, 0},
	{"scope listed twice", keyFile + "    tokens: [a, a]\n", 11, "keys[0].tokens[1]", []string{"twice"}, 0},
	{"scope empty", keyFile + "    tokens: []\n", 11, "keys[0].tokens", []string{"lists no token"}, 0},
	{"scope not a list", keyFile + "    tokens: a\n", 11, "keys[0].tokens", []string{"want a list"}, 0},
	{"bad role", keyFile + "    role: owner\n", 11, "keys[0].role", []string{`"owner"`, "reader, admin, metrics"}, 0},

	// Timings.
	{"margin equals lifetime", insert(oauth2File, 4, "    lifetime: 1m"), 4, "tokens[0].lifetime", []string{"serve_margin (1m) must be shorter than lifetime (1m)"}, 0},
	{"margin over lifetime", insert(oauth2File, 4, "    serve_margin: 2h"), 4, "tokens[0].serve_margin", []string{"shorter than lifetime"}, 0},
	{"refresh too long", insert(oauth2File, 4, "    refresh_before: 59m"), 4, "tokens[0].refresh_before",
		[]string{"refresh_before (59m) + serve_margin (1m) must be shorter than lifetime (1h)"}, 0},
	{"refresh with short lifetime", insert(oauth2File, 4, "    lifetime: 16m"), 4, "tokens[0].lifetime", []string{"refresh_before (15m) + serve_margin (1m)"}, 0},
	{"margin under timeout", insert(oauth2File, 4, "    timeout: 1m"), 4, "tokens[0].timeout",
		[]string{"serve_margin (1m) must be longer than timeout (1m)", "cover the longest upstream call"}, 0},
	{"margin under timeout margin given", insert(oauth2File, 4, "    timeout: 5s\n    serve_margin: 5s"), 5, "tokens[0].serve_margin", []string{"longer than timeout"}, 0},
	{"lifetime over 24h", insert(oauth2File, 4, "    lifetime: 25h"), 4, "tokens[0].lifetime", []string{"24h"}, 0},

	// Sources and blocks.
	{"missing source", with(oauth2File, 3, ""), 2, "tokens[0].source", []string{"required", "rdp-liveness or oauth2"}, 0},
	{"bad source", with(oauth2File, 3, "    source: saml"), 3, "tokens[0].source", []string{`"saml"`}, 0},
	{"missing oauth2 block", "tokens:\n  - name: a\n    source: oauth2\n", 2, "tokens[0].oauth2", []string{"required for source oauth2"}, 0},
	{"missing rdp block", "tokens:\n  - name: a\n    source: rdp-liveness\n", 2, "tokens[0].rdp", []string{"required for source rdp-liveness"}, 0},
	{"oauth2 block for rdp", with(oauth2File, 3, "    source: rdp-liveness"), 4, "tokens[0].oauth2", []string{"refused for source rdp-liveness"}, 2},
	{"rdp block for oauth2", oauth2File + "    rdp: {client_id: c}\n", 8, "tokens[0].rdp", []string{"refused for source oauth2"}, 0},
	{"missing token_url", with(oauth2File, 5, ""), 4, "tokens[0].oauth2.token_url", []string{"required"}, 0},
	{"bad auth_style", oauth2File + "      auth_style: basic\n", 8, "tokens[0].oauth2.auth_style", []string{"auto, header, body"}, 0},
	{"rdp missing client_id", with(rdpFile, 5, ""), 4, "tokens[0].rdp.client_id", []string{"required"}, 0},
	{"rdp v2 without secret", with(rdpFile, 6, "      auth: v2"), 4, "tokens[0].rdp.client_secret", []string{"required for auth v2"}, 0},
	{"rdp v1 without password", rdpFile + "      auth: v1\n      username: u\n", 4, "tokens[0].rdp.password", []string{"required for auth v1"}, 0},
	{"rdp v1 without username", rdpFile + "      auth: v1\n      password: ${SECRET2}\n", 4, "tokens[0].rdp.username", []string{"required for auth v1"}, 0},
	{"rdp bad auth", rdpFile + "      auth: v3\n", 7, "tokens[0].rdp.auth", []string{`"v3"`}, 0},
	{"rdp bad method", rdpFile + "      liveness_method: PUT\n", 7, "tokens[0].rdp.liveness_method", []string{"POST, GET"}, 0},
	{"rdp bad path", rdpFile + "      liveness_path: verification\n", 7, "tokens[0].rdp.liveness_path", []string{"start with /"}, 0},

	// URLs.
	{"relative url", with(oauth2File, 5, "      token_url: /oauth/token"), 5, "tokens[0].oauth2.token_url", []string{"absolute"}, 0},
	{"ftp url", with(oauth2File, 5, "      token_url: ftp://idp.example.com/token"), 5, "tokens[0].oauth2.token_url", []string{"http"}, 0},
	{"url without host", with(oauth2File, 5, "      token_url: https:///token"), 5, "tokens[0].oauth2.token_url", []string{"host"}, 0},
	{"url with credentials", with(oauth2File, 5, "      token_url: https://u:hunter2-CLEAR@idp.example.com/"), 5, "tokens[0].oauth2.token_url", []string{"credentials"}, 0},
	{"rdp bad base_url", rdpFile + "      base_url: api.refinitiv.com\n", 7, "tokens[0].rdp.base_url", []string{"absolute"}, 0},

	// Mappings and documents.
	{"duplicate mapping key", oauth2File + "      client_id: d\n", 8, "tokens[0].oauth2.client_id", []string{"given twice", "line 6"}, 0},
	{"duplicate top key", oauth2File + "tokens: []\n", 8, "tokens", []string{"given twice", "line 1"}, 0},
	{"duplicate token key", insert(oauth2File, 4, "    name: b"), 4, "tokens[0].name", []string{"given twice", "line 2"}, 0},
	{"empty file", "", 0, "", []string{"empty"}, 0},
	{"comments only", "# nothing yet\n", 0, "", []string{"empty"}, 0},
	{"null document", "~\n", 0, "", []string{"empty"}, 0},
	{"list file", "- a\n- b\n", 1, "", []string{"must be a mapping", "a list"}, 0},
	{"scalar file", "hello\n", 1, "", []string{"must be a mapping", "text"}, 0},
	{"no tokens field", "keys: []\n", 1, "tokens", []string{"required"}, 0},
	{"no tokens", "tokens: []\n", 1, "tokens", []string{"at least one"}, 0},
	{"syntax error", "tokens:\n  - name: a\n    source: a: b\n", 3, "", []string{"not valid YAML", "mapping values"}, 0},
	{"tab indentation", "tokens:\n\t- name: a\n", 2, "", []string{"not valid YAML"}, 0},
	{"two documents", oauth2File + "---\ntokens: []\n", 8, "", []string{"second YAML document"}, 0},
}

func TestParseErrors(t *testing.T) {
	for _, c := range errCases {
		t.Run(c.name, func(t *testing.T) {
			cat, err := catalog.Parse([]byte(c.file), catalog.Options{File: "f.yaml", LookupEnv: lookupEnv, ReadFile: readFile})
			if err == nil {
				t.Fatalf("no error; file:\n%s", c.file)
			}
			if cat != nil {
				t.Error("a catalog with the error")
			}
			errs := problems(t, err)
			if want := max(c.count, 1); len(errs) != want {
				t.Errorf("%d problems, want %d:\n%v", len(errs), want, err)
			}
			if !hasProblem(errs, c.line, c.field, c.want) {
				t.Errorf("no problem at line %d, field %q, saying %q; got:\n%v", c.line, c.field, c.want, err)
			}
			checkNoSecret(t, err.Error())
			t.Log(err)
		})
	}
}

// hasProblem reports whether one of errs is at line, of field, and says
// each of want.
func hasProblem(errs []*catalog.Error, line int, field string, want []string) bool {
	for _, e := range errs {
		if e.Line != line || e.Field != field || e.File != "f.yaml" {
			continue
		}
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(e.Problem, w)
		}
		if ok {
			return true
		}
	}
	return false
}

// checkNoSecret fails t if s holds a secret of the tests, or the text
// the cases write in clear.
func checkNoSecret(t *testing.T, s string) {
	t.Helper()
	for _, secret := range append(secrets, "hunter2") {
		if strings.Contains(s, secret) {
			t.Errorf("%q shows a secret:\n%s", secret, s)
		}
	}
}

// TestParseAllProblems checks that a file with many problems reports each.
func TestParseAllProblems(t *testing.T) {
	file := `tokens:
  - name: Bad_Name
    source: oauth2
    lifetime: 30s
    oauth2:
      token_url: not-a-url
      client_id: c
      client_secret: hunter2-CLEAR
      colour: blue
  - name: b
    source: rdp-liveness
    required: maybe
    rdp:
      auth: v1
      client_id: c
      username: u
      password_file: /missing
keys:
  - name: k
    role: owner
    tokens: [nope]
`
	_, err := catalog.Parse([]byte(file), catalog.Options{File: "f.yaml", LookupEnv: lookupEnv, ReadFile: readFile})
	errs := problems(t, err)
	want := []struct {
		line  int
		field string
		say   string
	}{
		{2, "tokens[0].name", "not a valid name"},
		{4, "tokens[0].lifetime", "shorter than lifetime"},
		{6, "tokens[0].oauth2.token_url", "absolute"},
		{8, "tokens[0].oauth2.client_secret", "in clear"},
		{9, "tokens[0].oauth2.colour", "unknown field"},
		{12, "tokens[1].required", "true or false"},
		{17, "tokens[1].rdp.password_file", "cannot read /missing"},
		{19, "keys[0].key", "required"},
		{20, "keys[0].role", "owner"},
		{21, "keys[0].tokens[0]", "no token"},
	}
	for _, w := range want {
		if !hasProblem(errs, w.line, w.field, []string{w.say}) {
			t.Errorf("missing: line %d: %s: ...%s...", w.line, w.field, w.say)
		}
	}
	if len(errs) != len(want) {
		t.Errorf("%d problems, want %d:\n%v", len(errs), len(want), err)
	}
	for i := 1; i < len(errs); i++ {
		if errs[i].Line < errs[i-1].Line {
			t.Errorf("problems out of line order:\n%v", err)
		}
	}
	checkNoSecret(t, err.Error())
}

// TestSecretNeverInErrors checks that a secret resolved from a file or
// the environment never shows in an error, whatever else is wrong.
func TestSecretNeverInErrors(t *testing.T) {
	for _, field := range []string{"token_url", "client_id", "audience", "resource"} {
		file := fmt.Sprintf("%s      %s: ${OPS_KEY}\n      scopes: [\"${RDP_PASSWORD}\"]\n", with(oauth2File, 5, "      token_url: ${BILLING_SECRET}"), field)
		_, err := catalog.Parse([]byte(file), opts)
		if err == nil {
			t.Fatal("no error")
		}
		checkNoSecret(t, err.Error())
	}
}
