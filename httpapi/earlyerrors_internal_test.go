package httpapi

import "testing"

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
