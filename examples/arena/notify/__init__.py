"""The notify package: tells players who followed them.

It extends the user package without the user package knowing: it only consumes the
`user-follow-complete` messages the user package publishes anyway, and calls its
`user-get` operation.
"""
