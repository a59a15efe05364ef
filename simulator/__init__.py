"""Simulated phones (and later fake APNs/FCM) for tests, the demo and load tests."""
