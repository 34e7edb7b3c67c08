"""`gobuildcache` / `gaffer gocache`: the GOCACHEPROG protocol over gaffer's cache (docs/gocache.md).

Nothing is imported here: `go` starts the program for every command and waits for CAPABILITIES, which main.py
writes before it imports the protocol or the cache.
"""

KNOWN_COMMANDS = ("get", "put", "close")
CAPABILITIES = b'{"ID":0,"KnownCommands":["get","put","close"]}\n'
