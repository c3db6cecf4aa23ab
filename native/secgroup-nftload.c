/*
 * secgroup-nftload: sends one ready-made nf_tables netlink batch to the
 * kernel, the way `nft -f` does, and reports what the kernel answered.
 *
 * Why not `nft -f`: the agent encodes the whole batch itself (tables, chains,
 * rules, sets and their elements as nf_tables netlink messages) instead of
 * having nft parse and evaluate a text script: the evaluation is over half of
 * nft's time for rule-heavy tables. This program only checks the framing of
 * the batch and sends it in one piece; it knows nothing of its contents.
 *
 * Usage: secgroup-nftload < BATCH
 *   No arguments (--help prints the usage). stdin holds the batch: complete
 *   netlink messages, each at a NLMSG_ALIGN'ed offset (the padding counts in
 *   the total), each with at least a struct nlmsghdr and a struct nfgenmsg;
 *   the first NFNL_MSG_BATCH_BEGIN, the last NFNL_MSG_BATCH_END, every other
 *   one of subsystem NFNL_SUBSYS_NFTABLES. stdin is mapped when it is a
 *   regular file (the agent writes the batch to tmpfs), read otherwise (a
 *   pipe). Sizes of several hundred MB work: the send buffer is made to fit.
 *   The batch goes out in one sendmsg: the kernel takes an nfnetlink batch
 *   only from one skb, and handles it (all of it, or none of it) within that
 *   call, so every error report is queued on the socket when it returns.
 *
 * Output:
 *   on success (exit 0), on stdout:
 *     ok N messages B bytes          N messages with begin and end, B bytes
 *   for each message the kernel refused, on stderr:
 *     error seq SEQ type TYPE errno E STRERROR[: EXTACK]
 *   SEQ and TYPE of the refused message; EXTACK is the kernel's extended ack
 *   text when it gave one. The kernel then applied nothing of the batch.
 * Exit 0 when the kernel reported no error; 1 when it reported one or more
 * (all printed), or the batch could not be sent or its answers read (message
 * on stderr); 2 on a usage error or a malformed batch
 * ("secgroup-nftload: bad batch: WHAT at byte OFFSET", nothing sent).
 * Needs CAP_NET_ADMIN in the network namespace it runs in.
 *
 * Build: scripts/build-native.sh (gcc -O2 -Wall -Wextra -Werror, libc only).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define RECV_BUF (1 << 17)
#define SNDBUF_SLACK (64 << 10)
#define RCVBUF_MIN (256 << 10)
#define RCVBUF_MAX (256 << 20)
#define RCVBUF_PER_MSG 1024

#ifndef NETLINK_CAP_ACK
#define NETLINK_CAP_ACK 10
#endif
#ifndef NETLINK_EXT_ACK
#define NETLINK_EXT_ACK 11
#endif
#ifndef NLM_F_CAPPED
#define NLM_F_CAPPED 0x100
#endif
#ifndef NLM_F_ACK_TLVS
#define NLM_F_ACK_TLVS 0x200
#endif

static const char usage[] = "usage: secgroup-nftload < BATCH (an nf_tables netlink batch, see the header of native/secgroup-nftload.c)\n";

static void die_errno(const char *what) {
	fprintf(stderr, "secgroup-nftload: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void bad_batch(const char *what, size_t off) {
	fprintf(stderr, "secgroup-nftload: bad batch: %s at byte %zu\n", what, off);
	exit(2);
}

/* The whole of stdin: mapped when it is a regular file, read into memory otherwise. */
static const unsigned char *read_input(size_t *len) {
	struct stat st;
	if (fstat(0, &st) < 0) die_errno("stdin");
	if (S_ISREG(st.st_mode) && st.st_size > 0) {
		if ((uintmax_t)st.st_size > SIZE_MAX) {
			errno = EFBIG;
			die_errno("stdin");
		}
		void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, 0, 0);
		if (p == MAP_FAILED) die_errno("mmap stdin");
		*len = (size_t)st.st_size;
		return p;
	}
	size_t cap = 1 << 20, n = 0;
	unsigned char *buf = malloc(cap);
	if (!buf) die_errno("malloc");
	for (;;) {
		if (n == cap) {
			if (cap > SIZE_MAX / 2) {
				errno = ENOMEM;
				die_errno("read stdin");
			}
			unsigned char *b = realloc(buf, cap * 2);
			if (!b) die_errno("realloc");
			buf = b;
			cap *= 2;
		}
		ssize_t r = read(0, buf + n, cap - n);
		if (r < 0) {
			if (errno == EINTR) continue;
			die_errno("read stdin");
		}
		if (r == 0) break;
		n += (size_t)r;
	}
	*len = n;
	return buf;
}

/* Checks the framing; returns the number of messages. Exits 2 on the first fault. */
static size_t check_batch(const unsigned char *buf, size_t len) {
	if (len == 0) bad_batch("empty input", 0);
	size_t off = 0, count = 0, last = 0;
	while (off < len) {
		if (len - off < sizeof(struct nlmsghdr)) bad_batch("truncated message header", off);
		struct nlmsghdr h;
		memcpy(&h, buf + off, sizeof h);
		if (h.nlmsg_len < NLMSG_HDRLEN + sizeof(struct nfgenmsg)) bad_batch("message length too small", off);
		if (h.nlmsg_len > len - off) bad_batch("truncated message", off);
		if (NLMSG_ALIGN((size_t)h.nlmsg_len) > len - off) bad_batch("truncated padding", off);
		if (count == 0) {
			if (h.nlmsg_type != NFNL_MSG_BATCH_BEGIN) bad_batch("first message is not NFNL_MSG_BATCH_BEGIN", off);
		} else if (h.nlmsg_type != NFNL_MSG_BATCH_END && (h.nlmsg_type >> 8) != NFNL_SUBSYS_NFTABLES) {
			bad_batch("message of another subsystem than nf_tables", off);
		}
		last = off;
		count++;
		off += NLMSG_ALIGN((size_t)h.nlmsg_len);
	}
	struct nlmsghdr h;
	memcpy(&h, buf + last, sizeof h);
	if (count < 2 || h.nlmsg_type != NFNL_MSG_BATCH_END) bad_batch("last message is not NFNL_MSG_BATCH_END", last);
	return count;
}

/* SO_*BUFFORCE (CAP_NET_ADMIN: above the sysctl maximum), else the plain option. */
static void set_buf(int fd, int force, int plain, size_t want) {
	int size = want > INT_MAX / 2 ? INT_MAX / 2 : (int)want;
	if (setsockopt(fd, SOL_SOCKET, force, &size, sizeof size) < 0)
		(void)setsockopt(fd, SOL_SOCKET, plain, &size, sizeof size);
}

/* Prints one refused message; the text of the extended ack when there is one. */
static void print_error(const struct nlmsghdr *h) {
	if (h->nlmsg_len < NLMSG_HDRLEN + sizeof(struct nlmsgerr)) {
		fprintf(stderr, "secgroup-nftload: receive: short error message\n");
		return;
	}
	const struct nlmsgerr *e = NLMSG_DATA(h);
	int err = -e->error;
	const char *text = NULL;
	int text_len = 0;
	if (h->nlmsg_flags & NLM_F_ACK_TLVS) {
		/* the attributes follow the refused message's header (NLM_F_CAPPED), or the whole message */
		size_t off = NLMSG_HDRLEN + (h->nlmsg_flags & NLM_F_CAPPED ? sizeof *e : sizeof e->error + NLMSG_ALIGN((size_t)e->msg.nlmsg_len));
		while (off + NLA_HDRLEN <= h->nlmsg_len) {
			const struct nlattr *a = (const struct nlattr *)((const unsigned char *)h + off);
			if (a->nla_len < NLA_HDRLEN || off + a->nla_len > h->nlmsg_len) break;
			if ((a->nla_type & NLA_TYPE_MASK) == NLMSGERR_ATTR_MSG && a->nla_len > NLA_HDRLEN) {
				text = (const char *)a + NLA_HDRLEN;
				text_len = (int)strnlen(text, a->nla_len - NLA_HDRLEN);
			}
			off += NLA_ALIGN(a->nla_len);
		}
	}
	fprintf(stderr, "error seq %u type %u errno %d %s%s%.*s\n", e->msg.nlmsg_seq, e->msg.nlmsg_type, err, strerror(err),
		text_len ? ": " : "", text_len, text ? text : "");
}

int main(int argc, char **argv) {
	if (argc == 2 && strcmp(argv[1], "--help") == 0) {
		fputs(usage, stdout);
		return 0;
	}
	if (argc != 1) {
		fputs(usage, stderr);
		return 2;
	}
	size_t len;
	const unsigned char *batch = read_input(&len);
	size_t count = check_batch(batch, len);

	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
	if (fd < 0) die_errno("socket(AF_NETLINK, NETLINK_NETFILTER)");
	struct sockaddr_nl sa = { .nl_family = AF_NETLINK };
	if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die_errno("bind");
	int one = 1;
	if (setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof one) < 0) die_errno("setsockopt(NETLINK_CAP_ACK)");
	(void)setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof one); /* older kernels: no text */
	/* the whole batch in one skb; room for the error report of every message */
	set_buf(fd, SO_SNDBUFFORCE, SO_SNDBUF, len + SNDBUF_SLACK);
	size_t rcv = count > RCVBUF_MAX / RCVBUF_PER_MSG ? RCVBUF_MAX : count * RCVBUF_PER_MSG;
	set_buf(fd, SO_RCVBUFFORCE, SO_RCVBUF, rcv < RCVBUF_MIN ? RCVBUF_MIN : rcv);

	struct sockaddr_nl to = { .nl_family = AF_NETLINK };
	struct iovec iov = { .iov_base = (void *)batch, .iov_len = len };
	struct msghdr msg = { .msg_name = &to, .msg_namelen = sizeof to, .msg_iov = &iov, .msg_iovlen = 1 };
	for (;;) {
		ssize_t n = sendmsg(fd, &msg, 0);
		if (n >= 0) break;
		if (errno == EINTR) continue;
		die_errno("send");
	}

	/* the kernel handled the batch within sendmsg: its reports are queued, read them without waiting */
	static unsigned char buf[RECV_BUF];
	unsigned long errors = 0;
	int lost = 0;
	for (;;) {
		ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR) continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) break;
			if (errno == ENOBUFS) {
				fprintf(stderr, "secgroup-nftload: receive: some error reports were lost (ENOBUFS)\n");
				lost = 1;
				continue; /* the reports still queued */
			}
			die_errno("receive");
		}
		for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
			if (h->nlmsg_type != NLMSG_ERROR) continue;
			if (h->nlmsg_len >= NLMSG_HDRLEN + sizeof(int) && ((const struct nlmsgerr *)NLMSG_DATA(h))->error == 0)
				continue; /* an ack */
			print_error(h);
			errors++;
		}
	}
	close(fd);
	if (errors || lost) return 1;
	printf("ok %zu messages %zu bytes\n", count, len);
	return 0;
}
