"""Peer frameworks draining the same backlog, run by ``.venv/peers``.

Each script has two commands: ``fill URL COUNT SIZE`` publishes one message through
the framework, copies its stream entry until COUNT are queued and exits;
``consume URL`` runs the framework's consumer with a no-op handler until killed. The
harness times the drain from outside, exactly as it times Chirp's.
"""
