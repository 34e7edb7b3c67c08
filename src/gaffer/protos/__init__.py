"""REAPI v2, semver and ByteStream protos (a wire-compatible subset) and their generated Python."""
