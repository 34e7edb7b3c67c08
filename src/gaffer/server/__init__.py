"""`gaffer serve`: a cache server over local DiskStores speaking REAPI gRPC and the Bazel HTTP cache protocol."""
