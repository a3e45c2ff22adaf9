"""Probes read memory and container limits, and nothing else reads /proc."""
