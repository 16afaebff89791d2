#!/bin/bash
# The figures of docs/nat.md: a host behind a kernel NAT (network namespaces,
# nftables masquerade), a relay daemon, a host and a client daemon on the
# public side; time to a relay address, then tasks through the relay and
# direct. Same topology as cmd/gpunet/nat_test.go. Run as root from the
# repository root:
#   go build -o /tmp/gpunet ./cmd/gpunet
#   sed -n '/^const noiseGenerator = `/,/^`$/p' cmd/gpunet/nat_test.go | sed '1d;$d' | sed '1i package main' > /tmp/noise.go
#   go build -o /tmp/noise /tmp/noise.go
#   GPUNET=/tmp/gpunet NOISE=/tmp/noise docs/nat/lab.sh
set -u
B=${GPUNET:?path to a gpunet binary}; G=${NOISE:?path to the noise generator}; P=gpm
W=$P-wan; R=$P-rtr; L=$P-lan
cleanup() { kill $(jobs -p) 2>/dev/null; sleep 2; for n in $W $R $L; do ip netns del $n 2>/dev/null; done; }
trap cleanup EXIT
for n in $W $R $L; do ip netns add $n; ip -n $n link set lo up; done
ip link add eth0 netns $W type veth peer name wan0 netns $R
ip link add eth0 netns $L type veth peer name lan0 netns $R
ip -n $W addr add 11.47.0.2/24 dev eth0; ip -n $W link set eth0 up
ip -n $R addr add 11.47.0.1/24 dev wan0; ip -n $R link set wan0 up
ip -n $R addr add 10.47.0.1/24 dev lan0; ip -n $R link set lan0 up
ip -n $L addr add 10.47.0.2/24 dev eth0; ip -n $L link set eth0 up
ip -n $L route add default via 10.47.0.1
ip netns exec $R sysctl -q -w net.ipv4.ip_forward=1
ip netns exec $R nft -f - <<'N'
table ip gpunet_nat {
	chain postrouting { type nat hook postrouting priority srcnat; oifname "wan0" masquerade; }
	chain forward { type filter hook forward priority filter; policy drop;
		iifname "lan0" oifname "wan0" accept
		iifname "wan0" oifname "lan0" ct state established,related accept
	}
}
N
D=$(mktemp -d)
ip netns exec $W $B daemon --data $D/relay --listen /ip4/11.47.0.2/tcp/4001,/ip4/11.47.0.2/udp/4001/quic-v1 --api 127.0.0.1:7501 --mdns=false --json --log-level warn --reachability public > $D/relay.json 2>$D/relay.log &
sleep 1; BOOT=$(python3 -c "import json;print([a for a in json.load(open('$D/relay.json'))['addrs'] if '11.47' in a and 'tcp' in a][0])")
T1=$(date +%s.%N)
ip netns exec $L $B host --data $D/host --listen /ip4/0.0.0.0/tcp/4001,/ip4/0.0.0.0/udp/4001/quic-v1 --api 127.0.0.1:7502 --mdns=false --json --log-level warn --bootstrap $BOOT --gpu none --kernel cmd --kernel-cmd $G --kernel-models test/noise --rate-limit 0 > $D/host.json 2>$D/host.log &
for i in $(seq 120); do
  R1=$(ip netns exec $L $B status --json --api 127.0.0.1:7502 2>/dev/null | python3 -c "import json,sys;r=json.load(sys.stdin)['reach'];print(r['reachability'],len(r.get('relay_addrs',[])))" 2>/dev/null)
  case "$R1" in "private 0"|"unknown"*|"") sleep 0.5;; *) break;; esac
done
T2=$(date +%s.%N); echo "host: $R1 ; relay address after $(python3 -c "print(round($T2-$T1,1))") s"
HOSTID=$(python3 -c "import json;print(json.load(open('$D/host.json'))['peer_id'])")
ip netns exec $W $B host --data $D/whost --listen /ip4/11.47.0.2/tcp/4003 --api 127.0.0.1:7504 --mdns=false --json --log-level warn --bootstrap $BOOT --gpu none --kernel cmd --kernel-cmd $G --kernel-models test/noise-direct --rate-limit 0 > $D/whost.json 2>$D/whost.log &
ip netns exec $W $B daemon --data $D/cli --listen /ip4/11.47.0.2/tcp/4002 --api 127.0.0.1:7503 --mdns=false --json --log-level warn --bootstrap $BOOT > $D/cli.json 2>$D/cli.log &
sleep 8
for m in test/noise test/noise-direct; do for s in 64 1248; do for k in 1 2 3 4 5; do
  ip netns exec $W $B submit "t $m $s $k" --api 127.0.0.1:7503 --json --model $m --size ${s}x${s} --steps 1 --no-cache -o $D/d.png | python3 -c "import json,sys;r=json.load(sys.stdin);print('$m', $s, r['elapsed_ms'], r['host'][-6:], r['outputs'][0]['bytes'])"
done; done; done
ip netns exec $W $B peers --json --api 127.0.0.1:7503 | python3 -c "
import json,sys
for p in json.load(sys.stdin): print(p['id'][-6:], p['addrs'])"
ip netns exec $L $B status --api 127.0.0.1:7502 | grep reachab
ip netns exec $W $B status --api 127.0.0.1:7501 | grep reachab
