#!/usr/bin/python3
"""tests/fleet/proxy.py - a Redis-aware TCP proxy that a test can tell to
misbehave, for the fleet tests (issue 12).

    /usr/bin/python3 tests/fleet/proxy.py --upstream 127.0.0.1:6379

listens on 127.0.0.1 at a free port (or --listen PORT) and prints one line,
"proxy listen=PORT ctl=PORT", when ready.  Clients connect to `listen`; the
proxy reads whole RESP commands from them, forwards each to the upstream and
each whole reply back, one at a time per connection (the agent sends one
command at a time).  A test steers it through the control port, one command
per line, answered by "ok ..." or "err ...":

    pass                 clear every fault (and end a cut or a black hole)
    delay MS             hold every reply MS milliseconds
    blackhole            swallow every command, never answer (connections stay)
    cut                  close every connection now; close new ones at once
    garbage CMD          the next CMD's reply is replaced by bytes that are not RESP
    truncate CMD N       the next CMD's reply is cut after N bytes, then the
                         connection is closed
    stall CMD N          the next CMD's reply stops after N bytes; the
                         connection stays open, silent
    reply CMD HEX        the next CMD's reply is replaced by these bytes (hex)
    deny CMD             every CMD is answered "-ERR unknown command" and not
                         forwarded (CMD FUNCTION and FCALL: a Redis 6)
    stats                "ok NAME=COUNT ..." commands received, by name
    reset-stats          zero them
    quit                 exit

The one-shot faults (garbage, truncate, stall, reply) forward the command
first: the store acts on it, only the answer is lost or damaged, which is
what a client must survive (its retry carries the same sequence number).
CMD is a command name, case-insensitive (FCALL, EVALSHA, AUTH, ...).
Only the standard library; no traffic but to the upstream given.
"""
import argparse
import os
import socket
import sys
import threading
import time


class Closed(Exception):
    pass


class Reader:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b''

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise Closed()
        self.buf += data

    def line(self):
        while True:
            i = self.buf.find(b'\r\n')
            if i >= 0:
                ln, self.buf = self.buf[:i + 2], self.buf[i + 2:]
                return ln
            self._fill()

    def exact(self, n):
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data


def read_command(rd):
    """One client command: (name, raw bytes)."""
    first = rd.line()
    if first.startswith(b'*'):
        n = int(first[1:-2])
        raw, args = [first], []
        for _ in range(n):
            hdr = rd.line()
            if not hdr.startswith(b'$'):
                raise Closed()
            ln = int(hdr[1:-2])
            body = rd.exact(ln + 2)
            raw += [hdr, body]
            args.append(body[:-2])
        name = args[0].decode('latin-1').upper() if args else ''
        return name, b''.join(raw)
    words = first.split()
    name = words[0].decode('latin-1').upper() if words else ''
    return name, first


def read_reply(rd):
    """One whole RESP2 reply, as raw bytes."""
    first = rd.line()
    t = first[:1]
    if t in (b'+', b'-', b':'):
        return first
    if t == b'$':
        n = int(first[1:-2])
        return first if n < 0 else first + rd.exact(n + 2)
    if t == b'*':
        n = int(first[1:-2])
        parts = [first]
        for _ in range(max(n, 0)):
            parts.append(read_reply(rd))
        return b''.join(parts)
    raise Closed()


class Proxy:
    def __init__(self, upstream):
        self.upstream = upstream
        self.lock = threading.Lock()
        self.delay_ms = 0
        self.blackhole = False
        self.cut = False
        self.deny = set()
        self.oneshot = {}     # name -> (kind, arg)
        self.stats = {}
        self.conns = set()

    def take(self, name):
        with self.lock:
            return self.oneshot.pop(name, None)

    def close_all(self):
        with self.lock:
            conns = list(self.conns)
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def serve_client(self, cs):
        up = None
        with self.lock:
            self.conns.add(cs)
        try:
            if self.cut:
                return
            rd = Reader(cs)
            while True:
                name, raw = read_command(rd)
                with self.lock:
                    self.stats[name] = self.stats.get(name, 0) + 1
                    blackhole, deny = self.blackhole, name in self.deny
                if blackhole:
                    continue
                if deny:
                    cs.sendall(b"-ERR unknown command '" + name.encode() +
                               b"', with args beginning with: \r\n")
                    continue
                if up is None:
                    up = socket.create_connection(self.upstream, timeout=30)
                    with self.lock:
                        self.conns.add(up)
                    urd = Reader(up)
                up.sendall(raw)
                reply = read_reply(urd)
                fault = self.take(name)
                if self.delay_ms:
                    time.sleep(self.delay_ms / 1000.0)
                if fault is None:
                    cs.sendall(reply)
                elif fault[0] == 'garbage':
                    cs.sendall(b'?not RESP at all\r\n')
                elif fault[0] == 'reply':
                    cs.sendall(fault[1])
                elif fault[0] == 'truncate':
                    cs.sendall(reply[:fault[1]])
                    return
                elif fault[0] == 'stall':
                    cs.sendall(reply[:fault[1]])
                    while cs.recv(65536):
                        pass
                    return
        except (Closed, OSError, ValueError):
            pass
        finally:
            with self.lock:
                self.conns.discard(cs)
                if up is not None:
                    self.conns.discard(up)
            for s in (cs, up):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass

    def control(self, line):
        w = line.split()
        if not w:
            return 'err empty'
        op = w[0]
        with self.lock:
            if op == 'pass':
                self.delay_ms, self.blackhole, self.cut = 0, False, False
                self.deny.clear()
                self.oneshot.clear()
                return 'ok'
            if op == 'delay' and len(w) == 2:
                self.delay_ms = int(w[1])
                return 'ok'
            if op == 'blackhole':
                self.blackhole = True
                return 'ok'
            if op == 'deny' and len(w) == 2:
                self.deny.add(w[1].upper())
                return 'ok'
            if op == 'garbage' and len(w) == 2:
                self.oneshot[w[1].upper()] = ('garbage', None)
                return 'ok'
            if op in ('truncate', 'stall') and len(w) == 3:
                self.oneshot[w[1].upper()] = (op, int(w[2]))
                return 'ok'
            if op == 'reply' and len(w) == 3:
                self.oneshot[w[1].upper()] = ('reply', bytes.fromhex(w[2]))
                return 'ok'
            if op == 'stats':
                return 'ok ' + ' '.join('%s=%d' % kv for kv in sorted(self.stats.items()))
            if op == 'reset-stats':
                self.stats.clear()
                return 'ok'
            if op == 'cut':
                self.cut = True
        if op == 'cut':
            self.close_all()
            return 'ok'
        return 'err unknown command: ' + line


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--upstream', required=True, help='HOST:PORT of Redis')
    ap.add_argument('--listen', type=int, default=0)
    ap.add_argument('--stdin-eof-exits', action='store_true',
                    help='exit when stdin closes (a parent holding a pipe dies)')
    a = ap.parse_args()
    host, port = a.upstream.rsplit(':', 1)
    px = Proxy((host, int(port)))

    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(('127.0.0.1', a.listen))
    ls.listen(64)
    cl = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    cl.bind(('127.0.0.1', 0))
    cl.listen(8)

    def accept_loop():
        while True:
            cs, _ = ls.accept()
            if px.cut:
                cs.close()
                continue
            threading.Thread(target=px.serve_client, args=(cs,), daemon=True).start()

    def ctl_conn(s):
        f = s.makefile('rw', newline='\n')
        for line in f:
            line = line.strip()
            if line == 'quit':
                f.write('ok\n')
                f.flush()
                sys.stdout.flush()
                os._exit(0)
            f.write(px.control(line) + '\n')
            f.flush()

    def ctl_loop():
        while True:
            s, _ = cl.accept()
            threading.Thread(target=ctl_conn, args=(s,), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    threading.Thread(target=ctl_loop, daemon=True).start()
    print('proxy listen=%d ctl=%d' % (ls.getsockname()[1], cl.getsockname()[1]), flush=True)
    # Run until killed (or, with --stdin-eof-exits, until stdin closes).
    if a.stdin_eof_exits:
        try:
            while sys.stdin.read(4096):
                pass
        except (OSError, ValueError):
            pass
    else:
        threading.Event().wait()


if __name__ == '__main__':
    main()
