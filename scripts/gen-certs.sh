#!/usr/bin/env bash
# Make a cluster CA and one certificate per node for node-to-node mutual TLS
# (cluster.raft.ssl { certfile, keyfile, cacertfile }).
#
#   scripts/gen-certs.sh OUT_DIR NODE=HOST [NODE=HOST ...]
#   scripts/gen-certs.sh /etc/strait/certs node1=10.0.0.1 node2=10.0.0.2 node3=db3.example.internal
#
# HOST is what the other nodes dial: the host part of that node's `node.name` (an IP address or
# a DNS name; several, comma-separated, for one certificate shared by nodes). Writes OUT_DIR/ca.pem, ca.key (keep ca.key offline: it signs new nodes) and
# NODE.pem + NODE.key per node. An existing ca.pem/ca.key in OUT_DIR is reused, so running it
# again with a new node only adds that node. Needs openssl.
set -euo pipefail
if [ $# -lt 2 ]; then
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
out=$1
shift
days=${DAYS:-3650}
mkdir -p "$out"
cd "$out"
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
if [ ! -f ca.pem ] || [ ! -f ca.key ]; then
    openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days "$days" -subj "/CN=strait-cluster-ca" 2>/dev/null
fi
for spec in "$@"; do
    node=${spec%%=*}
    host=${spec#*=}
    if [ -z "$node" ] || [ "$node" = "$spec" ] || [ -z "$host" ]; then
        echo "expected NODE=HOST, found: $spec" >&2
        exit 2
    fi
    # HOST may be a comma-separated list (one certificate valid for several names).
    san=""
    IFS=',' read -ra names <<< "$host"
    for h in "${names[@]}"; do
        if [[ $h =~ ^[0-9.]+$ || $h == *:* ]]; then entry="IP:$h"; else entry="DNS:$h"; fi
        san=${san:+$san,}$entry
    done
    openssl req "${ec[@]}" -keyout "$node.key" -out "$node.csr" -subj "/CN=$node" 2>/dev/null
    openssl x509 -req -in "$node.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$node.pem" \
        -days "$days" -extfile <(echo "subjectAltName=$san") 2>/dev/null
    rm -f "$node.csr"
    chmod 600 "$node.key"
    echo "$out/$node.pem ($san)"
done
chmod 600 ca.key
rm -f ca.srl
