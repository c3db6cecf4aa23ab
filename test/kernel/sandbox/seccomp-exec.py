#!/usr/bin/python3
"""Runs a command under a seccomp filter built like systemd builds one for

    SystemCallFilter=<allow list>   SystemCallErrorNumber=EPERM
    RestrictAddressFamilies=<families>   SystemCallArchitectures=native
    RestrictNamespaces=yes (only its clone3() -> ENOSYS part)

(test helper for test/kernel/deploy-sandbox.test.ts, which passes the syscall
names that `systemd-analyze syscall-filter` expands the unit's filter to).

    seccomp-exec.py SYSCALLS_FILE FAMILIES -- COMMAND [ARG...]

SYSCALLS_FILE: one syscall name a line; names this libseccomp does not know are
skipped, as systemd does. FAMILIES: comma-separated, e.g. AF_UNIX,AF_INET.
Everything else fails with EPERM; socket() of another family with
EAFNOSUPPORT, as systemd answers. The filter is loaded with no_new_privs set
and is inherited by the command and all its children. Needs python3-seccomp.
"""
import errno
import os
import socket
import sys

import seccomp

FAMILY_MAX = 64  # above AF_MAX (46 in Linux 6.x)


def main() -> int:
    if len(sys.argv) < 5 or sys.argv[3] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    names = [l.strip() for l in open(sys.argv[1], encoding="ascii") if l.strip()]
    families = [getattr(socket, f) if hasattr(socket, f) else int(f) for f in sys.argv[2].split(",") if f]
    command = sys.argv[4:]

    f = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
    # native architecture only (libseccomp's default); other ABIs are killed
    f.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)
    f.set_attr(seccomp.Attr.CTL_NNP, 1)
    skipped = []
    for name in names:
        if name in ("socket", "clone3"):
            continue
        try:
            f.add_rule(seccomp.ALLOW, name)
        except (ValueError, RuntimeError, OSError):
            skipped.append(name)
    # RestrictNamespaces= (set in the agent's unit): systemd cannot inspect
    # clone3()'s flags, so it answers clone3() with ENOSYS and glibc falls back
    # to clone(); done here too, so that spawning children is tested that way.
    f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    if "socket" in names:
        for fam in range(FAMILY_MAX):
            if fam in families:
                f.add_rule(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.EQ, fam))
            else:
                f.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.EQ, fam))
    if os.environ.get("SECCOMP_EXEC_VERBOSE"):
        print(f"seccomp-exec: {len(names) - len(skipped)} syscalls allowed, {len(skipped)} unknown to libseccomp", file=sys.stderr)
    f.load()
    os.execvp(command[0], command)
    return 127


if __name__ == "__main__":
    sys.exit(main())
