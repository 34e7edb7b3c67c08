"""`gaffer worker`: takes actions from a REAPI server's Bots service (gaffer serve, BuildGrid) and runs them."""
