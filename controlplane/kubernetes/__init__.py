"""Kubernetes adapters of the control plane: discovery, in-cluster auth (TokenReview), the
injection webhook and its certificate.

This package is the only one that imports kubernetes_asyncio (an import-linter contract
checks it), and only its I/O modules do (`client`, and what uses it); the pure modules
(`identity`, `injection`, `admission`) import nothing of it, so `forklane inject` works
offline. Importing the package itself loads nothing.
"""
