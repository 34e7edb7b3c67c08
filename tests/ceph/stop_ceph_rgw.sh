#!/bin/sh
# Stop the daemons start_ceph_rgw.sh recorded in STATE_DIR, by PID, gateway first. SIGKILL: the cluster is
# throwaway (start_ceph_rgw.sh wipes STATE_DIR), and a graceful Ceph shutdown takes ~2 s per daemon.
# Usage: stop_ceph_rgw.sh STATE_DIR
[ $# -eq 1 ] || { echo "usage: $0 STATE_DIR" >&2; exit 2; }
for d in rgw osd mon; do
  f=$1/$d.pid
  [ -f "$f" ] || continue
  p=$(cat "$f")
  if kill -9 "$p" 2>/dev/null; then
    # gone, or a zombie waiting for its reaper
    i=0
    while [ $i -lt 40 ] && [ -d "/proc/$p" ] && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$p/stat" 2>/dev/null; do
      sleep 0.05; i=$((i + 1))
    done
  fi
  rm -f "$f"
done
exit 0
