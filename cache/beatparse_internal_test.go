package cache

import (
	"encoding/json"
	"maps"
	"strings"
	"testing"
	"unicode/utf8"
)

// parseBeat reads the beats beat publishes without encoding/json; whatever
// it accepts, it must read as encoding/json does, and what beat writes it
// must accept.

// beatAsJSON decodes payload with encoding/json, as takeBeat does when
// parseBeat declines.
func beatAsJSON(payload string) (string, map[string]int64, bool) {
	var b beatWire
	if json.Unmarshal([]byte(payload), &b) != nil || b.Type != MsgBeat {
		return "", nil, false
	}
	return b.From, b.Body.Leases, true
}

// leaseMap is leases as encoding/json would decode them: the last of a
// name wins.
func leaseMap(leases []lease) map[string]int64 {
	m := make(map[string]int64, len(leases))
	for _, l := range leases {
		m[l.name] = l.ms
	}
	return m
}

// marshalBeat is a beat as beat publishes it.
func marshalBeat(t testing.TB, from string, leases map[string]int64) string {
	body, err := json.Marshal(beatBody{Leases: leases})
	if err != nil {
		t.Fatal(err)
	}
	m, err := json.Marshal(Message{Type: MsgBeat, From: from, Body: body})
	if err != nil {
		t.Fatal(err)
	}
	return string(m)
}

func TestParseBeatReadsWhatBeatWrites(t *testing.T) {
	for _, c := range []struct {
		from   string
		leases map[string]int64
	}{
		{"replica-1", map[string]int64{"liveness": 9876}},
		{"replica-1", map[string]int64{}},
		{"r", map[string]int64{"a": 1, "b": 10000, "c": 0, "d": -5}},
		{"tokenkeeper-7f9c-x2", map[string]int64{"token-0": 1, "token-10": 2, "token-99": 3, "token-5": 4, "token-6": 5}},
		{"ünïcode", map[string]int64{"名前": 42}},
	} {
		payload := marshalBeat(t, c.from, c.leases)
		from, leases, ok := parseBeat(payload, nil)
		if !ok {
			t.Errorf("parseBeat(%s) declined a beat as beat writes it", payload)
			continue
		}
		if from != c.from || !maps.Equal(leaseMap(leases), c.leases) {
			t.Errorf("parseBeat(%s) = %q, %v; want %q, %v", payload, from, leaseMap(leases), c.from, c.leases)
		}
	}
}

func TestParseBeatDeclinesOtherForms(t *testing.T) {
	for _, payload := range []string{
		`{"type":"beat","from":"a\"b","body":{"l":{"x":1}}}`, // an escape
		`{"type":"beat","from":"a","body":{"l":{"x\u0041":1}}}`,
		`{"type":"beat", "from":"a","body":{"l":{"x":1}}}`, // a space
		`{"type":"beat","from":"a","body":{"l":{"x":1.5}}}`,
		`{"type":"beat","from":"a","body":{"l":{"x":01}}}`,
		`{"type":"beat","from":"a","body":{"l":{"x":-01}}}`,
		`{"type":"beat","from":"a","body":{"l":{"x":-}}}`,
		`{"type":"beat","from":"a","body":{"l":{"x":99999999999999999999}}}`,
		`{"type":"beat","from":"a","body":{"l":{"x":1,}}}`,
		`{"type":"beat","from":"a","body":{"l":{"x":1}},"tp":"00-ab"}`, // a field more
		`{"type":"beat","from":"a","body":{"l":{"x":1}}}}`,
		`{"type":"beat","from":"a","body":{"l":{"x":1}}`,
		`{"type":"beat","from":"a` + "\x01" + `","body":{"l":{}}}`,
		`{"type":"beat","from":"a` + "\xff" + `","body":{"l":{}}}`,
		`{"type":"beat","body":{"l":{"x":1}}}`, // no from
	} {
		if from, leases, ok := parseBeat(payload, nil); ok {
			t.Errorf("parseBeat(%s) = %q, %v, true; want it declined", payload, from, leases)
		}
	}
}

func FuzzParseBeat(f *testing.F) {
	f.Add(marshalBeat(f, "replica-1", map[string]int64{"liveness": 9876}))
	f.Add(marshalBeat(f, "r", map[string]int64{"a": 1, "b": -2, "c": 0}))
	f.Add(`{"type":"beat","from":"a","body":{"l":{"x":1,"x":2}}}`)
	f.Add(`{"type":"beat","from":"a\"b","body":{"l":{}}}`)
	f.Fuzz(func(t *testing.T, payload string) {
		from, leases, ok := parseBeat(payload, nil)
		if !ok {
			return
		}
		if !strings.HasPrefix(payload, beatPrefix) || !utf8.ValidString(payload) {
			t.Fatalf("parseBeat(%q) accepted a payload that is no beat in valid UTF-8", payload)
		}
		jfrom, jleases, jok := beatAsJSON(payload)
		if !jok {
			t.Fatalf("parseBeat(%q) accepted what encoding/json refuses", payload)
		}
		if from != jfrom || !maps.Equal(leaseMap(leases), jleases) {
			t.Fatalf("parseBeat(%q) = %q, %v; encoding/json reads %q, %v", payload, from, leaseMap(leases), jfrom, jleases)
		}
	})
}
