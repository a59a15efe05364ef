"""The pushguard node: configuration, wire protocols, stores, shared state, servers."""
