"""CPython's own socketserver, http.server and xmlrpc.server tests, run against trioserve.

Not part of the package: ``make compat`` runs them (see `compat.run`).
"""
