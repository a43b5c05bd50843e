#!/bin/bash
# Short connections through two relays in a row: plain, then with send-proxy on the first and
# accept-proxy on the second, interleaved; prints transactions/s per round (README, PROXY protocol).
# Usage: perf/proxy_crr.sh [VSPLICE_BINARY]   (default target/release/vsplice)
V=${1:-target/release/vsplice}
P1=$((31000 + RANDOM % 1000)); P2=$((P1+1)); P3=$((P1+2)); P4=$((P1+3)); P5=$((P1+4))
$V bench server TCP-LISTEN:$P1 >/dev/null 2>&1 & S=$!
$V TCP-LISTEN:$P2,fork TCP:127.0.0.1:$P1 2>/dev/null & B0=$!
$V TCP-LISTEN:$P3,fork TCP:127.0.0.1:$P2 2>/dev/null & A0=$!
$V TCP-LISTEN:$P4,fork,accept-proxy TCP:127.0.0.1:$P1 2>/dev/null & B1=$!
$V TCP-LISTEN:$P5,fork TCP:127.0.0.1:$P4,send-proxy 2>/dev/null & A1=$!
sleep 1
for round in 1 2 3 4 5 6; do
  for path in plain proxy; do
    port=$P3; [ $path = proxy ] && port=$P5
    r=$($V bench client TCP:127.0.0.1:$port --crr --streams 4 --time 4 --json 2>/dev/null | python3 -c "
import json,sys; d=json.load(sys.stdin)
def find(o,k):
    if isinstance(o,dict):
        for kk,v in o.items():
            if kk==k: return v
            r=find(v,k)
            if r is not None: return r
    if isinstance(o,list):
        for v in o:
            r=find(v,k)
            if r is not None: return r
def all_(o,k,out):
    if isinstance(o,dict):
        for kk,v in o.items():
            if kk==k: out.append(v)
            all_(v,k,out)
    if isinstance(o,list):
        for v in o: all_(v,k,out)
    return out
print('%.0f' % all_(d,'transactions_per_second',[])[-1])")
    echo "round $round $path $r"
  done
done
kill $S $B0 $A0 $B1 $A1
