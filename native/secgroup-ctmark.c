/*
 * secgroup-ctmark: clears the bits under a mask in the conntrack mark of
 * every tracked connection (IPv4 and IPv6), over ctnetlink, and keeps the
 * other bits. The agent runs it at the start of each flow mark epoch
 * (src/nft/flow-mark.ts, src/nft/conntrack.ts).
 *
 * Why not `conntrack -U -m 0/MASK` (conntrack-tools): it stops at its first
 * error, and on a big table that changes while it runs it fails with
 * "No buffer space available" nearly every time (38 of 40 sweeps over ~40k
 * connections being made, bench/README.md). This program:
 *   - reads the dump one batch at a time (the kernel fills a dump batch only
 *     when it is read, so the dump itself cannot overflow), with a large
 *     receive buffer;
 *   - updates only the entries whose field is not 0, from a second socket, a
 *     batch of requests per dump batch, and reads every answer before it
 *     reads on (the answers are acks of 36 bytes: NETLINK_CAP_ACK);
 *   - sends each update as "mark = (mark & ~MASK)" in the kernel
 *     (CTA_MARK 0 with CTA_MARK_MASK MASK), so a concurrent write to the
 *     mark's other bits is never lost;
 *   - counts an entry that is gone by the time of its update (ENOENT) as
 *     done;
 *   - runs the dump again when it was cut (an error, or the kernel's
 *     NLM_F_DUMP_INTR): each pass clears what it saw, and entries already
 *     cleared are skipped by the next, so passes converge; up to 8 passes.
 * A whole dump that ends normally, with every update answered, has seen every
 * entry that existed during it. The agent's table writes 0 into the field of
 * new connections until the sweep is done (flow-mark.ts: the unarmed epoch),
 * so entries made during the dump need nothing.
 *
 * Usage: secgroup-ctmark clear MASK
 *   MASK: the field, as 0xHEX or decimal (a nonzero 32-bit value).
 *   Output on success (exit 0), one line:
 *     cleared N gone G passes P seen S
 *   N entries updated, G gone before their update, P dumps in all, S entries
 *   seen in the last pass of each family (summed).
 *   Exit 1 with a message on stderr when it cannot finish (a socket error,
 *   an update refused, 8 passes cut); exit 2 on a usage error.
 *   Needs CAP_NET_ADMIN in the network namespace it runs in.
 *
 * Build: scripts/build-native.sh (gcc -O2 -Wall -Wextra -Werror, libc only).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <linux/netlink.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <arpa/inet.h>

#define PASSES_MAX 8
#define BATCH_MAX 256
#define MSG_MAX 512
#define RCVBUF (8 << 20)
#define RECV_BUF (1 << 17)

#ifndef NETLINK_CAP_ACK
#define NETLINK_CAP_ACK 10
#endif
#ifndef NETLINK_EXT_ACK
#define NETLINK_EXT_ACK 11
#endif

static uint32_t mask;
static unsigned long cleared, gone, passes, seen_last;

/* the update socket and its pending batch */
static int upd_fd = -1;
static uint32_t upd_seq;
static unsigned char batch[BATCH_MAX * MSG_MAX];
static size_t batch_len;
static unsigned batch_count;
static int family_now;

static void die_errno(const char *what) {
	fprintf(stderr, "secgroup-ctmark: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int open_socket(void) {
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
	if (fd < 0) die_errno("socket(AF_NETLINK, NETLINK_NETFILTER)");
	int size = RCVBUF;
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) < 0)
		(void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
	int one = 1;
	(void)setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof one);
	struct sockaddr_nl sa = { .nl_family = AF_NETLINK };
	if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die_errno("bind");
	return fd;
}

static void send_all(int fd, const void *buf, size_t len) {
	struct sockaddr_nl to = { .nl_family = AF_NETLINK };
	for (;;) {
		ssize_t n = sendto(fd, buf, len, 0, (struct sockaddr *)&to, sizeof to);
		if (n == (ssize_t)len) return;
		if (n < 0 && errno == EINTR) continue;
		die_errno("sendto");
	}
}

static void put_attr(unsigned char *msg, size_t *len, uint16_t type, const void *data, size_t dlen) {
	struct nlattr *a = (struct nlattr *)(msg + *len);
	a->nla_type = type;
	a->nla_len = (uint16_t)(NLA_HDRLEN + dlen);
	memcpy((unsigned char *)a + NLA_HDRLEN, data, dlen);
	size_t total = NLA_ALIGN(NLA_HDRLEN + dlen);
	memset((unsigned char *)a + NLA_HDRLEN + dlen, 0, total - NLA_HDRLEN - dlen);
	*len += total;
}

/* Sends the batch and reads its answers. Returns 0, or -1 when an update was refused (message printed). */
static int flush_batch(void) {
	if (batch_count == 0) return 0;
	send_all(upd_fd, batch, batch_len);
	uint32_t first = upd_seq - batch_count + 1;
	unsigned answered = 0;
	int failed = 0;
	static unsigned char buf[RECV_BUF];
	while (answered < batch_count) {
		ssize_t n = recv(upd_fd, buf, sizeof buf, 0);
		if (n < 0) {
			if (errno == EINTR) continue;
			die_errno("recv (updates)");
		}
		for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
			if (h->nlmsg_type != NLMSG_ERROR || h->nlmsg_seq < first || h->nlmsg_seq > upd_seq) continue;
			const struct nlmsgerr *e = NLMSG_DATA(h);
			answered++;
			if (e->error == 0) cleared++;
			else if (e->error == -ENOENT) gone++;
			else if (!failed) {
				fprintf(stderr, "secgroup-ctmark: the kernel refused an update: %s\n", strerror(-e->error));
				failed = 1;
			}
		}
	}
	batch_len = 0;
	batch_count = 0;
	return failed ? -1 : 0;
}

/* Queues "clear our bits" for the entry of one dump message. */
static int queue_update(const struct nlattr *tuple, const struct nlattr *zone) {
	if (batch_count == BATCH_MAX && flush_batch() < 0) return -1;
	unsigned char *msg = batch + batch_len;
	struct nlmsghdr *h = (struct nlmsghdr *)msg;
	size_t len = NLMSG_HDRLEN;
	struct nfgenmsg *g = (struct nfgenmsg *)(msg + len);
	g->nfgen_family = (uint8_t)family_now;
	g->version = NFNETLINK_V0;
	g->res_id = 0;
	len += NLMSG_ALIGN(sizeof *g);
	size_t tl = NLA_ALIGN(tuple->nla_len);
	if (tl + 64 > MSG_MAX) return 0; /* cannot happen for a conntrack tuple; skip rather than overrun */
	memcpy(msg + len, tuple, tuple->nla_len);
	memset(msg + len + tuple->nla_len, 0, tl - tuple->nla_len);
	len += tl;
	if (zone) put_attr(msg, &len, CTA_ZONE, (const unsigned char *)zone + NLA_HDRLEN, 2);
	uint32_t zero = 0, m = htonl(mask);
	put_attr(msg, &len, CTA_MARK, &zero, 4);
	put_attr(msg, &len, CTA_MARK_MASK, &m, 4);
	h->nlmsg_len = (uint32_t)len;
	h->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW;
	/* no NLM_F_CREATE: an update of an existing entry, ENOENT when it is gone */
	h->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
	h->nlmsg_seq = ++upd_seq;
	h->nlmsg_pid = 0;
	batch_len += NLMSG_ALIGN(len);
	batch_count++;
	return 0;
}

/* One dump of a family. Returns 1 when it ran to its end uncut, 0 when it was cut (run again), -1 on a refused update. */
static int one_pass(int family) {
	int fd = open_socket();
	struct {
		struct nlmsghdr h;
		struct nfgenmsg g;
	} req = {
		.h = { .nlmsg_len = sizeof req, .nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET, .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP, .nlmsg_seq = 1 },
		.g = { .nfgen_family = (uint8_t)family, .version = NFNETLINK_V0 },
	};
	send_all(fd, &req, sizeof req);
	passes++;
	family_now = family;
	static unsigned char buf[RECV_BUF];
	unsigned long seen = 0;
	int result = 0, intr = 0;
	for (int done = 0; !done;) {
		ssize_t n = recv(fd, buf, sizeof buf, 0);
		if (n < 0) {
			if (errno == EINTR) continue;
			if (errno == ENOBUFS || errno == EBUSY) break; /* cut: another pass */
			die_errno("recv (dump)");
		}
		if (n == 0) break;
		for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
			if (h->nlmsg_type == NLMSG_DONE) {
				if (h->nlmsg_flags & NLM_F_DUMP_INTR) intr = 1;
				else result = 1;
				done = 1;
				break;
			}
			if (h->nlmsg_type == NLMSG_ERROR) {
				const struct nlmsgerr *e = NLMSG_DATA(h);
				if (e->error == -EINTR || e->error == -ENOBUFS || e->error == -EBUSY || e->error == -EAGAIN) {
					done = 1;
					break;
				}
				errno = -e->error;
				die_errno("dump");
			}
			if (h->nlmsg_flags & NLM_F_DUMP_INTR) intr = 1;
			if ((h->nlmsg_type & 0xff) != IPCTNL_MSG_CT_NEW) continue;
			seen++;
			const struct nlattr *tuple = NULL, *zone = NULL;
			uint32_t mark = 0;
			size_t off = NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(struct nfgenmsg));
			for (const struct nlattr *a = (const struct nlattr *)((const unsigned char *)h + off);
			     off + NLA_HDRLEN <= h->nlmsg_len && a->nla_len >= NLA_HDRLEN && off + a->nla_len <= h->nlmsg_len;
			     off += NLA_ALIGN(a->nla_len), a = (const struct nlattr *)((const unsigned char *)h + off)) {
				int type = a->nla_type & NLA_TYPE_MASK;
				if (type == CTA_TUPLE_ORIG) tuple = a;
				else if (type == CTA_ZONE && a->nla_len >= NLA_HDRLEN + 2) zone = a;
				else if (type == CTA_MARK && a->nla_len >= NLA_HDRLEN + 4) memcpy(&mark, (const unsigned char *)a + NLA_HDRLEN, 4);
			}
			if (tuple && (ntohl(mark) & mask) != 0 && queue_update(tuple, zone) < 0) {
				close(fd);
				return -1;
			}
		}
		/* the updates of this dump batch before the next is read: the answers never pile up */
		if (flush_batch() < 0) {
			close(fd);
			return -1;
		}
	}
	close(fd);
	if (flush_batch() < 0) return -1;
	if (intr) result = 0;
	if (result == 1) seen_last += seen;
	return result;
}

int main(int argc, char **argv) {
	if (argc != 3 || strcmp(argv[1], "clear") != 0) {
		fprintf(stderr, "usage: secgroup-ctmark clear MASK\n");
		return 2;
	}
	char *end;
	errno = 0;
	unsigned long v = strtoul(argv[2], &end, 0);
	if (errno || *end || v == 0 || v > 0xffffffffUL) {
		fprintf(stderr, "secgroup-ctmark: MASK must be a nonzero 32-bit number (0xHEX or decimal), not %s\n", argv[2]);
		return 2;
	}
	mask = (uint32_t)v;
	upd_fd = open_socket();
	const int families[] = { AF_INET, AF_INET6 };
	for (size_t i = 0; i < 2; i++) {
		int r = 0;
		for (int p = 0; p < PASSES_MAX && r == 0; p++) r = one_pass(families[i]);
		if (r < 0) return 1;
		if (r == 0) {
			fprintf(stderr, "secgroup-ctmark: the %s dump was cut %d times in a row (the table changes too fast?); cleared %lu so far\n",
				families[i] == AF_INET ? "IPv4" : "IPv6", PASSES_MAX, cleared);
			return 1;
		}
	}
	printf("cleared %lu gone %lu passes %lu seen %lu\n", cleared, gone, passes, seen_last);
	return 0;
}
