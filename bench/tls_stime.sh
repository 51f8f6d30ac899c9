#!/bin/bash
# One `openssl s_time -new` run (one client, a full TLS handshake per
# connection, for 5 s) against a TLS server child of the bench test binary:
# herd's HTTP server on 2 loops or net/http, GOMAXPROCS=2. Prints the
# connections s_time made and the server's CPU per handshake
# (utime+stime from /proc, 10 ms ticks).
#
#	cd bench && go test -c -o /tmp/bench.test . &&
#	for i in 1 2 3 4 5; do ./tls_stime.sh herd; ./tls_stime.sh nethttp; done
set -eu
kind=${1:?usage: tls_stime.sh herd|nethttp}
bin=${BENCH_TEST:-/tmp/bench.test}
coproc SRV { HERD_BENCH_TLS_SERVER=$kind GOMAXPROCS=2 "$bin" -test.run '^$' -test.bench '^$'; }
read -r addr pid <&"${SRV[0]}"
sleep 0.3
t0=$(awk '{print $14+$15}' /proc/$pid/stat)
n=$(openssl s_time -connect "$addr" -new -time 5 2>/dev/null | awk '/connections in/ {print $1; exit}')
t1=$(awk '{print $14+$15}' /proc/$pid/stat)
[ -n "$n" ] || { echo "tls_stime.sh: openssl s_time made no connection" >&2; exit 1; }
in=${SRV[1]}
exec {in}>&- # the child serves until its stdin closes
wait
awk -v k="$kind" -v n="$n" -v t="$((t1 - t0))" 'BEGIN { printf "%s connections=%d server-cpu-us/handshake=%.0f\n", k, n, t * 10000 / n }'
