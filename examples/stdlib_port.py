"""The socketserver documentation's TCP example, served by trioserve.

The handler below is the ``MyTCPHandler`` of the standard library's `socketserver`
documentation ("socketserver.TCPServer Example"), unchanged but for the quotes, which
the project's formatter normalises: a plain ``def handle``
that blocks on ``self.request.recv``. trioserve runs it in a worker thread. Only the
import and the last line change (``trio.run(server.serve_forever)``), and the port may
be given on the command line (0 for any free one); the address is printed.

Run it, then send it a line; it prints what it received and answers in upper case::

    python examples/stdlib_port.py           # localhost:9999
    echo "hello world" | nc localhost 9999

Ctrl-C stops it, as it stops the original: with a ``KeyboardInterrupt`` traceback.
"""

# The handler is kept as the documentation has it, without annotations.
# mypy: allow-untyped-defs

import sys

import trio

import trioserve as socketserver


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
            total += len(pieces[-1])
        self.data = b"".join(pieces)
        print(f"Received from {self.client_address[0]}:")
        print(self.data.decode("utf-8"))
        # just send back the same data, but upper-cased
        self.request.sendall(self.data.upper())
        # after we return, the socket will be closed.


if __name__ == "__main__":
    HOST, PORT = "localhost", int(sys.argv[1]) if len(sys.argv) > 1 else 9999

    # Create the server, binding to localhost on port 9999
    with socketserver.TCPServer((HOST, PORT), MyTCPHandler) as server:
        print("listening on tcp {}:{}".format(*server.server_address), flush=True)
        # Activate the server; this will keep running until you
        # interrupt the program with Ctrl-C
        trio.run(server.serve_forever)
