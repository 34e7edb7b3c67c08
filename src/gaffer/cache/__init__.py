"""The content-addressed cache: a CAS + action cache, local disk first, remote tiers behind."""
