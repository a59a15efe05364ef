"""engine/push"""
