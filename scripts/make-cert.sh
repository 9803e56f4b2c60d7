#!/usr/bin/env bash
# Makes a self-signed CA and a server certificate for 127.0.0.1/localhost,
# for the demo and the tests: make-cert.sh DIR  ->  DIR/ca.pem DIR/cert.pem DIR/key.pem
set -euo pipefail
dir=${1:?usage: make-cert.sh DIR}
mkdir -p "$dir"
umask 077
cd "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=hpc-daemon test CA" \
  -keyout ca-key.pem -out ca.pem -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout key.pem -out server.csr 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > ext.cnf
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
  -extfile ext.cnf -out cert.pem 2>/dev/null
rm -f server.csr ext.cnf ca.srl
# Certificates are public (a daemon running as another user reads ca.pem);
# the keys stay 0600.
chmod 0644 ca.pem cert.pem
