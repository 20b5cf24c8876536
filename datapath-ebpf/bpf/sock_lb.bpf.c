// SPDX-License-Identifier: GPL-2.0
// keelson socket-level load balancer (cgroup/connect4, sendmsg4, recvmsg4, getpeername4).
//
// A client socket in the attached cgroup that connects (TCP/UDP) or sends (unconnected UDP) to a
// service frontend gets its destination rewritten to a backend *before* any packet exists, so no
// per-packet NAT and no conntrack entry is needed. recvmsg4/getpeername4 translate the backend back
// to the frontend, so UDP replies and getpeername(2) show the VIP.
//
// Map layout is shared with the Rust side (datapath-ebpf/src/ebpf.rs); all addresses and ports are
// kept in network byte order exactly as they appear in bpf_sock_addr.

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#define SCOPE_SOCKET 0
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

char LICENSE[] SEC("license") = "GPL";
