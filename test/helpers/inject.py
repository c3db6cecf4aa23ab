#!/usr/bin/env python3
"""Probe injector for the secgroup kernel test harness (standard library only).

Started by test/helpers/injector.ts as

    ip netns exec <host-ns> python3 inject.py --client-ns <client-ns> \
        --host-mac .. --client-mac .. --iface eth0 --client-iface eth0

It lives in the *host* namespace (raw IP sockets there send the egress probes
through the host's `output` hook) and additionally holds one AF_PACKET socket
opened inside the *client* namespace, on the client end of the veth pair, to
send the ingress probes as complete Ethernet frames (so their source address can
be any test address).

Protocol: one JSON object per line on stdin, one JSON answer per line on stdout.

    {"id": 1, "op": "batch", "probes": [...], "sentinel": 17, "timeoutMs": 2000}

Every probe carries a `tag`: the IPv4 identification field or the IPv6 flow
label, plus the marker TTL / hop limit 123, so that the observer table
(`table inet sgt_observe`, see observe.ts) can recognise it. After sending,
the injector polls `nft -j list table inet sgt_observe` until the sentinel
(a last IPv4 ingress probe) has reached the host's prerouting hook: packets on
the veth are processed in order on one CPU (we pin ourselves to one), so by
then every earlier probe has fully traversed the host's input path. After
answering, it flushes the sets, so each listing only holds the current batch.

Safety: every address must be inside 198.18.0.0/15 or fd00:5ec::/48; anything
else is refused before a single byte is sent.
"""

import argparse
import ctypes
import errno
import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys
import time

MARK_TTL = 123
TEST_NET4 = ipaddress.ip_network('198.18.0.0/15')
TEST_NET6 = ipaddress.ip_network('fd00:5ec::/48')
CLONE_NEWNET = 0x40000000
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
OBSERVE_TABLE = 'sgt_observe'


# --------------------------------------------------------------------------
# checksums


def inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b'\0'
    total = sum(struct.unpack('!%dH' % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


def _crc32c_table():
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = CRC32C_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def pseudo_header(family: int, src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if family == 4:
        return src + dst + struct.pack('!BBH', 0, proto, length)
    return src + dst + struct.pack('!I3xB', length, proto)


# --------------------------------------------------------------------------
# packet construction


def transport(probe: dict, src: bytes, dst: bytes) -> bytes:
    family = probe['family']
    proto = probe['protocol']
    tag = probe['tag']
    sport = probe.get('sport')
    dport = probe.get('dport')
    sport = 40000 if sport is None else sport
    dport = 0 if dport is None else dport
    if proto == 6:  # TCP SYN, data offset 5, no options
        hdr = struct.pack('!HHIIBBHHH', sport, dport, 0x5EC00000 + tag, 0, 5 << 4, 0x02, 64240, 0, 0)
        csum = inet_checksum(pseudo_header(family, src, dst, 6, len(hdr)) + hdr)
        return hdr[:16] + struct.pack('!H', csum) + hdr[18:]
    if proto == 17:
        payload = b'sgt-probe'
        length = 8 + len(payload)
        seg = struct.pack('!HHHH', sport, dport, length, 0) + payload
        csum = inet_checksum(pseudo_header(family, src, dst, 17, length) + seg)
        if csum == 0:
            csum = 0xFFFF
        return seg[:6] + struct.pack('!H', csum) + seg[8:]
    if proto == 136:  # UDP-Lite, checksum coverage 0 = the whole datagram
        payload = b'sgt-probe'
        length = 8 + len(payload)
        seg = struct.pack('!HHHH', sport, dport, 0, 0) + payload
        # Linux conntrack verifies UDP-Lite checksums (at prerouting) with
        # IPPROTO_UDP in the pseudo-header (udplite_error -> nf_checksum_partial);
        # a checksum that is right by RFC 3828 makes the probe ct state invalid.
        # Conntrack is what the ruleset sees, so satisfy conntrack.
        csum = inet_checksum(pseudo_header(family, src, dst, 17, length) + seg) or 0xFFFF
        return seg[:6] + struct.pack('!H', csum) + seg[8:]
    if proto == 33:  # DCCP-Request: generic header with 48-bit sequence number + service code
        doff = 5  # 20 bytes, in 32-bit words
        seq = 0x5EC000000000 + tag
        hdr = struct.pack('!HHBBH', sport, dport, doff, 0, 0)
        hdr += struct.pack('!BBHI', (0 << 1) | 1, 0, (seq >> 32) & 0xFFFF, seq & 0xFFFFFFFF)  # type Request, X=1
        hdr += struct.pack('!I', 0)  # service code
        csum = inet_checksum(pseudo_header(family, src, dst, 33, len(hdr)) + hdr)
        return hdr[:6] + struct.pack('!H', csum) + hdr[8:]
    if proto == 132:  # SCTP common header (vtag 0) + INIT chunk
        init = struct.pack('!BBHIIHHI', 1, 0, 20, 0x5EC00000 + tag, 65535, 1, 1, 1 + tag)
        pkt = struct.pack('!HHII', sport, dport, 0, 0) + init
        crc = crc32c(pkt)
        return pkt[:8] + struct.pack('<I', crc) + pkt[12:]
    if (family == 4 and proto == 1) or (family == 6 and proto == 58):
        itype = probe.get('icmpType')
        icode = probe.get('icmpCode')
        if itype is None:
            itype = 8 if family == 4 else 128
        icode = 0 if icode is None else icode
        # id/sequence style "rest of header" for every type; the payload makes
        # timestamp (13) and address mask (17) requests long enough.
        rest = struct.pack('!HH', tag, 1)
        body = b'\0' * 12 if family == 4 and itype in (13, 14) else b'sgt-probe'
        msg = struct.pack('!BBH', itype, icode, 0) + rest + body
        if family == 4:
            csum = inet_checksum(msg)
        else:
            csum = inet_checksum(pseudo_header(6, src, dst, 58, len(msg)) + msg)
        return msg[:2] + struct.pack('!H', csum) + msg[4:]
    # any other protocol: a small opaque payload (for GRE 47 this reads as a
    # version 0 header without options)
    return b'\0' * 8


def ip_packet(probe: dict) -> bytes:
    family = probe['family']
    proto = probe['protocol']
    tag = probe['tag']
    if family == 4:
        src = socket.inet_pton(socket.AF_INET, probe['src'])
        dst = socket.inet_pton(socket.AF_INET, probe['dst'])
        payload = transport(probe, src, dst)
        hdr = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(payload), tag, 0x4000, MARK_TTL, proto, 0, src, dst)
        hdr = hdr[:10] + struct.pack('!H', inet_checksum(hdr)) + hdr[12:]
        return hdr + payload
    src = socket.inet_pton(socket.AF_INET6, probe['src'])
    dst = socket.inet_pton(socket.AF_INET6, probe['dst'])
    payload = transport(probe, src, dst)
    hdr = struct.pack('!IHBB16s16s', (6 << 28) | (tag & 0xFFFFF), len(payload), proto, MARK_TTL, src, dst)
    return hdr + payload


def check_address(family: int, text: str) -> None:
    addr = ipaddress.ip_address(text)
    net = TEST_NET4 if family == 4 else TEST_NET6
    if addr.version != family or addr not in net:
        raise ValueError('address %s is outside the test range %s' % (text, net))


# --------------------------------------------------------------------------
# namespaces and sockets


def setns(fd: int) -> None:
    if hasattr(os, 'setns'):
        os.setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, 'setns: ' + os.strerror(err))


def open_client_packet_socket(client_ns: str, iface: str) -> socket.socket:
    own = os.open('/proc/self/ns/net', os.O_RDONLY)
    target = os.open(os.path.join('/run/netns', client_ns), os.O_RDONLY)
    try:
        setns(target)
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            sock.bind((iface, 0))
        finally:
            setns(own)
    finally:
        os.close(own)
        os.close(target)
    return sock


def refuse_parent_namespace() -> None:
    """Defence in depth: we must have been moved into a lab namespace by
    `ip netns exec`, i.e. not share the network namespace of the test process
    that started us (which is the machine's own)."""
    try:
        parent = os.stat('/proc/%d/ns/net' % os.getppid()).st_ino
    except OSError:
        return  # cannot tell; netns.ts only ever starts us via `ip netns exec`
    if os.stat('/proc/self/ns/net').st_ino == parent:
        raise SystemExit('refusing to run in the network namespace of the test process')


def mac_bytes(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(':'))


def list_observer():
    out = subprocess.run(['nft', '-j', 'list', 'table', 'inet', OBSERVE_TABLE],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError('nft list table inet %s failed: %s' % (OBSERVE_TABLE, out.stderr.strip()))
    sets = {}
    for item in json.loads(out.stdout).get('nftables', []):
        s = item.get('set')
        if not s:
            continue
        elems = []
        for e in s.get('elem', []):
            if isinstance(e, dict) and 'elem' in e:
                e = e['elem']['val']
            if isinstance(e, dict) and 'concat' in e:
                e = e['concat']
            elems.append(e)
        sets[s['name']] = elems
    return sets


class Injector:
    def __init__(self, args):
        self.frame4 = mac_bytes(args.host_mac) + mac_bytes(args.client_mac) + struct.pack('!H', ETH_P_IP)
        self.frame6 = mac_bytes(args.host_mac) + mac_bytes(args.client_mac) + struct.pack('!H', ETH_P_IPV6)
        self.raw4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.raw6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.packet = open_client_packet_socket(args.client_ns, args.client_iface)
        self.to_flush = []
        self.flush_error = None

    def send(self, probe: dict):
        family = probe['family']
        check_address(family, probe['src'])
        check_address(family, probe['dst'])
        pkt = ip_packet(probe)
        if probe['direction'] == 'ingress':
            self.packet.send((self.frame4 if family == 4 else self.frame6) + pkt)
            return None
        try:
            if family == 4:
                self.raw4.sendto(pkt, (probe['dst'], 0))
            else:
                self.raw6.sendto(pkt, (probe['dst'], 0))
        except OSError as err:
            # EPERM is what a netfilter drop in the output hook looks like to a
            # raw socket; the observer table is the authority, but report it.
            return errno.errorcode.get(err.errno or 0, str(err.errno))
        return None

    def after_answer(self):
        if not self.to_flush:
            return
        names, self.to_flush = self.to_flush, []
        script = ''.join('flush set inet %s %s\n' % (OBSERVE_TABLE, name) for name in names)
        out = subprocess.run(['nft', '-f', '-'], input=script, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            self.flush_error = 'flushing the observer sets failed: %s' % out.stderr.strip()

    def batch(self, req: dict):
        if self.flush_error:
            err, self.flush_error = self.flush_error, None
            raise RuntimeError(err)
        t0 = time.monotonic()
        errors = {}
        for probe in req['probes']:
            check_address(probe['family'], probe['src'])
            check_address(probe['family'], probe['dst'])
        for i, probe in enumerate(req['probes']):
            err = self.send(probe)
            if err is not None:
                errors[str(i)] = err
        sentinel = req.get('sentinel')
        if sentinel is not None:
            self.send(sentinel)
        t_sent = time.monotonic()
        deadline = t_sent + req.get('timeoutMs', 2000) / 1000.0
        polls = 0
        while True:
            polls += 1
            sets = list_observer()
            if sentinel is None or sentinel['tag'] in sets.get('pre4', []):
                break
            if time.monotonic() > deadline:
                raise RuntimeError('sentinel probe never reached the host prerouting hook')
            time.sleep(0.002)
        t_listed = time.monotonic()
        # Every probe of this batch has been recorded by now (egress synchronously
        # in sendto, ingress before the sentinel). The sets are emptied after the
        # answer went out (see after_answer), off the caller's critical path, so
        # that the next listing stays small and fast.
        self.to_flush = sorted(sets)
        ms = {'send': (t_sent - t0) * 1000, 'read': (t_listed - t_sent) * 1000}
        return {'errors': errors, 'sets': sets, 'polls': polls, 'ms': ms}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument('--client-ns', required=True)
    parser.add_argument('--client-iface', default='eth0')
    parser.add_argument('--host-mac', required=True)
    parser.add_argument('--client-mac', required=True)
    args = parser.parse_args()
    if not args.client_ns.startswith('sgt-'):
        raise SystemExit('refusing a namespace without the sgt- prefix')
    refuse_parent_namespace()
    # One CPU: frames sent on the veth are then queued to, and processed from,
    # a single per-CPU backlog, strictly in order (see the sentinel above).
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[0]})
    injector = Injector(args)
    print(json.dumps({'ready': True}), flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        req = json.loads(line)
        try:
            if req.get('op') == 'batch':
                result = injector.batch(req)
            elif req.get('op') == 'ping':
                result = {}
            else:
                raise ValueError('unknown op %r' % req.get('op'))
            answer = {'id': req.get('id'), 'ok': True, 'result': result}
        except Exception as exc:  # report, keep serving
            answer = {'id': req.get('id'), 'ok': False, 'error': '%s: %s' % (type(exc).__name__, exc)}
        print(json.dumps(answer), flush=True)
        injector.after_answer()
    return 0


if __name__ == '__main__':
    sys.exit(main())
