"""`gaffer cc` / `gaffer ld`: a compiler and linker launcher that caches C/C++ compiles and links (docs/cc.md).

args.py classifies a command line, compiler.py names the compiler by content, key.py builds the direct-mode keys
and manifests, depfile.py reads and rewrites make dependency files, basedir.py makes paths checkout-relative,
result.py stores and restores outputs, launch.py is the one entry point (`handle`), link.py the linker's part,
stats.py the counters and the miss log. The per-compile path: client.c, the fast client (gaffer-cc, gaffer-ld,
masquerade; client.py builds and installs it), speaks protocol.py over a Unix socket (where: ccdir.py) to
daemon.py, which calls `handle`; admin.py is `gaffer cc --install | --daemon | --stop-daemon`.
"""
