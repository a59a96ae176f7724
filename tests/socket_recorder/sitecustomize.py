"""Records every socket connect, send and address lookup of a process that has this folder on its
PYTHONPATH and INTERP_SOCKET_LOG set (one JSON line each), so a test can check that the app never
reaches beyond this machine."""

import json
import os
import socket

_LOG = os.environ.get("INTERP_SOCKET_LOG")

if _LOG:
    def _record(kind, address):
        with open(_LOG, "a", encoding="utf-8") as handle:
            handle.write(json.dumps([kind, address if isinstance(address, str) else list(address)[:2]], default=str) + "\n")

    _connect, _connect_ex, _sendto, _getaddrinfo = (socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto,
                                                    socket.getaddrinfo)

    def connect(self, address):
        _record("connect", address)
        return _connect(self, address)

    def connect_ex(self, address):
        _record("connect", address)
        return _connect_ex(self, address)

    def sendto(self, data, *args):
        _record("sendto", args[-1])
        return _sendto(self, data, *args)

    def getaddrinfo(host, *args, **kwargs):
        _record("lookup", [host, args[0] if args else None])
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto, socket.getaddrinfo = (connect, connect_ex, sendto,
                                                                                                 getaddrinfo)
    _record("loaded", str(os.getpid()))  # the recorder is in place in this process
