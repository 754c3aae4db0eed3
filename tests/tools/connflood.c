/*
** connflood.c -- hold many TCP connections open against a server, the way a
** hostile client would, and report when the server closed them.
**
**   connflood --port P [--host 127.0.0.1] [--source 127.0.0.2]
**             [--idle N] [--trickle N] [--seconds S] [--ready FILE] [--tls]
**
** --idle connections send nothing; --trickle connections send one byte of
** a never-ending request header ("GET / HTTP/1.1\r\nX: aaaa...") every
** 500 ms, or with --tls of a never-ending TLS handshake (a record header
** announcing a 16 KiB ClientHello, then its bytes).  --source binds the client side to another loopback address (a
** second "client IP").  Prints "open N" once every connection is
** established (and writes it to --ready FILE), then at the end, one line each:
**   idle-closed K AT    (K of the idle ones closed by the server; AT: the
**   trickle-closed K AT  median seconds after the start at which they were)
**   refused K           (closed within 200 ms of being opened)
** Exits after --seconds (default 10) or once every connection is closed.
** Raises its own descriptor limit.
*/
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct C {
	int fd;
	int trickle;
	int sent;      /* header bytes sent */
	double opened; /* seconds since start, when established */
	double closed; /* 0: still open */
} C;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static void usage(void)
{
	fprintf(stderr, "usage: connflood --port P [--host H] [--source A] [--idle N] [--trickle N] [--seconds S] [--ready FILE] [--tls]\n");
	exit(2);
}

static void report(const char *what, C *cs, int n, int trickle, double *tmp)
{
	int k = 0, i;
	for (i = 0; i < n; i++)
		if (cs[i].trickle == trickle && cs[i].closed > 0 && cs[i].closed - cs[i].opened >= 0.2)
			tmp[k++] = cs[i].closed;
	qsort(tmp, (size_t)k, sizeof *tmp, cmp_d);
	printf("%s %d %.2f\n", what, k, k ? tmp[k / 2] : 0.0);
}

int main(int argc, char **argv)
{
	const char *host = "127.0.0.1", *source = NULL, *ready = NULL;
	int port = 0, idle = 0, trickle = 0, tls = 0, i;
	double seconds = 10;
	for (i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--tls")) {
			tls = 1;
			continue;
		}
		if (i + 1 >= argc)
			usage();
		if (!strcmp(argv[i], "--port"))
			port = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--host"))
			host = argv[++i];
		else if (!strcmp(argv[i], "--source"))
			source = argv[++i];
		else if (!strcmp(argv[i], "--idle"))
			idle = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--trickle"))
			trickle = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--ready"))
			ready = argv[++i];
		else if (!strcmp(argv[i], "--seconds"))
			seconds = atof(argv[++i]);
		else
			usage();
	}
	int n = idle + trickle;
	if (port <= 0 || n <= 0)
		usage();
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)n + 64) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	C *cs = calloc((size_t)n, sizeof *cs);
	struct pollfd *pf = calloc((size_t)n, sizeof *pf);
	double *tmp = calloc((size_t)n, sizeof *tmp);
	if (!cs || !pf || !tmp)
		return 1;
	struct sockaddr_in to = {0}, from = {0};
	to.sin_family = AF_INET;
	to.sin_port = htons((unsigned short)port);
	if (inet_pton(AF_INET, host, &to.sin_addr) != 1)
		usage();
	if (source) {
		from.sin_family = AF_INET;
		if (inet_pton(AF_INET, source, &from.sin_addr) != 1)
			usage();
	}
	double t0 = now();
	for (i = 0; i < n; i++) {
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0) {
			fprintf(stderr, "connflood: socket %d: %s\n", i, strerror(errno));
			return 1;
		}
		if (source && bind(fd, (struct sockaddr *)&from, sizeof from) != 0) {
			fprintf(stderr, "connflood: bind %s: %s\n", source, strerror(errno));
			return 1;
		}
		if (connect(fd, (struct sockaddr *)&to, sizeof to) != 0) {
			fprintf(stderr, "connflood: connect %d: %s\n", i, strerror(errno));
			return 1;
		}
		fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
		cs[i].fd = fd;
		cs[i].trickle = i >= idle;
		cs[i].opened = now() - t0;
	}
	printf("open %d\n", n);
	fflush(stdout);
	if (ready) {
		FILE *f = fopen(ready, "w");
		if (f) {
			fprintf(f, "open %d\n", n);
			fclose(f);
		}
	}
	static const char http_head[] = "GET / HTTP/1.1\r\nX-Trickle: ";
	/* handshake record, TLS 1.0 framing, length 0x3fff; ClientHello */
	static const char tls_head[] = "\x16\x03\x01\x3f\xff\x01\x00\x3f\xfb\x03\x03";
	const char *head = tls ? tls_head : http_head;
	int head_len = tls ? (int)sizeof tls_head - 1 : (int)sizeof http_head - 1;
	char filler = tls ? 0 : 'a';
	double next_byte = 0;
	int open = n;
	while (open > 0 && now() - t0 < seconds) {
		double t = now() - t0;
		if (t >= next_byte) {
			for (i = 0; i < n; i++) {
				if (!cs[i].trickle || cs[i].closed > 0)
					continue;
				char c = cs[i].sent < head_len ? head[cs[i].sent] : filler;
				if (write(cs[i].fd, &c, 1) == 1)
					cs[i].sent++;
			}
			next_byte = t + 0.5;
		}
		int m = 0;
		for (i = 0; i < n; i++) {
			if (cs[i].closed > 0)
				continue;
			pf[m].fd = cs[i].fd;
			pf[m].events = POLLIN;
			pf[m].revents = 0;
			m++;
		}
		int wait = (int)((next_byte - t) * 1000) + 1;
		if (poll(pf, (nfds_t)m, wait > 100 ? 100 : wait) < 0 && errno != EINTR)
			return 1;
		for (i = 0; i < n; i++) {
			char buf[4096];
			if (cs[i].closed > 0)
				continue;
			ssize_t r = read(cs[i].fd, buf, sizeof buf);
			if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
				cs[i].closed = now() - t0;
				if (cs[i].closed <= 0)
					cs[i].closed = 1e-9;
				close(cs[i].fd);
				open--;
			}
		}
	}
	int refused = 0;
	for (i = 0; i < n; i++)
		if (cs[i].closed > 0 && cs[i].closed - cs[i].opened < 0.2)
			refused++;
	report("idle-closed", cs, n, 0, tmp);
	report("trickle-closed", cs, n, 1, tmp);
	printf("refused %d\n", refused);
	for (i = 0; i < n; i++)
		if (cs[i].closed <= 0)
			close(cs[i].fd);
	free(cs);
	free(pf);
	free(tmp);
	return 0;
}
