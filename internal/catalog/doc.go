// Package catalog decodes and validates the token catalog file: a YAML
// file that describes the tokens a fleet keeps and the API keys that may
// read them.
//
// Parse (or Load) decodes a file strictly and reports every problem of it
// at once, as an errors.Join of *Error values, each naming the line and
// the field (tokens[1].oauth2.token_url) it concerns: an unknown field, a
// value of the wrong type, a field given twice, a duplicate name, a secret
// written in clear, timings that cannot work, and so on. What it returns
// is a Catalog with the defaults filled in and the secrets resolved.
//
// # The file
//
//	tokens:
//	  - name: liveness              # [a-z0-9][a-z0-9-]{0,39}, unique
//	    source: rdp-liveness        # rdp-liveness | oauth2
//	    required: true              # readiness needs it servable (default true)
//	    serve_margin: 1m            # default 1m
//	    refresh_before: 15m         # default 15m
//	    lifetime: 60m               # assumed when the upstream names none; default 60m; at most 24h
//	    timeout: 10s                # each upstream HTTP call; default 10s
//	    auth_per_minute: 20         # fleet-wide cap on sign-ons for this token; default 20
//	    rdp:                        # required for rdp-liveness, refused for oauth2
//	      base_url: https://api.refinitiv.com   # default; absolute http(s) URL
//	      auth: v2                  # v2 (default) | v1
//	      client_id: ${RDP_CLIENT_ID}           # required
//	      client_secret_file: /run/secrets/rdp  # secret: v2 requires client_secret
//	      username: svc-user        # v1 requires username and password
//	      password: ${RDP_PASSWORD} # secret
//	      scope: trapi              # default trapi
//	      liveness_path: /verification/v1/liveness/token  # default
//	      liveness_method: POST     # POST (default) | GET
//	  - name: billing-api
//	    source: oauth2
//	    lifetime: 24h
//	    oauth2:                     # required for oauth2, refused for rdp-liveness
//	      token_url: https://tenant.example.com/oauth/token   # required
//	      client_id: my-client      # required
//	      client_secret: ${BILLING_SECRET}   # secret, required
//	      scopes: [read:billing, write:billing]
//	      audience: https://billing.example.com   # optional endpoint parameter
//	      resource: https://billing.example.com   # optional endpoint parameter (Azure style)
//	      params: {foo: bar}        # other endpoint parameters
//	      auth_style: header        # header | body | auto (default auto)
//	keys:
//	  - name: mobile-backend        # a label for logs, same rule as token names, unique
//	    role: reader                # reader | admin | metrics (default reader)
//	    key_file: /run/secrets/mobile_key   # secret
//	    tokens: [liveness]          # omitted or ["*"]: every token
//	  - name: ops
//	    role: admin
//	    key: ${OPS_KEY}
//
// At least one token is required; keys are optional. A field not listed
// above is an error, and so is a field given twice in one mapping.
//
// # Values
//
// Durations are Go durations (90s, 15m, 1h30m) and must be positive. URLs
// (base_url, token_url) are absolute http or https URLs with a host and
// without credentials in them. liveness_path starts with a slash. scopes
// and a key's tokens are lists of strings; params is a mapping of strings
// in which audience, resource, grant_type, scope, client_id and
// client_secret are refused (each has its own field, or is not the
// file's to set).
//
// An rdp block needs client_id, and a client_secret for auth v2, or a
// username and password for auth v1 (which may give a client_secret too).
//
// The timings of a token must be able to work together:
//
//   - serve_margin < lifetime, and refresh_before + serve_margin < lifetime:
//     a freshly fetched token must be servable, and not already due for
//     refresh;
//   - serve_margin > timeout: a token fetched with less life left than the
//     margin is refused, so the margin must cover the longest upstream call;
//   - lifetime ≤ 24h and auth_per_minute ≥ 1.
//
// A key's tokens name tokens of the same file; "*" alone stands for every
// token, as does leaving tokens out. A key of the metrics role guards
// /metrics only. Two keys may not share one key value.
//
// # Secrets and environment variables
//
// client_secret, password and key are secrets. Each is given either as
// FIELD_file: PATH, the content of that file with one trailing newline
// trimmed (an unreadable or empty file is an error), or as FIELD: ${NAME},
// the value of the environment variable NAME (unset or empty is an error).
// A secret written in clear is refused, and giving both FIELD and
// FIELD_file is an error. Paths are taken as written (relative to the
// working directory of the process) and are not expanded.
//
// The other free-text fields (base_url, client_id, username, scope,
// liveness_path, token_url, scopes, audience, resource and the values of
// params) may also be written as one whole ${NAME} reference, expanded in
// the same way. Any other text containing $ is kept as written; names,
// sources, roles and the other enumerations are never expanded.
//
// No secret value ever appears in an error, in Describe's table or in the
// String of an RDP, OAuth2 or Key: only where it comes from ("from file
// /run/secrets/rdp", "from $OPS_KEY").
//
// YAML anchors and aliases may be used; merge keys (<<) are refused. A
// file holds one YAML document.
package catalog
