#!/usr/bin/env python3
"""Real-socket agent for the secgroup kernel test harness (standard library only).

One agent runs per namespace (`ip netns exec <ns> python3 netagent.py`) and
serves JSON requests, one per line on stdin, answering one JSON line each on
stdout (`{"id": .., "ok": true, "result": {...}}`). Requests run in their own
threads, so a slow connect does not hold up others. The agent, and with it
every listener and connection it holds, ends when stdin closes.

Operations (addresses must lie in 198.18.0.0/15 or fd00:5ec::/48):

  tcp_listen  {port, family: 4|6|"dual", addr?}  -> {handle}
              accepts connections and echoes every line back
  udp_echo    {port, family, addr?}               -> {handle}
              sends every datagram back to its sender
  close       {handle}                            -> {}
  tcp_connect {addr, port, timeoutMs, src?}       -> {status}
  tcp_open    {addr, port, timeoutMs, src?}       -> {status, handle?}
  tcp_send    {handle, text, timeoutMs}           -> {status, reply?}
  udp_request {addr, port, text, timeoutMs, src?} -> {status, reply?}
  ping        {addr, timeoutMs, src?}             -> {status}

status values: connected | refused | timeout | unreachable | blocked | reset |
closed | echoed | reply. `blocked` is EPERM/EACCES, which is what a netfilter
drop in the sender's own output hook looks like to the sender.
"""

import errno
import ipaddress
import json
import os
import select
import socket
import struct
import sys
import threading
import time

TEST_NET4 = ipaddress.ip_network('198.18.0.0/15')
TEST_NET6 = ipaddress.ip_network('fd00:5ec::/48')

_out_lock = threading.Lock()
_handles = {}
_handles_lock = threading.Lock()
_next_handle = [1]


def reply(obj):
    line = json.dumps(obj)
    with _out_lock:
        sys.stdout.write(line + '\n')
        sys.stdout.flush()


def family_of(addr: str) -> int:
    ip = ipaddress.ip_address(addr)
    net = TEST_NET4 if ip.version == 4 else TEST_NET6
    # loopback never leaves the namespace this agent runs in
    if ip not in net and not ip.is_loopback:
        raise ValueError('address %s is outside the test range %s' % (addr, net))
    return socket.AF_INET if ip.version == 4 else socket.AF_INET6


def register(obj) -> int:
    with _handles_lock:
        handle = _next_handle[0]
        _next_handle[0] += 1
        _handles[handle] = obj
    return handle


def status_of(err: OSError) -> str:
    if isinstance(err, (socket.timeout, TimeoutError)) or err.errno == errno.ETIMEDOUT:
        return 'timeout'
    if err.errno == errno.ECONNREFUSED:
        return 'refused'
    if err.errno in (errno.EPERM, errno.EACCES):
        return 'blocked'
    if err.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL):
        return 'unreachable'
    if err.errno in (errno.ECONNRESET, errno.EPIPE):
        return 'reset'
    return 'error:' + (errno.errorcode.get(err.errno or 0, str(err.errno)))


def bind_family(family):
    if family == 4:
        return socket.AF_INET, '0.0.0.0'
    return socket.AF_INET6, '::'


# --------------------------------------------------------------------------
# servers


class Listener:
    def __init__(self, sock):
        self.sock = sock
        self.closed = False
        self.conns = []
        self.lock = threading.Lock()

    def close(self):
        self.closed = True
        # shutdown() first: close() alone does not wake a thread blocked in
        # accept()/recvfrom(), and the port would stay bound until it returns
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        with self.lock:
            for c in self.conns:
                try:
                    c.close()
                except OSError:
                    pass


def tcp_listen(req):
    family = req.get('family', 'dual')
    af, any_addr = bind_family(family)
    sock = socket.socket(af, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if af == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if family == 'dual' else 1)
    addr = req.get('addr')
    if addr is not None:
        family_of(addr)
    sock.bind((addr or any_addr, req['port']))
    sock.listen(128)
    listener = Listener(sock)

    def serve(conn):
        try:
            buf = b''
            while True:
                data = conn.recv(4096)
                if not data:
                    break
                buf += data
                while b'\n' in buf:
                    line, buf = buf.split(b'\n', 1)
                    conn.sendall(line + b'\n')
        except OSError:
            pass
        finally:
            conn.close()

    def accept_loop():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with listener.lock:
                listener.conns.append(conn)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    return {'handle': register(listener)}


def udp_echo(req):
    af, any_addr = bind_family(req.get('family', 'dual'))
    sock = socket.socket(af, socket.SOCK_DGRAM)
    if af == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if req.get('family', 'dual') == 'dual' else 1)
    addr = req.get('addr')
    if addr is not None:
        family_of(addr)
    sock.bind((addr or any_addr, req['port']))
    listener = Listener(sock)

    def loop():
        while not listener.closed:
            try:
                data, peer = sock.recvfrom(65535)
                if listener.closed:
                    return
                sock.sendto(data, peer)
            except OSError:
                if listener.closed:
                    return
                # e.g. EPERM when our own output hook drops the answer: keep serving

    threading.Thread(target=loop, daemon=True).start()
    return {'handle': register(listener)}


def close(req):
    with _handles_lock:
        obj = _handles.pop(req['handle'], None)
    if obj is not None:
        obj.close()
    return {}


# --------------------------------------------------------------------------
# clients


def connect(req):
    af = family_of(req['addr'])
    sock = socket.socket(af, socket.SOCK_STREAM)
    if req.get('src'):
        family_of(req['src'])
        sock.bind((req['src'], 0))
    sock.settimeout(req.get('timeoutMs', 1000) / 1000.0)
    try:
        sock.connect((req['addr'], req['port']))
    except OSError as err:
        sock.close()
        return None, status_of(err)
    return sock, 'connected'


def tcp_connect(req):
    sock, status = connect(req)
    if sock is not None:
        sock.close()
    return {'status': status}


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b''

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def tcp_open(req):
    sock, status = connect(req)
    if sock is None:
        return {'status': status}
    return {'status': status, 'handle': register(Conn(sock))}


def tcp_send(req):
    with _handles_lock:
        conn = _handles.get(req['handle'])
    if conn is None:
        return {'status': 'closed'}
    text = req['text']
    if '\n' in text:
        raise ValueError('text must be a single line')
    sock = conn.sock
    deadline = time.monotonic() + req.get('timeoutMs', 1000) / 1000.0
    try:
        sock.settimeout(max(0.001, deadline - time.monotonic()))
        sock.sendall(text.encode() + b'\n')
        while b'\n' not in conn.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return {'status': 'timeout'}
            sock.settimeout(left)
            data = sock.recv(4096)
            if not data:
                return {'status': 'closed'}
            conn.buf += data
    except OSError as err:
        return {'status': status_of(err)}
    line, conn.buf = conn.buf.split(b'\n', 1)
    return {'status': 'echoed', 'reply': line.decode(errors='replace')}


def udp_request(req):
    af = family_of(req['addr'])
    sock = socket.socket(af, socket.SOCK_DGRAM)
    try:
        if req.get('src'):
            family_of(req['src'])
            sock.bind((req['src'], 0))
        sock.settimeout(req.get('timeoutMs', 1000) / 1000.0)
        # connect() so that an ICMP port unreachable surfaces as ECONNREFUSED
        sock.connect((req['addr'], req['port']))
        sock.send(req.get('text', 'sgt').encode())
        data = sock.recv(65535)
        return {'status': 'reply', 'reply': data.decode(errors='replace')}
    except OSError as err:
        return {'status': status_of(err)}
    finally:
        sock.close()


_ping_seq = [0]
_ping_lock = threading.Lock()


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b'\0'
    total = sum(struct.unpack('!%dH' % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


def ping(req):
    af = family_of(req['addr'])
    with _ping_lock:
        _ping_seq[0] = (_ping_seq[0] + 1) & 0xFFFF
        seq = _ping_seq[0]
    ident = os.getpid() & 0xFFFF
    if af == socket.AF_INET:
        sock = socket.socket(af, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        msg = struct.pack('!BBHHH', 8, 0, 0, ident, seq) + b'sgt-ping'
        msg = msg[:2] + struct.pack('!H', checksum(msg)) + msg[4:]
    else:
        # the kernel fills in the ICMPv6 checksum of raw ICMPv6 sockets
        sock = socket.socket(af, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        msg = struct.pack('!BBHHH', 128, 0, 0, ident, seq) + b'sgt-ping'
    try:
        if req.get('src'):
            family_of(req['src'])
            sock.bind((req['src'], 0))
        sock.sendto(msg, (req['addr'], 0))
        deadline = time.monotonic() + req.get('timeoutMs', 1000) / 1000.0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return {'status': 'timeout'}
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                return {'status': 'timeout'}
            data, peer = sock.recvfrom(65535)
            if af == socket.AF_INET:
                ihl = (data[0] & 0x0F) * 4
                data = data[ihl:]
                want = 0
            else:
                want = 129
            if ipaddress.ip_address(peer[0]) != ipaddress.ip_address(req['addr']) or len(data) < 8:
                continue
            rtype, _, _, rid, rseq = struct.unpack('!BBHHH', data[:8])
            if rtype == want and rid == ident and rseq == seq:
                return {'status': 'reply'}
            if (af == socket.AF_INET and rtype == 3) or (af == socket.AF_INET6 and rtype == 1):
                return {'status': 'unreachable'}
    except OSError as err:
        return {'status': status_of(err)}
    finally:
        sock.close()


OPS = {
    'tcp_listen': tcp_listen,
    'udp_echo': udp_echo,
    'close': close,
    'tcp_connect': tcp_connect,
    'tcp_open': tcp_open,
    'tcp_send': tcp_send,
    'udp_request': udp_request,
    'ping': ping,
    'hello': lambda req: {'pid': os.getpid()},
}


def handle(req):
    try:
        op = OPS.get(req.get('op'))
        if op is None:
            raise ValueError('unknown op %r' % req.get('op'))
        reply({'id': req.get('id'), 'ok': True, 'result': op(req)})
    except Exception as exc:
        reply({'id': req.get('id'), 'ok': False, 'error': '%s: %s' % (type(exc).__name__, exc)})


def main():
    # defence in depth: `ip netns exec` must have moved us out of the network
    # namespace of the test process that started us (the machine's own)
    try:
        parent = os.stat('/proc/%d/ns/net' % os.getppid()).st_ino
    except OSError:
        parent = None
    if os.stat('/proc/self/ns/net').st_ino == parent:
        raise SystemExit('refusing to run in the network namespace of the test process')
    reply({'ready': True})
    for line in sys.stdin:
        line = line.strip()
        if line:
            threading.Thread(target=handle, args=(json.loads(line),), daemon=True).start()
    # stdin closed: the harness is gone or done; take every socket with us
    os._exit(0)


if __name__ == '__main__':
    main()
