/*
 * sink: a minimal Stripe-shaped HTTP/1.1 server for the throughput
 * benchmark, fast enough not to be what is measured.
 *
 * One thread, epoll, keep-alive.  It answers the four requests of a
 * Stripe-path attribution with the least JSON the worker accepts: the
 * customer (GET /v1/customers/{id}, and POST echoing cello_ucc from the
 * form body), and empty event and invoice lists.  With --delay-ms N every
 * answer is held back N ms (a slow provider), without blocking the others.
 *
 *   sink --port-file FILE [--delay-ms N]
 *
 * Prints nothing; counts nothing: wrk measures its capacity, the worker's
 * http_log what the worker did.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONN 4096
#define BUF_SIZE 65536

typedef struct Conn
{
	int			fd;
	char		in[BUF_SIZE];
	size_t		in_len;
	char		out[BUF_SIZE];
	size_t		out_len;
	double		due;			/* when the held answer may go out; 0: none */
} Conn;

static Conn *conns[MAX_CONN];
static int	delay_ms = 0;

static double
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

/* The value of a form field in body (percent-encoding left as is). */
static void
form_value(const char *body, size_t len, const char *key, char *dst, size_t dstlen)
{
	size_t		klen = strlen(key);

	dst[0] = '\0';
	for (size_t i = 0; i + klen < len; i++)
	{
		if ((i == 0 || body[i - 1] == '&') && strncmp(body + i, key, klen) == 0 &&
			body[i + klen] == '=')
		{
			size_t		j = i + klen + 1,
						n = 0;

			while (j < len && body[j] != '&' && n + 1 < dstlen)
				dst[n++] = body[j++];
			dst[n] = '\0';
			return;
		}
	}
}

/* Answer one complete request; returns bytes consumed, 0 if incomplete. */
static size_t
answer(Conn *c)
{
	char	   *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
	char		method[8],
				path[512],
				json[1024],
				ucc[128];
	size_t		head,
				body_len = 0;
	char	   *cl;

	if (end == NULL)
		return 0;
	head = end - c->in + 4;
	cl = memmem(c->in, head, "Content-Length:", 15);
	if (cl == NULL)
		cl = memmem(c->in, head, "content-length:", 15);
	if (cl)
		body_len = strtoul(cl + 15, NULL, 10);
	if (c->in_len < head + body_len)
		return 0;
	if (sscanf(c->in, "%7s %511s", method, path) != 2)
		return head + body_len;

	if (strncmp(path, "/stripe/v1/customers/", 21) == 0)
	{
		char	   *id = path + 21;
		char	   *q = strchr(id, '?');

		if (q)
			*q = '\0';
		form_value(c->in + head, body_len, "metadata%5Bcello_ucc%5D", ucc, sizeof(ucc));
		snprintf(json, sizeof(json),
				 "{\"id\":\"%s\",\"object\":\"customer\",\"metadata\":{%s%s%s}}",
				 id, ucc[0] ? "\"cello_ucc\":\"" : "", ucc, ucc[0] ? "\"" : "");
	}
	else if (strncmp(path, "/stripe/v1/events/", 18) == 0)
		snprintf(json, sizeof(json), "{\"id\":\"evt\",\"object\":\"event\"}");
	else
		snprintf(json, sizeof(json), "{\"object\":\"list\",\"data\":[],\"has_more\":false}");

	c->out_len += snprintf(c->out + c->out_len, sizeof(c->out) - c->out_len,
						   "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
						   "Content-Length: %zu\r\n\r\n%s", strlen(json), json);
	c->due = delay_ms ? now_ms() + delay_ms : 0;
	return head + body_len;
}

static void
close_conn(int epfd, Conn *c)
{
	epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	conns[c->fd] = NULL;
	free(c);
}

static void
flush_out(int epfd, Conn *c)
{
	while (c->out_len > 0)
	{
		ssize_t		n = write(c->fd, c->out, c->out_len);

		if (n <= 0)
		{
			if (n < 0 && errno == EAGAIN)
				return;
			close_conn(epfd, c);
			return;
		}
		memmove(c->out, c->out + n, c->out_len - n);
		c->out_len -= n;
	}
	c->due = 0;
}

int
main(int argc, char **argv)
{
	const char *port_file = NULL;
	struct sockaddr_in addr = {0};
	socklen_t	alen = sizeof(addr);
	int			one = 1;
	int			lfd,
				epfd;
	struct epoll_event ev = {0},
				events[256];
	FILE	   *f;

	for (int i = 1; i < argc; i++)
	{
		if (strcmp(argv[i], "--port-file") == 0 && i + 1 < argc)
			port_file = argv[++i];
		else if (strcmp(argv[i], "--delay-ms") == 0 && i + 1 < argc)
			delay_ms = atoi(argv[++i]);
	}
	if (port_file == NULL)
	{
		fprintf(stderr, "usage: sink --port-file FILE [--delay-ms N]\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	addr.sin_family = AF_INET;
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(lfd, (struct sockaddr *) &addr, sizeof(addr)) < 0 || listen(lfd, 1024) < 0)
	{
		perror("sink: bind/listen");
		return 1;
	}
	getsockname(lfd, (struct sockaddr *) &addr, &alen);
	f = fopen(port_file, "w");
	fprintf(f, "%d\n", ntohs(addr.sin_port));
	fclose(f);

	epfd = epoll_create1(0);
	ev.events = EPOLLIN;
	ev.data.fd = lfd;
	epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);

	for (;;)
	{
		int			timeout = delay_ms ? 1 : -1;
		int			n = epoll_wait(epfd, events, 256, timeout);
		double		now = now_ms();

		for (int i = 0; i < n; i++)
		{
			int			fd = events[i].data.fd;
			Conn	   *c;

			if (fd == lfd)
			{
				int			cfd;

				while ((cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0)
				{
					if (cfd >= MAX_CONN)
					{
						close(cfd);
						continue;
					}
					setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
					conns[cfd] = calloc(1, sizeof(Conn));
					conns[cfd]->fd = cfd;
					ev.events = EPOLLIN;
					ev.data.fd = cfd;
					epoll_ctl(epfd, EPOLL_CTL_ADD, cfd, &ev);
				}
				continue;
			}
			c = conns[fd];
			if (c == NULL)
				continue;
			for (;;)
			{
				ssize_t		r = read(fd, c->in + c->in_len, sizeof(c->in) - c->in_len);

				if (r > 0)
					c->in_len += r;
				if (r <= 0 || c->in_len == sizeof(c->in))
				{
					if (r == 0 || (r < 0 && errno != EAGAIN))
					{
						close_conn(epfd, c);
						c = NULL;
					}
					break;
				}
			}
			while (c && c->due == 0)
			{
				size_t		used = answer(c);

				if (used == 0)
					break;
				memmove(c->in, c->in + used, c->in_len - used);
				c->in_len -= used;
			}
			if (c && c->due == 0 && c->out_len)
				flush_out(epfd, c);
		}
		if (delay_ms)
			for (int fd = 0; fd < MAX_CONN; fd++)
				if (conns[fd] && conns[fd]->due && conns[fd]->due <= now)
					flush_out(epfd, conns[fd]); /* curl does not pipeline */
	}
}
