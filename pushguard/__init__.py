"""The `pushguard` command: the front door that composes engine, simulator and console."""
