/*
 * secgroup-nftwatch: follows the kernel's nftables change events for one
 * table (family inet) and prints them as text lines, with no cache at all.
 *
 * Why not `nft monitor`: nft 1.0.6 loads every element of every set into its
 * cache before it subscribes (seconds to over a minute at 100k members) and
 * dies of SIGSEGV printing our own full reloads (interval maps with
 * concatenated keys). This program subscribes at once (socket, bind, join
 * NFNLGRP_NFTABLES: microseconds), decodes nothing but table, object name,
 * generation and the generation marker's comment, and keeps no state beyond
 * the current line.
 *
 * Usage: secgroup-nftwatch [--rcvbuf BYTES] TABLE
 *   Runs until stdin reaches end of file (the parent closed it or died),
 *   SIGTERM/SIGINT, or its parent died (PR_SET_PDEATHSIG). Exit 0 then;
 *   exit 2 on a usage error, 1 when the socket cannot be set up (message on
 *   stderr). Needs CAP_NET_ADMIN in the network namespace it runs in.
 *
 * Output, one line each, '\n'-terminated, ASCII only (any byte outside
 * 0x21-0x7e in a name becomes '?'; in a marker text, outside 0x20-0x7e):
 *   ready                       subscribed: every change committed from now
 *                               on is reported (printed once, first)
 *   event VERB OBJECT NAME N    N consecutive change messages of one kind
 *                               about table inet TABLE in the open
 *                               transaction. VERB: new | del. OBJECT: table |
 *                               chain | rule | set | element | object |
 *                               flowtable | other (a message type this
 *                               program does not know). NAME: the chain
 *                               (chain, rule), the set (set, element), the
 *                               object or flowtable, the table (table, other).
 *                               The kernel sends one message per table,
 *                               chain, rule or set and one per element or
 *                               batch of elements, depending on its version:
 *                               N counts messages, not elements.
 *   marker TEXT                 an element added to set sg_generation of the
 *                               table carries comment TEXT (the rest of the
 *                               line; the agent's generation marker)
 *   key SET HEX                 an element with key HEX (the key's bytes as
 *                               the kernel holds them, lowercase hex) was
 *                               deleted from set SET: printed for the first
 *                               64 deleted elements of a transaction that
 *                               have a plain key (no interval end, no flags)
 *   nokeys SET                  an element was deleted from SET whose key is
 *                               not printed (over 64, or not plain): the key
 *                               lines of SET in this transaction are not
 *                               all it lost (printed at least once then)
 *   gen ID PID COMM             a transaction ended (NFT_MSG_NEWGEN): ruleset
 *                               generation ID, committed by process PID
 *                               (0 if unknown) named COMM ('-' if unknown).
 *                               Printed for every transaction, also those
 *                               of other tables (no event line before it).
 *   lost                        the socket's receive queue overflowed
 *                               (ENOBUFS): events were lost, the reader
 *                               must read the table back
 * Lines of one transaction come before its `gen` line. Output is flushed
 * after each batch read from the socket.
 *
 * Receive buffer: --rcvbuf BYTES (default 64 MiB) with SO_RCVBUFFORCE (root
 * or CAP_NET_ADMIN), else SO_RCVBUF (capped by net.core.rmem_max).
 *
 * Attribute numbers are the kernel UAPI's (linux/netfilter/nf_tables.h,
 * nfnetlink.h); the element comment is libnftnl's udata TLV (type u8, len u8,
 * value) with type NFTNL_UDATA_SET_ELEM_COMMENT (0), as nft writes it.
 *
 * Build: scripts/build-native.sh (gcc -O2 -Wall -Wextra -Werror, libc only).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <arpa/inet.h>

#define MARKER_SET "sg_generation"
#define UDATA_SET_ELEM_COMMENT 0
#define NAME_MAX_OUT 256
#define NFPROTO_INET_ 1
#define KEYS_MAX 64

static const char *table;
static volatile sig_atomic_t quit;

/* the pending (coalesced) event line */
static struct {
	int active;
	const char *verb;
	const char *object;
	char name[NAME_MAX_OUT];
	unsigned long count;
} pending;

/* key lines printed in the open transaction, and the set of the last nokeys line (not printed twice in a row) */
static int keys_printed;
static char nokeys_last[NAME_MAX_OUT];

static void on_signal(int sig) {
	(void)sig;
	quit = 1;
}

static void clean(char *out, size_t cap, const char *in, size_t len, int spaces) {
	size_t n = 0;
	for (size_t i = 0; i < len && in[i] != '\0' && n + 1 < cap; i++) {
		unsigned char c = (unsigned char)in[i];
		out[n++] = (c >= 0x21 && c <= 0x7e) || (spaces && c == 0x20) ? (char)c : '?';
	}
	if (n == 0 && cap > 1 && !spaces) out[n++] = '-';
	out[n] = '\0';
}

static void flush_pending(void) {
	if (!pending.active) return;
	printf("event %s %s %s %lu\n", pending.verb, pending.object, pending.name, pending.count);
	pending.active = 0;
}

static void add_event(const char *verb, const char *object, const char *name) {
	if (pending.active && pending.verb == verb && pending.object == object && strcmp(pending.name, name) == 0) {
		pending.count++;
		return;
	}
	flush_pending();
	pending.active = 1;
	pending.verb = verb;
	pending.object = object;
	snprintf(pending.name, sizeof pending.name, "%s", name);
	pending.count = 1;
}

/* attributes: fills tb[type] (NULL when absent) for types below max */
static void parse_attrs(const void *data, size_t len, const struct nlattr **tb, int max) {
	memset(tb, 0, sizeof(*tb) * (size_t)max);
	const char *p = data;
	while (len >= sizeof(struct nlattr)) {
		const struct nlattr *a = (const struct nlattr *)p;
		if (a->nla_len < sizeof(struct nlattr) || a->nla_len > len) return;
		int type = a->nla_type & NLA_TYPE_MASK;
		if (type < max) tb[type] = a;
		size_t step = NLA_ALIGN(a->nla_len);
		if (step >= len) return;
		p += step;
		len -= step;
	}
}

static const void *payload(const struct nlattr *a) { return (const char *)a + NLA_HDRLEN; }
static size_t payload_len(const struct nlattr *a) { return a->nla_len - NLA_HDRLEN; }

static int attr_is(const struct nlattr *a, const char *s) {
	if (!a) return 0;
	size_t n = strnlen(payload(a), payload_len(a));
	return n == strlen(s) && memcmp(payload(a), s, n) == 0;
}

static uint32_t attr_u32(const struct nlattr *a) {
	uint32_t v = 0;
	if (a && payload_len(a) >= 4) memcpy(&v, payload(a), 4);
	return ntohl(v);
}

/* NEWSETELEM of MARKER_SET: prints the comment of each element that has one */
static void print_markers(const struct nlattr *elements) {
	const char *p = payload(elements);
	size_t len = payload_len(elements);
	while (len >= sizeof(struct nlattr)) {
		const struct nlattr *e = (const struct nlattr *)p;
		if (e->nla_len < sizeof(struct nlattr) || e->nla_len > len) return;
		const struct nlattr *tb[NFTA_SET_ELEM_USERDATA + 1];
		parse_attrs(payload(e), payload_len(e), tb, NFTA_SET_ELEM_USERDATA + 1);
		const struct nlattr *ud = tb[NFTA_SET_ELEM_USERDATA];
		if (ud) {
			const unsigned char *u = payload(ud);
			size_t ulen = payload_len(ud);
			while (ulen >= 2 && (size_t)u[1] + 2 <= ulen) {
				if (u[0] == UDATA_SET_ELEM_COMMENT) {
					char text[NAME_MAX_OUT];
					clean(text, sizeof text, (const char *)u + 2, u[1], 1);
					flush_pending();
					printf("marker %s\n", text);
				}
				ulen -= (size_t)u[1] + 2;
				u += (size_t)u[1] + 2;
			}
		}
		size_t step = NLA_ALIGN(e->nla_len);
		if (step >= len) return;
		p += step;
		len -= step;
	}
}

/* DELSETELEM of one of our sets: the deleted elements' keys (see `key` and `nokeys` in the header) */
static void print_deleted_keys(const char *set, const struct nlattr *elements) {
	const char *p = payload(elements);
	size_t len = payload_len(elements);
	while (len >= sizeof(struct nlattr)) {
		const struct nlattr *e = (const struct nlattr *)p;
		if (e->nla_len < sizeof(struct nlattr) || e->nla_len > len) return;
		const struct nlattr *tb[NFTA_SET_ELEM_KEY_END + 1];
		parse_attrs(payload(e), payload_len(e), tb, NFTA_SET_ELEM_KEY_END + 1);
		const struct nlattr *data[NFTA_DATA_VALUE + 1] = {0};
		if (tb[NFTA_SET_ELEM_KEY]) parse_attrs(payload(tb[NFTA_SET_ELEM_KEY]), payload_len(tb[NFTA_SET_ELEM_KEY]), data, NFTA_DATA_VALUE + 1);
		const struct nlattr *key = data[NFTA_DATA_VALUE];
		int plain = key && payload_len(key) > 0 && payload_len(key) <= 64 && !tb[NFTA_SET_ELEM_KEY_END] && attr_u32(tb[NFTA_SET_ELEM_FLAGS]) == 0;
		if (plain && keys_printed < KEYS_MAX) {
			keys_printed++;
			printf("key %s ", set);
			const unsigned char *k = payload(key);
			for (size_t i = 0; i < payload_len(key); i++) printf("%02x", k[i]);
			printf("\n");
		} else if (strcmp(nokeys_last, set) != 0) {
			snprintf(nokeys_last, sizeof nokeys_last, "%s", set);
			printf("nokeys %s\n", set);
		}
		size_t step = NLA_ALIGN(e->nla_len);
		if (step >= len) return;
		p += step;
		len -= step;
	}
}

static void on_message(const struct nlmsghdr *h) {
	if (NFNL_SUBSYS_ID(h->nlmsg_type) != NFNL_SUBSYS_NFTABLES) return;
	if (h->nlmsg_len < NLMSG_LENGTH(sizeof(struct nfgenmsg))) return;
	int msg = NFNL_MSG_TYPE(h->nlmsg_type);
	const struct nfgenmsg *g = NLMSG_DATA(h);
	const void *attrs = (const char *)g + NLMSG_ALIGN(sizeof *g);
	size_t alen = h->nlmsg_len - NLMSG_LENGTH(NLMSG_ALIGN(sizeof *g));
	const struct nlattr *tb[8];
	parse_attrs(attrs, alen, tb, 8);
	if (msg == NFT_MSG_NEWGEN) {
		char comm[NAME_MAX_OUT] = "-";
		if (tb[NFTA_GEN_PROC_NAME]) clean(comm, sizeof comm, payload(tb[NFTA_GEN_PROC_NAME]), payload_len(tb[NFTA_GEN_PROC_NAME]), 0);
		flush_pending();
		printf("gen %u %u %s\n", attr_u32(tb[NFTA_GEN_ID]), attr_u32(tb[NFTA_GEN_PROC_PID]), comm);
		keys_printed = 0;
		nokeys_last[0] = '\0';
		return;
	}
	/* attribute 1 is the table's name in every message about a table's contents */
	if (g->nfgen_family != NFPROTO_INET_ || !attr_is(tb[1], table)) return;
	const char *verb = "new", *object = "other";
	int name_attr = 1;
	switch (msg) {
	case NFT_MSG_DELTABLE: verb = "del"; /* fall through */
	case NFT_MSG_NEWTABLE: object = "table"; break;
	case NFT_MSG_DELCHAIN: verb = "del"; /* fall through */
	case NFT_MSG_NEWCHAIN: object = "chain"; name_attr = NFTA_CHAIN_NAME; break;
	case NFT_MSG_DELRULE: verb = "del"; /* fall through */
	case NFT_MSG_NEWRULE: object = "rule"; name_attr = NFTA_RULE_CHAIN; break;
	case NFT_MSG_DELSET: verb = "del"; /* fall through */
	case NFT_MSG_NEWSET: object = "set"; name_attr = NFTA_SET_NAME; break;
	case NFT_MSG_DELSETELEM: verb = "del"; /* fall through */
	case NFT_MSG_NEWSETELEM: object = "element"; name_attr = NFTA_SET_ELEM_LIST_SET; break;
	case NFT_MSG_DELOBJ: verb = "del"; /* fall through */
	case NFT_MSG_NEWOBJ: object = "object"; name_attr = NFTA_OBJ_NAME; break;
	case NFT_MSG_DELFLOWTABLE: verb = "del"; /* fall through */
	case NFT_MSG_NEWFLOWTABLE: object = "flowtable"; name_attr = NFTA_FLOWTABLE_NAME; break;
	default: break;
	}
	char name[NAME_MAX_OUT] = "-";
	if (tb[name_attr]) clean(name, sizeof name, payload(tb[name_attr]), payload_len(tb[name_attr]), 0);
	add_event(verb, object, name);
	if (msg == NFT_MSG_NEWSETELEM && attr_is(tb[NFTA_SET_ELEM_LIST_SET], MARKER_SET) && tb[NFTA_SET_ELEM_LIST_ELEMENTS])
		print_markers(tb[NFTA_SET_ELEM_LIST_ELEMENTS]);
	if (msg == NFT_MSG_DELSETELEM && !attr_is(tb[NFTA_SET_ELEM_LIST_SET], MARKER_SET) && tb[NFTA_SET_ELEM_LIST_ELEMENTS])
		print_deleted_keys(name, tb[NFTA_SET_ELEM_LIST_ELEMENTS]);
}

static int valid_table(const char *s) {
	size_t n = strlen(s);
	if (n == 0 || n > 63) return 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (i > 0 && ((c >= '0' && c <= '9') || c == '_')))) return 0;
	}
	return 1;
}

int main(int argc, char **argv) {
	int rcvbuf = 64 << 20;
	int i = 1;
	if (i + 1 < argc && strcmp(argv[i], "--rcvbuf") == 0) {
		char *end;
		long v = strtol(argv[i + 1], &end, 10);
		if (*end != '\0' || v < 4096 || v > (1L << 30)) {
			fprintf(stderr, "secgroup-nftwatch: --rcvbuf must be 4096..1073741824 bytes\n");
			return 2;
		}
		rcvbuf = (int)v;
		i += 2;
	}
	if (i + 1 != argc || !valid_table(argv[i])) {
		fprintf(stderr, "usage: secgroup-nftwatch [--rcvbuf BYTES] TABLE  (TABLE: [A-Za-z][A-Za-z0-9_]{0,62}, family inet)\n");
		return 2;
	}
	table = argv[i];
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	signal(SIGPIPE, SIG_DFL);

	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
	if (fd < 0) {
		fprintf(stderr, "secgroup-nftwatch: socket(NETLINK_NETFILTER): %s\n", strerror(errno));
		return 1;
	}
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) < 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
	struct sockaddr_nl sa_nl;
	memset(&sa_nl, 0, sizeof sa_nl);
	sa_nl.nl_family = AF_NETLINK;
	if (bind(fd, (struct sockaddr *)&sa_nl, sizeof sa_nl) < 0) {
		fprintf(stderr, "secgroup-nftwatch: bind: %s\n", strerror(errno));
		return 1;
	}
	int group = NFNLGRP_NFTABLES;
	if (setsockopt(fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &group, sizeof group) < 0) {
		fprintf(stderr, "secgroup-nftwatch: join NFNLGRP_NFTABLES: %s\n", strerror(errno));
		return 1;
	}
	static char buf[1 << 20];
	setvbuf(stdout, NULL, _IOFBF, 1 << 16);
	printf("ready\n");
	fflush(stdout);

	struct pollfd fds[2] = {{.fd = fd, .events = POLLIN}, {.fd = 0, .events = POLLIN}};
	while (!quit) {
		if (poll(fds, 2, -1) < 0) {
			if (errno == EINTR) continue;
			fprintf(stderr, "secgroup-nftwatch: poll: %s\n", strerror(errno));
			return 1;
		}
		if (fds[1].revents) {
			char c[256];
			ssize_t n = read(0, c, sizeof c);
			if (n <= 0) break; /* end of input: the parent is gone or done */
		}
		if (!(fds[0].revents & POLLIN)) continue;
		/* drain what is queued, then flush once */
		for (;;) {
			ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
			if (n < 0) {
				if (errno == EINTR) continue;
				if (errno == EAGAIN || errno == EWOULDBLOCK) break;
				if (errno == ENOBUFS) {
					flush_pending();
					printf("lost\n");
					continue;
				}
				fprintf(stderr, "secgroup-nftwatch: recv: %s\n", strerror(errno));
				return 1;
			}
			size_t len = (size_t)n;
			for (const struct nlmsghdr *h = (const struct nlmsghdr *)buf; NLMSG_OK(h, len); h = NLMSG_NEXT(h, len)) on_message(h);
		}
		if (fflush(stdout) != 0) break; /* the reader is gone */
	}
	flush_pending();
	fflush(stdout);
	return 0;
}
