"""`gobuildcache` / `gaffer gocache`: the GOCACHEPROG protocol over gaffer's cache (seed 001, docs/gocache.md).

Kept empty: `go` starts the program for every build, so nothing may be imported here.
"""
