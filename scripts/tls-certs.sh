#!/usr/bin/env bash
# tls-certs.sh DIR writes a throw-away certificate authority and the
# certificates of the compose stack's end-to-end TLS into DIR (created if
# needed), with openssl:
#
#   ca.pem                 the CA (clients and HAProxy trust it)
#   server.pem, server-key.pem
#                          the replicas' certificate: tokenkeeper, localhost,
#                          127.0.0.1 (TOKENKEEPER_TLS_CERT / _KEY)
#   haproxy.pem            HAProxy's front certificate and key in one file
#   haproxy-client.pem     the client certificate HAProxy shows the replicas
#   mesh.pem, mesh-key.pem a client certificate, CN=mesh-gateway, for the
#                          identity the stack configures
#
# For demos and tests only: the keys are left readable by the containers'
# users and the CA's key is deleted at the end.
set -euo pipefail
dir=${1:?usage: scripts/tls-certs.sh DIR}
mkdir -p "$dir"
cd "$dir"
days=${TLS_CERT_DAYS:-30}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
	-subj "/CN=tokenkeeper demo CA" -keyout ca-key.pem -out ca.pem 2>/dev/null

# issue NAME CN EXTENSIONS signs NAME.pem and NAME-key.pem with the CA.
issue() {
	local name=$1 cn=$2 ext=$3
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$cn" \
		-keyout "$name-key.pem" -out "$name.csr" 2>/dev/null
	printf '%s\n' "$ext" >"$name.ext"
	openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
		-days "$days" -extfile "$name.ext" -out "$name.pem" 2>/dev/null
	rm -f "$name.csr" "$name.ext"
}
issue server tokenkeeper "subjectAltName=DNS:tokenkeeper,DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
issue haproxy-front localhost "subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
issue haproxy-client haproxy "extendedKeyUsage=clientAuth"
issue mesh mesh-gateway "extendedKeyUsage=clientAuth"
cat haproxy-front.pem haproxy-front-key.pem >haproxy.pem
cat haproxy-client.pem haproxy-client-key.pem >haproxy-client.pem.tmp
mv haproxy-client.pem.tmp haproxy-client.pem
rm -f haproxy-front.pem haproxy-front-key.pem haproxy-client-key.pem ca-key.pem ca.srl
chmod 0644 ./*.pem
