"""Arena: a small game-platform backend built on Chirp.

Packages:
    user: players, handles and follows (workers, operations, store).
    notify: notifications about follows; extends `user` by consuming its messages.
    gateway: the HTTP API in front of both.
    demo: starts everything and sends traffic through the gateway.
"""
