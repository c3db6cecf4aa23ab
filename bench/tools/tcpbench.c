/*
 * tcpbench: tiny TCP/UDP load tool for `npm run bench -- packet` (compiled
 * with gcc at bench time). Bounded: every client mode stops after SECONDS.
 * ADDR is IPv4 or IPv6.
 *
 *   tcpbench server ADDR PORT [ADDR6]  port+0: accept and close   (connection rate; also on ADDR6)
 *                                      port+1: echo, 1 byte        (request/response)
 *                                      port+2: read and discard    (throughput)
 *                                      port+3: UDP echo            (new UDP flows)
 *   tcpbench conn   ADDR PORT SECONDS   sequential connect/close; prints {"conns":N,"seconds":S}
 *   tcpbench rr     ADDR PORT SECONDS   1-byte ping-pong on one connection; prints {"trips":N,"seconds":S}
 *   tcpbench stream ADDR PORT SECONDS   bulk send on one connection; prints {"bytes":N,"seconds":S}
 *   tcpbench udp    ADDR PORT SECONDS   sequential new UDP flows: a fresh socket (new source port) sends
 *                                       1 byte and waits for the echo; prints {"flows":N,"seconds":S}
 *
 * The server exits when its stdin closes (so it never outlives the bench).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

typedef struct { struct sockaddr_storage ss; socklen_t len; } addr_t;

static addr_t addr_of(const char *a, int port) {
  addr_t r;
  memset(&r, 0, sizeof r);
  struct sockaddr_in *s4 = (struct sockaddr_in *)&r.ss;
  struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&r.ss;
  if (inet_pton(AF_INET, a, &s4->sin_addr) == 1) {
    s4->sin_family = AF_INET;
    s4->sin_port = htons(port);
    r.len = sizeof *s4;
  } else if (inet_pton(AF_INET6, a, &s6->sin6_addr) == 1) {
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(port);
    r.len = sizeof *s6;
  } else { fprintf(stderr, "bad address %s\n", a); exit(2); }
  return r;
}

static int bound(const char *a, int port, int type) {
  addr_t s = addr_of(a, port);
  int fd = socket(s.ss.ss_family, type, 0), one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, (struct sockaddr *)&s.ss, s.len) || (type == SOCK_STREAM && listen(fd, 4096))) { perror("bind/listen"); exit(1); }
  return fd;
}

static int listen_on(const char *a, int port) { return bound(a, port, SOCK_STREAM); }

static void *echo_thread(void *arg) {
  int fd = (int)(long)arg;
  char buf[65536];
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0) break;
    if (write(fd, buf, n) != n) break;
  }
  close(fd);
  return NULL;
}

static void *sink_thread(void *arg) {
  int fd = (int)(long)arg;
  static __thread char buf[1 << 18];
  while (read(fd, buf, sizeof buf) > 0) {}
  close(fd);
  return NULL;
}

static void *stdin_watch(void *arg) {
  (void)arg;
  char c;
  while (read(0, &c, 1) > 0) {}
  _exit(0);
}

static int server(const char *a, int port, const char *a6) {
  enum { ACCEPT, ECHO, SINK, UDP, ACCEPT6, N };
  int fds[N] = { listen_on(a, port), listen_on(a, port + 1), listen_on(a, port + 2), bound(a, port + 3, SOCK_DGRAM), a6 ? listen_on(a6, port) : -1 };
  int n = a6 ? N : N - 1;
  pthread_t t;
  pthread_create(&t, NULL, stdin_watch, NULL);
  printf("{\"listening\":%d}\n", port);
  fflush(stdout);
  struct pollfd p[N];
  for (int i = 0; i < n; i++) { p[i].fd = fds[i]; p[i].events = POLLIN; }
  for (;;) {
    if (poll(p, n, -1) < 0) continue;
    for (int i = 0; i < n; i++) {
      if (!(p[i].revents & POLLIN)) continue;
      if (i == UDP) {
        char b[64];
        struct sockaddr_storage from;
        socklen_t fl = sizeof from;
        ssize_t k = recvfrom(fds[i], b, sizeof b, 0, (struct sockaddr *)&from, &fl);
        if (k > 0) sendto(fds[i], b, k, 0, (struct sockaddr *)&from, fl);
        continue;
      }
      int c = accept(fds[i], NULL, NULL);
      if (c < 0) continue;
      if (i == ACCEPT || i == ACCEPT6) close(c);
      else {
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        pthread_create(&t, &at, i == ECHO ? echo_thread : sink_thread, (void *)(long)c);
      }
    }
  }
}

static int connect_to(addr_t *s, int type) {
  int fd = socket(s->ss.ss_family, type, 0);
  if (fd < 0) { perror("socket"); exit(1); }
  struct timeval tv = { 2, 0 };
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (connect(fd, (struct sockaddr *)&s->ss, s->len)) { close(fd); return -1; }
  return fd;
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc < 4) { fprintf(stderr, "usage: tcpbench server|conn|rr|stream|udp ADDR PORT [SECONDS|ADDR6]\n"); return 2; }
  const char *mode = argv[1];
  int port = atoi(argv[3]);
  if (!strcmp(mode, "server")) return server(argv[2], port, argc > 4 ? argv[4] : NULL);
  double secs = argc > 4 ? atof(argv[4]) : 3;
  if (secs <= 0 || secs > 30) { fprintf(stderr, "SECONDS must be in (0, 30]\n"); return 2; }
  addr_t s = addr_of(argv[2], port);
  double t0 = now(), end = t0 + secs, t;
  if (!strcmp(mode, "conn")) {
    long n = 0, fail = 0;
    struct linger lg = { 1, 0 }; /* RST on close: no TIME_WAIT, so ports never run out */
    while ((t = now()) < end) {
      int fd = connect_to(&s, SOCK_STREAM);
      if (fd < 0) { if (++fail > 3) break; continue; }
      setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
      close(fd);
      n++;
    }
    printf("{\"conns\":%ld,\"failed\":%ld,\"seconds\":%.4f}\n", n, fail, now() - t0);
    return n ? 0 : 1;
  }
  if (!strcmp(mode, "udp")) {
    long n = 0, fail = 0;
    char b = 'x';
    while ((t = now()) < end) {
      int fd = connect_to(&s, SOCK_DGRAM);
      if (fd < 0) { if (++fail > 3) break; continue; }
      if (write(fd, &b, 1) != 1 || read(fd, &b, 1) != 1) { close(fd); if (++fail > 3) break; continue; }
      close(fd);
      n++;
    }
    printf("{\"flows\":%ld,\"failed\":%ld,\"seconds\":%.4f}\n", n, fail, now() - t0);
    return n ? 0 : 1;
  }
  int fd = connect_to(&s, SOCK_STREAM);
  if (fd < 0) { printf("{\"error\":\"connect: %s\"}\n", strerror(errno)); return 1; }
  if (!strcmp(mode, "rr")) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    long n = 0;
    char b = 'x';
    while ((t = now()) < end) {
      if (write(fd, &b, 1) != 1 || read(fd, &b, 1) != 1) { printf("{\"error\":\"rr broken after %ld\"}\n", n); return 1; }
      n++;
    }
    printf("{\"trips\":%ld,\"seconds\":%.4f}\n", n, now() - t0);
    return 0;
  }
  if (!strcmp(mode, "stream")) {
    static char buf[1 << 17];
    memset(buf, 'x', sizeof buf);
    long long bytes = 0;
    while ((t = now()) < end) {
      ssize_t w = write(fd, buf, sizeof buf);
      if (w <= 0) { printf("{\"error\":\"stream broken after %lld\"}\n", bytes); return 1; }
      bytes += w;
    }
    double el = now() - t0;
    close(fd);
    printf("{\"bytes\":%lld,\"seconds\":%.4f}\n", bytes, el);
    return 0;
  }
  fprintf(stderr, "unknown mode %s\n", mode);
  return 2;
}
