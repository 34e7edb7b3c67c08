#!/bin/bash
# A throwaway single-node Ceph (1 monitor + 1 memstore OSD, no mgr, auth none) and a RADOS Gateway (real S3) on
# loopback, for the S3 tier's tests. Debian 12: apt-get install -y --no-install-recommends radosgw ceph-mon ceph-osd
# Usage: start_ceph_rgw.sh STATE_DIR [RGW_PORT] [MON_PORT] [memstore|bluestore]
#   STATE_DIR (created, wiped first) holds config, data, logs and {mon,osd,rgw}.pid; stop with stop_ceph_rgw.sh.
#   S3 credentials: access key "testak", secret "testsk". Ready (answering HTTP) when this script exits 0.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 STATE_DIR [RGW_PORT] [MON_PORT] [memstore|bluestore]" >&2; exit 2; }
R=$(mkdir -p "$1" && cd "$1" && pwd)
RGW_PORT=${2:-7481}; MON_PORT=${3:-16789}; STORE=${4:-memstore}
rm -rf "${R:?}"/*; mkdir -p "$R"/{mon.a,osd.0,rgw,log,run}
FSID=$(cat /proc/sys/kernel/random/uuid); OSD_UUID=$(cat /proc/sys/kernel/random/uuid)
CONF=$R/ceph.conf
cat > "$CONF" <<CONF
[global]
fsid = $FSID
mon host = [v2:127.0.0.1:$MON_PORT]
public addr = 127.0.0.1
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
run dir = $R/run
admin socket = $R/run/\$name.asok
log file = $R/log/\$name.log
pid file = $R/run/\$name.pid
keyring = $R/keyring
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
[mon]
mon data = $R/mon.\$id
mon cluster log file = $R/log/cluster.log
# the monitor batches map changes for 1 s by default: each pool the gateway creates would cost ~1 s
paxos propose interval = 0.01
paxos min wait = 0.01
[osd]
osd data = $R/osd.\$id
osd objectstore = $STORE
memstore device bytes = 4294967296
bluestore block path = $R/osd.\$id.block
bluestore block create = true
bluestore block size = 21474836480
osd memory target = 1073741824
bluestore cache autotune = false
[client.rgw]
# tcp_nodelay: without it every small GET waits ~40 ms for delayed ACKs
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT tcp_nodelay=1
rgw data = $R/rgw
rgw dns name =
rgw thread pool size = 64
# radosgw (a daemon) insists on a 'secure' mon connection by default, impossible with auth none -> EACCES (-13)
ms mon client mode = crc secure
CONF
# Poll a command until it succeeds or DEADLINE_S seconds pass (no fixed waits).
wait_for() {
  local what=$1 deadline=$(( $(date +%s) + $2 )); shift 2
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then echo "ceph: $what not ready; logs in $R/log" >&2; exit 1; fi
    sleep 0.05
  done
}
osd_up() { ceph -c "$CONF" osd stat 2>/dev/null | grep -q ' 1 up'; }
rgw_listening() { (exec 3<>"/dev/tcp/127.0.0.1/$RGW_PORT") 2>/dev/null; }

monmaptool --create --fsid "$FSID" --addv a "[v2:127.0.0.1:$MON_PORT]" "$R/monmap" >/dev/null
ceph-authtool --create-keyring "$R/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-mon -c "$CONF" --mkfs -i a --monmap "$R/monmap" --keyring "$R/keyring"
ceph-mon -c "$CONF" -i a -f >"$R/log/mon.out" 2>&1 & echo $! > "$R/mon.pid"
ceph -c "$CONF" --connect-timeout 30 mon stat >/dev/null
OSD_ID=$(ceph -c "$CONF" osd new "$OSD_UUID")
ceph-osd -c "$CONF" -i "$OSD_ID" --mkfs --osd-uuid "$OSD_UUID" >"$R/log/osd-mkfs.out" 2>&1
ceph-osd -c "$CONF" -i "$OSD_ID" -f >"$R/log/osd.out" 2>&1 & echo $! > "$R/osd.pid"
wait_for "OSD" 60 osd_up
# Creating the S3 user also creates the gateway's pools.
radosgw-admin -c "$CONF" user create --uid=test --display-name=test --access-key=testak --secret-key=testsk >/dev/null
radosgw -c "$CONF" -n client.rgw -f >"$R/log/rgw.out" 2>&1 & echo $! > "$R/rgw.pid"
wait_for "radosgw on port $RGW_PORT" 60 rgw_listening
