/*
 * Raw, packet and netlink sockets and socket options, in one process.
 *
 * args: NETNS(-)
 *
 * Holds a raw ICMP socket, an AF_PACKET socket bound to lo, a NETLINK_ROUTE socket bound
 * with the link group, and a UDP socket with options set. After restore: the ICMP socket
 * pings 127.0.0.1 and gets the echo back; the packet socket is bound to lo with its protocol;
 * the netlink socket keeps its port id and group and answers an RTM_GETLINK dump; the UDP
 * socket keeps its port and options; a unix socket pair (sock_diag is asked in the process's
 * namespace) still holds its queued message.
 */
#include "protocol.c"
#include "netstream.h"
#include <linux/if_ether.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <netinet/ip.h>
#include <netinet/ip_icmp.h>
#include <netpacket/packet.h>

static uint16_t csum(const void *p, size_t n)
{
	const uint16_t *w = p;
	uint32_t s = 0;
	for (; n > 1; n -= 2)
		s += *w++;
	if (n)
		s += *(const uint8_t *)w;
	s = (s >> 16) + (s & 0xffff);
	s += s >> 16;
	return ~s;
}

static int opt(int fd, int level, int name)
{
	int v = -1;
	socklen_t l = sizeof(v);
	getsockopt(fd, level, name, &v, &l);
	return v;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: NETNS\n");
		return 2;
	}
	ns_enter(argv[1]);
	wl_init();
	int one = 1, tos = 0x10;
	int icmp = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
	int pkt = socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_ALL));
	int nl = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
	int udp = socket(AF_INET, SOCK_DGRAM, 0);
	if (icmp < 0 || pkt < 0 || nl < 0 || udp < 0)
		wl_die("socket");
	struct sockaddr_ll ll = { .sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL),
				  .sll_ifindex = (int)if_nametoindex("lo") };
	if (bind(pkt, (struct sockaddr *)&ll, sizeof(ll)))
		wl_die("bind packet");
	struct sockaddr_nl sn = { .nl_family = AF_NETLINK, .nl_groups = RTMGRP_LINK };
	if (bind(nl, (struct sockaddr *)&sn, sizeof(sn)))
		wl_die("bind netlink");
	socklen_t sl = sizeof(sn);
	getsockname(nl, (struct sockaddr *)&sn, &sl);
	uint32_t portid = sn.nl_pid;
	setsockopt(udp, SOL_SOCKET, SO_BROADCAST, &one, sizeof(one));
	setsockopt(udp, IPPROTO_IP, IP_TOS, &tos, sizeof(tos));
	struct sockaddr_storage us;
	socklen_t ul = make_addr(&us, 0, "127.0.0.1", 7777);
	if (bind(udp, (struct sockaddr *)&us, ul))
		wl_die("bind udp");
	int pair[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, pair) || send(pair[0], "unix", 4, 0) != 4)
		wl_die("socketpair");
	wl_ready();
	wl_wait_check(NULL);
	char ub[8] = { 0 };
	if (recv(pair[1], ub, sizeof(ub), MSG_DONTWAIT) != 4 || memcmp(ub, "unix", 4))
		wl_fail("the unix pair lost its message");

	/* ICMP echo to 127.0.0.1 through the raw socket. */
	struct icmphdr h = { .type = ICMP_ECHO, .un.echo.id = htons(0x4321), .un.echo.sequence = htons(7) };
	h.checksum = csum(&h, sizeof(h));
	struct sockaddr_storage lo;
	socklen_t lol = make_addr(&lo, 0, "127.0.0.1", 0);
	if (sendto(icmp, &h, sizeof(h), 0, (struct sockaddr *)&lo, lol) != sizeof(h))
		wl_fail("icmp send: %s", strerror(errno));
	int got = 0;
	double end = now_s() + 10;
	while (!got && now_s() < end) {
		char buf[256];
		struct pollfd p = { .fd = icmp, .events = POLLIN };
		if (poll(&p, 1, 1000) != 1)
			continue;
		ssize_t n = recv(icmp, buf, sizeof(buf), 0);
		if (n >= (ssize_t)(sizeof(struct iphdr) + sizeof(h))) {
			struct icmphdr *r = (struct icmphdr *)(buf + ((struct iphdr *)buf)->ihl * 4);
			if (r->type == ICMP_ECHOREPLY && r->un.echo.id == htons(0x4321))
				got = 1;
		}
	}
	if (!got)
		wl_fail("no ICMP echo reply on the raw socket");

	struct sockaddr_ll ll2;
	socklen_t l2 = sizeof(ll2);
	if (getsockname(pkt, (struct sockaddr *)&ll2, &l2) ||
	    ll2.sll_ifindex != (int)if_nametoindex("lo") || ll2.sll_protocol != htons(ETH_P_ALL))
		wl_fail("packet socket not bound to lo/ETH_P_ALL (ifindex %d)", ll2.sll_ifindex);

	struct sockaddr_nl sn2;
	sl = sizeof(sn2);
	getsockname(nl, (struct sockaddr *)&sn2, &sl);
	if (sn2.nl_pid != portid || !(sn2.nl_groups & RTMGRP_LINK))
		wl_fail("netlink port %u groups %#x, want %u with the link group", sn2.nl_pid,
			sn2.nl_groups, portid);
	struct {
		struct nlmsghdr n;
		struct ifinfomsg i;
	} req = { .n = { .nlmsg_len = sizeof(req), .nlmsg_type = RTM_GETLINK,
			 .nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP, .nlmsg_seq = 1 },
		  .i = { .ifi_family = AF_UNSPEC } };
	if (send(nl, &req, sizeof(req), 0) != sizeof(req))
		wl_fail("netlink send: %s", strerror(errno));
	int done = 0, links = 0;
	end = now_s() + 10;
	while (!done && now_s() < end) {
		static char buf[65536];
		struct pollfd p = { .fd = nl, .events = POLLIN };
		if (poll(&p, 1, 1000) != 1)
			continue;
		ssize_t n = recv(nl, buf, sizeof(buf), 0);
		for (struct nlmsghdr *m = (struct nlmsghdr *)buf; n > 0 && NLMSG_OK(m, (size_t)n);
		     m = NLMSG_NEXT(m, n)) {
			if (m->nlmsg_type == NLMSG_DONE)
				done = 1;
			else if (m->nlmsg_type == RTM_NEWLINK && m->nlmsg_seq == 1)
				links++;
		}
	}
	if (!done || links == 0)
		wl_fail("no RTM_GETLINK answer (%d links)", links);

	struct sockaddr_in ua;
	socklen_t ual = sizeof(ua);
	getsockname(udp, (struct sockaddr *)&ua, &ual);
	if (ntohs(ua.sin_port) != 7777)
		wl_fail("udp port %d", ntohs(ua.sin_port));
	if (opt(udp, SOL_SOCKET, SO_BROADCAST) != 1 || opt(udp, IPPROTO_IP, IP_TOS) != tos)
		wl_fail("udp options lost");
	return wl_finish();
}
