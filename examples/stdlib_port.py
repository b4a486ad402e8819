"""The socketserver documentation's TCP example, served by trioserve: only the import changed.

This is a plain standard-library program: ``MyTCPHandler`` is the ``socketserver``
documentation's ("socketserver.TCPServer Example"), and the server is run as the
documentation runs it, with a blocking ``server.serve_forever()``. The one change is the
import (``import trioserve as socketserver``): trioserve then runs the blocking handler in
a worker thread and serves from its own Trio run. The handler stops reading at end of
file, so a client that closes without a newline is answered at once, not spun on; the
port may be given on the command line (0 for any free one), and the address is printed.

Run it, then send it a line; it prints what it received and answers in upper case::

    python examples/stdlib_port.py           # localhost:9999
    python examples/stdlib_port.py --help
    echo "hello world" | nc localhost 9999

Ctrl-C stops it, as it stops the original: with a ``KeyboardInterrupt`` traceback.
"""

# The handler is kept as the documentation has it, without annotations.
# mypy: allow-untyped-defs

import argparse

import trioserve as socketserver  # the only change: was `import socketserver`


class MyTCPHandler(socketserver.BaseRequestHandler):
    """
    The request handler class for our server.

    It is instantiated once per connection to the server, and must
    override the handle() method to implement communication to the
    client.
    """

    def handle(self):
        # self.request is the TCP socket connected to the client
        pieces = [b""]
        total = 0
        while b"\n" not in pieces[-1] and total < 10_000:
            pieces.append(self.request.recv(2000))
            if not pieces[-1]:
                break  # the client closed without a newline
            total += len(pieces[-1])
        self.data = b"".join(pieces)
        print(f"Received from {self.client_address[0]}:")
        print(self.data.decode("utf-8"))
        # just send back the same data, but upper-cased
        self.request.sendall(self.data.upper())
        # after we return, the socket will be closed.


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The socketserver documentation's example.")
    parser.add_argument("port", nargs="?", type=int, default=9999, help="default 9999; 0: any")
    HOST, PORT = "localhost", parser.parse_args().port

    # Create the server, binding to localhost on port 9999
    with socketserver.TCPServer((HOST, PORT), MyTCPHandler) as server:
        print("listening on tcp {}:{}".format(*server.server_address), flush=True)
        # Activate the server; this will keep running until you
        # interrupt the program with Ctrl-C
        server.serve_forever()
