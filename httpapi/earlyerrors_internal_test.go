package httpapi

import (
	"net"
	"slices"
	"testing"
	"time"
)

// TestParseEarlyAnswer checks that only net/http's own error writes are
// recognised, not answers or parts of answers that resemble them.
func TestParseEarlyAnswer(t *testing.T) {
	const h = earlyHeaders
	tests := []struct {
		name       string
		write      string
		ok         bool
		status     int
		wantDetail string
	}{
		{"431", "HTTP/1.1 431 Request Header Fields Too Large" + h + "431 Request Header Fields Too Large", true, 431, ""},
		{"400", "HTTP/1.1 400 Bad Request" + h + "400 Bad Request", true, 400, ""},
		{"400 with detail", "HTTP/1.1 400 Bad Request: malformed Host header" + h + "400 Bad Request: malformed Host header", true, 400, "malformed Host header"},
		{"501", "HTTP/1.1 501 Not Implemented" + h + "Unsupported transfer encoding", true, 501, ""},
		{"505", "HTTP/1.1 505 HTTP Version Not Supported: unsupported protocol version" + h + "505 HTTP Version Not Supported: unsupported protocol version", true, 505, "unsupported protocol version"},
		{"handler answer", "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nDate: Mon, 02 Jan 2006 15:04:05 GMT\r\n\r\n400 Bad Request", false, 0, ""},
		{"success status", "HTTP/1.1 200 OK" + h + "200 OK", false, 0, ""},
		{"other body", "HTTP/1.1 400 Bad Request" + h + "400 Bad Request and more", false, 0, ""},
		{"body cut", "HTTP/1.1 400 Bad Request" + h + "400 Bad", false, 0, ""},
		{"headers cut", "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain", false, 0, ""},
		{"HTTP/1.0", "HTTP/1.0 400 Bad Request" + h + "400 Bad Request", false, 0, ""},
		{"body chunk", `{"status":"ok"}`, false, 0, ""},
		{"not a status", "HTTP/1.1 4x0 Bad Request" + h + "4x0 Bad Request", false, 0, ""},
		{"empty", "", false, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, detail, ok := parseEarlyAnswer([]byte(tt.write))
			if ok != tt.ok || status != tt.status || detail != tt.wantDetail {
				t.Errorf("parseEarlyAnswer = %d, %q, %v; want %d, %q, %v", status, detail, ok, tt.status, tt.wantDetail, tt.ok)
			}
		})
	}
}

// deadlineConn records the write deadlines set on it, and swallows writes.
type deadlineConn struct {
	net.Conn // nil: only the deadline methods and Write are called
	set      []time.Time
	writes   int
}

func (c *deadlineConn) SetWriteDeadline(t time.Time) error {
	c.set = append(c.set, t)
	return nil
}

func (c *deadlineConn) SetDeadline(t time.Time) error { return c.SetWriteDeadline(t) }

func (c *deadlineConn) Write(p []byte) (int, error) {
	c.writes++
	return len(p), nil
}

// TestCoarseWriteDeadline checks that a write deadline is set
// writeDeadlineSlack late and left alone by the asks that follow within
// the slack; that no deadline is applied before the next write, unless a
// deadline is asked for first; and that an earlier deadline and a past one
// (a way to interrupt a write) go through at once.
func TestCoarseWriteDeadline(t *testing.T) {
	base := time.Now().Add(time.Minute) // in the future, as WriteTimeout's deadlines are
	past := time.Unix(1, 0)
	write := time.Time{}.Add(1) // a step that writes instead of asking for a deadline
	steps := []struct {
		name string
		call time.Time   // the deadline asked for, or write
		want []time.Time // the deadlines the connection got, all along
	}{
		{"first", base, []time.Time{base.Add(writeDeadlineSlack)}},
		{"within the slack", base.Add(writeDeadlineSlack / 2), []time.Time{base.Add(writeDeadlineSlack)}},
		{"at the end of the slack", base.Add(writeDeadlineSlack), []time.Time{base.Add(writeDeadlineSlack)}},
		{"past the slack", base.Add(writeDeadlineSlack + 1), []time.Time{base.Add(writeDeadlineSlack), base.Add(2*writeDeadlineSlack + 1)}},
		{"earlier than the last asked", base.Add(writeDeadlineSlack), []time.Time{base.Add(writeDeadlineSlack), base.Add(2*writeDeadlineSlack + 1), base.Add(2 * writeDeadlineSlack)}},
		{"none, not yet applied", time.Time{}, []time.Time{base.Add(writeDeadlineSlack), base.Add(2*writeDeadlineSlack + 1), base.Add(2 * writeDeadlineSlack)}},
		{"a write applies none", write, []time.Time{base.Add(writeDeadlineSlack), base.Add(2*writeDeadlineSlack + 1), base.Add(2 * writeDeadlineSlack), {}}},
		{"after none", base.Add(2 * writeDeadlineSlack), []time.Time{base.Add(writeDeadlineSlack), base.Add(2*writeDeadlineSlack + 1), base.Add(2 * writeDeadlineSlack), {}, base.Add(3 * writeDeadlineSlack)}},
		{"none again", time.Time{}, []time.Time{base.Add(writeDeadlineSlack), base.Add(2*writeDeadlineSlack + 1), base.Add(2 * writeDeadlineSlack), {}, base.Add(3 * writeDeadlineSlack)}},
		{"a deadline within the slack before any write", base.Add(2*writeDeadlineSlack + writeDeadlineSlack/2), []time.Time{base.Add(writeDeadlineSlack), base.Add(2*writeDeadlineSlack + 1), base.Add(2 * writeDeadlineSlack), {}, base.Add(3 * writeDeadlineSlack)}},
		{"so a write keeps it", write, []time.Time{base.Add(writeDeadlineSlack), base.Add(2*writeDeadlineSlack + 1), base.Add(2 * writeDeadlineSlack), {}, base.Add(3 * writeDeadlineSlack)}},
		{"in the past", past, []time.Time{base.Add(writeDeadlineSlack), base.Add(2*writeDeadlineSlack + 1), base.Add(2 * writeDeadlineSlack), {}, base.Add(3 * writeDeadlineSlack), past}},
	}
	inner := &deadlineConn{}
	c := &earlyConn{Conn: inner}
	writes := 0
	for _, st := range steps {
		if st.call.Equal(write) {
			if _, err := c.Write([]byte("x")); err != nil {
				t.Fatalf("%s: Write: %v", st.name, err)
			}
			if writes++; inner.writes != writes {
				t.Fatalf("%s: the connection got %d writes, want %d", st.name, inner.writes, writes)
			}
		} else if err := c.SetWriteDeadline(st.call); err != nil {
			t.Fatalf("%s: SetWriteDeadline: %v", st.name, err)
		}
		if !slices.EqualFunc(inner.set, st.want, time.Time.Equal) {
			t.Fatalf("%s: deadlines set %v, want %v", st.name, inner.set, st.want)
		}
	}
	// SetDeadline is exact, and a later SetWriteDeadline compares with it.
	exact := base.Add(time.Hour)
	if err := c.SetDeadline(exact); err != nil {
		t.Fatal(err)
	}
	if err := c.SetWriteDeadline(exact); err != nil {
		t.Fatal(err)
	}
	if got := inner.set[len(inner.set)-1]; !got.Equal(exact) || len(inner.set) != len(steps[len(steps)-1].want)+1 {
		t.Errorf("after SetDeadline(%v) and the same write deadline: deadlines set %v", exact, inner.set)
	}
}
