"""Test support shared by the integration tests: the real test OpenID Connect provider."""
