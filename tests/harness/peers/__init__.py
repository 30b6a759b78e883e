"""Real local peers for integration and fault tests: Stripe, Cloud Storage, SendGrid, webhooks, audio, faults.

See tests/harness/peers/README.md. Importing this package starts nothing; the fixtures in
`tests.harness.peers.fixtures` do.
"""
