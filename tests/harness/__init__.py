"""What the tests share: the test app's helpers, the error contract, the local peers, servers and browser pages."""
