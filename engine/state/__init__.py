"""engine/state"""
