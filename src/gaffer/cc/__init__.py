"""`gaffer cc` / `gaffer ld`: the compiler and linker launcher (ccache- and distcc-like) on gaffer's cache."""
