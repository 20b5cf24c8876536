// SPDX-License-Identifier: GPL-2.0
// keelson service datapath: socket-level load balancer (cgroup/connect4, sendmsg4, recvmsg4,
// getpeername4) for clients on the node, and a tc classifier pair on the node uplink for NodePort /
// LoadBalancer / externalIP traffic arriving from outside.
//
// A client socket in the attached cgroup that connects (TCP/UDP) or sends (unconnected UDP) to a
// service frontend gets its destination rewritten to a backend *before* any packet exists, so no
// per-packet NAT and no conntrack entry is needed. recvmsg4/getpeername4 translate the backend back
// to the frontend, so UDP replies and getpeername(2) show the VIP.
//
// Map layout is shared with the Rust side (datapath-ebpf/src/ebpf.rs); all addresses and ports are
// kept in network byte order exactly as they appear in bpf_sock_addr.

#include <stddef.h>
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define SCOPE_SOCKET 0
#define SCOPE_EXTERNAL 1
#define FLAG_MASQUERADE 1
#define MASQ_MARK 0x4000
#define AFFINITY_NS 1000000000ULL

struct svc_key {
	__u32 addr;
	__u16 port;
	__u8 proto;
	__u8 scope;
};

struct svc_val {
	__u32 id;             // frontend id: backends live at (id, 0..count)
	__u16 count;          // 0 = no usable backend: refuse the connection
	__u16 flags;
	__u32 affinity_secs;  // 0 = no ClientIP affinity
};

struct be_key {
	__u32 id;
	__u32 slot;
};

struct be_val {
	__u32 addr;
	__u16 port;
	__u16 pad;
};

struct aff_key {
	__u64 netns_cookie;   // the client's network namespace stands in for its IP
	__u32 id;
	__u32 pad;
};

struct aff_val {
	__u64 last_ns;
	__u32 addr;
	__u16 port;
	__u16 pad;
};

struct rev_key {
	__u64 cookie;         // socket cookie
	__u32 addr;           // backend
	__u16 port;
	__u16 pad;
};

struct rev_val {
	__u32 addr;           // frontend
	__u16 port;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct svc_key);
	__type(value, struct svc_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kl_svc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct be_key);
	__type(value, struct be_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kl_be SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct aff_key);
	__type(value, struct aff_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kl_aff SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, struct rev_key);
	__type(value, struct rev_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kl_rev SEC(".maps");

static __always_inline int translate(struct bpf_sock_addr *ctx)
{
	struct svc_key sk = {};
	sk.addr = ctx->user_ip4;
	sk.port = (__u16)ctx->user_port;
	sk.proto = (__u8)ctx->protocol;
	sk.scope = SCOPE_SOCKET;

	struct svc_val *svc = bpf_map_lookup_elem(&kl_svc, &sk);
	if (!svc)
		return 1; // not a service: leave the socket alone
	if (svc->count == 0)
		return 0; // known frontend without backends: the syscall fails with EPERM

	struct be_val be = {};
	int have = 0;
	struct aff_key ak = {};
	__u64 now = bpf_ktime_get_ns();
	if (svc->affinity_secs) {
		ak.netns_cookie = bpf_get_netns_cookie(ctx);
		ak.id = svc->id;
		struct aff_val *av = bpf_map_lookup_elem(&kl_aff, &ak);
		if (av && now - av->last_ns < (__u64)svc->affinity_secs * AFFINITY_NS) {
			// Only honour the remembered backend if it is still one of the frontend's backends.
			__u32 n = svc->count;
			for (__u32 i = 0; i < 256 && i < n; i++) {
				struct be_key bk = { .id = svc->id, .slot = i };
				struct be_val *b = bpf_map_lookup_elem(&kl_be, &bk);
				if (b && b->addr == av->addr && b->port == av->port) {
					be = *b;
					have = 1;
					break;
				}
			}
		}
	}
	if (!have) {
		struct be_key bk = { .id = svc->id, .slot = bpf_get_prandom_u32() % svc->count };
		struct be_val *b = bpf_map_lookup_elem(&kl_be, &bk);
		if (!b)
			return 0; // inconsistent maps (mid-update): refuse rather than leak to the VIP
		be = *b;
	}
	if (svc->affinity_secs) {
		struct aff_val nv = { .last_ns = now, .addr = be.addr, .port = be.port };
		bpf_map_update_elem(&kl_aff, &ak, &nv, BPF_ANY);
	}

	struct rev_key rk = { .cookie = bpf_get_socket_cookie(ctx), .addr = be.addr, .port = be.port };
	struct rev_val rv = { .addr = sk.addr, .port = sk.port };
	bpf_map_update_elem(&kl_rev, &rk, &rv, BPF_ANY);

	ctx->user_ip4 = be.addr;
	ctx->user_port = (__u32)be.port;
	return 1;
}

static __always_inline int reverse(struct bpf_sock_addr *ctx)
{
	struct rev_key rk = {};
	rk.cookie = bpf_get_socket_cookie(ctx);
	rk.addr = ctx->user_ip4;
	rk.port = (__u16)ctx->user_port;
	struct rev_val *rv = bpf_map_lookup_elem(&kl_rev, &rk);
	if (rv) {
		ctx->user_ip4 = rv->addr;
		ctx->user_port = (__u32)rv->port;
	}
	return 1;
}

SEC("cgroup/connect4")
int kl_connect4(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return 1;
	return translate(ctx);
}

SEC("cgroup/sendmsg4")
int kl_sendmsg4(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_UDP)
		return 1;
	return translate(ctx);
}

SEC("cgroup/recvmsg4")
int kl_recvmsg4(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_UDP)
		return 1;
	return reverse(ctx);
}

SEC("cgroup/getpeername4")
int kl_getpeername4(struct bpf_sock_addr *ctx)
{
	return reverse(ctx);
}

// ---- tc NodePort / LoadBalancer / externalIP from outside the node ----
//
// Ingress on the uplink DNATs a packet addressed to an external frontend to a backend and records the
// flow in two LRU maps (forward: client→frontend gives the backend for later packets; reverse:
// backend→client gives the frontend). Egress on the uplink rewrites replies' source back to the
// frontend. Under the Cluster policy the packet is marked so the node masquerades it on its way to
// the backend (the kernel's conntrack then undoes the SNAT for replies); under Local the client IP
// is preserved.

struct ct_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct ct_val {
	__u32 addr;
	__u16 port;
	__u16 flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, struct ct_key);
	__type(value, struct ct_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kl_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, struct ct_key);
	__type(value, struct ct_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} kl_rct SEC(".maps");

struct flow {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	int l4off;
};

static __always_inline int parse(struct __sk_buff *skb, struct flow *f)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return -1;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->ihl < 5)
		return -1;
	if (ip->frag_off & bpf_htons(0x3fff))
		return -1; // fragments carry no ports: not translated
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return -1;
	f->saddr = ip->saddr;
	f->daddr = ip->daddr;
	f->proto = ip->protocol;
	f->l4off = ETH_HLEN + ip->ihl * 4;
	__u16 ports[2];
	if (bpf_skb_load_bytes(skb, f->l4off, ports, sizeof(ports)) < 0)
		return -1;
	f->sport = ports[0];
	f->dport = ports[1];
	return 0;
}

// Rewrites the destination (dst=1) or source address+port, fixing the IP and L4 checksums.
static __always_inline void rewrite(struct __sk_buff *skb, struct flow *f, int dst, __u32 new_addr, __u16 new_port)
{
	__u32 old_addr = dst ? f->daddr : f->saddr;
	__u16 old_port = dst ? f->dport : f->sport;
	int addr_off = ETH_HLEN + (dst ? offsetof(struct iphdr, daddr) : offsetof(struct iphdr, saddr));
	int port_off = f->l4off + (dst ? offsetof(struct tcphdr, dest) : offsetof(struct tcphdr, source));
	int csum_off = f->l4off + (f->proto == IPPROTO_TCP ? offsetof(struct tcphdr, check) : offsetof(struct udphdr, check));
	__u64 mangled = f->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	bpf_l4_csum_replace(skb, csum_off, old_addr, new_addr, BPF_F_PSEUDO_HDR | mangled | sizeof(new_addr));
	bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old_addr, new_addr, sizeof(new_addr));
	bpf_skb_store_bytes(skb, addr_off, &new_addr, sizeof(new_addr), 0);
	bpf_l4_csum_replace(skb, csum_off, old_port, new_port, mangled | sizeof(new_port));
	bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0);
}

SEC("classifier")
int kl_nodeport_in(struct __sk_buff *skb)
{
	struct flow f = {};
	if (parse(skb, &f) < 0)
		return TC_ACT_OK;
	struct ct_key fk = { .saddr = f.saddr, .daddr = f.daddr, .sport = f.sport, .dport = f.dport, .proto = f.proto };
	struct ct_val be = {};
	struct ct_val *known = bpf_map_lookup_elem(&kl_ct, &fk);
	if (known) {
		be = *known;
	} else {
		struct svc_key sk = { .addr = f.daddr, .port = f.dport, .proto = f.proto, .scope = SCOPE_EXTERNAL };
		struct svc_val *svc = bpf_map_lookup_elem(&kl_svc, &sk);
		if (!svc)
			return TC_ACT_OK; // not ours: normal stack processing
		if (svc->count == 0)
			return TC_ACT_SHOT; // e.g. externalTrafficPolicy Local without a local endpoint
		struct be_key bk = { .id = svc->id, .slot = bpf_get_prandom_u32() % svc->count };
		struct be_val *b = bpf_map_lookup_elem(&kl_be, &bk);
		if (!b)
			return TC_ACT_SHOT;
		be.addr = b->addr;
		be.port = b->port;
		be.flags = svc->flags;
		bpf_map_update_elem(&kl_ct, &fk, &be, BPF_ANY);
		struct ct_key rk = { .saddr = b->addr, .daddr = f.saddr, .sport = b->port, .dport = f.sport, .proto = f.proto };
		struct ct_val fe = { .addr = f.daddr, .port = f.dport };
		bpf_map_update_elem(&kl_rct, &rk, &fe, BPF_ANY);
	}
	if (be.flags & FLAG_MASQUERADE)
		skb->mark |= MASQ_MARK;
	rewrite(skb, &f, 1, be.addr, be.port);
	return TC_ACT_OK;
}

SEC("classifier")
int kl_nodeport_out(struct __sk_buff *skb)
{
	struct flow f = {};
	if (parse(skb, &f) < 0)
		return TC_ACT_OK;
	struct ct_key rk = { .saddr = f.saddr, .daddr = f.daddr, .sport = f.sport, .dport = f.dport, .proto = f.proto };
	struct ct_val *fe = bpf_map_lookup_elem(&kl_rct, &rk);
	if (fe)
		rewrite(skb, &f, 0, fe->addr, fe->port);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
