/* tc (clsact) ingress program of the tc-bpf relay engine (README "tc-bpf"). An established TFTP session's
 * datagrams are rewritten here, both ways, so they never wake the balancer: client addr:port -> balancer:session
 * port becomes balancer:session port -> backend:TID, and back, and the datagram continues to the new
 * destination's socket.
 * A session's first reply from the backend (from its new transfer port, which only that reply tells) matches the
 * session's PENDING entry, written by user space with the request: the program checks the reply, installs the
 * session's two entries itself and relays the reply, so an established session never wakes the balancer at all.
 * Anything without an entry goes on untouched (requests, wrong ports, strangers) with TC_ACT_UNSPEC, not
 * TC_ACT_OK: a verdict ends the interface's filter chain, and the next filter may be another balancer's (several
 * share loopback's clsact) or another tool's. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <stddef.h>

#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "tc_bpf_map.h"

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, 3 * 65536); /* user space resizes it to 3 x max_sessions before loading */
  __type(key, struct tftp_lb_key);
  __type(value, struct tftp_lb_value);
} tftp_lb_sessions SEC(".maps");

/* Written by user space at attach: lets a later balancer find and detach the filter of one that was killed. */
struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 1);
  __type(key, __u32);
  __type(value, struct tftp_lb_owner);
} tftp_lb_owner SEC(".maps");

#define IP_OFF ETH_HLEN
#define UDP_OFF (ETH_HLEN + sizeof(struct iphdr))
#define IP_CSUM_OFF (IP_OFF + offsetof(struct iphdr, check))
#define IP_SRC_OFF (IP_OFF + offsetof(struct iphdr, saddr))
#define IP_DST_OFF (IP_OFF + offsetof(struct iphdr, daddr))
#define UDP_CSUM_OFF (UDP_OFF + offsetof(struct udphdr, check))
#define UDP_SPORT_OFF (UDP_OFF + offsetof(struct udphdr, source))
#define UDP_DPORT_OFF (UDP_OFF + offsetof(struct udphdr, dest))

/* Replaces a 4-byte address: the IP header checksum, and the UDP one through the pseudo header. The helpers know
 * CHECKSUM_PARTIAL (loopback's UDP): they then fix only the pseudo-header sum the device would complete. */
static __always_inline int set_addr(struct __sk_buff *skb, int off, __u32 from, __u32 to) {
  if (from == to) return 0;
  if (bpf_l4_csum_replace(skb, UDP_CSUM_OFF, from, to, BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0 | sizeof(to)))
    return -1;
  if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, from, to, sizeof(to))) return -1;
  return bpf_skb_store_bytes(skb, off, &to, sizeof(to), 0);
}
static __always_inline int set_port(struct __sk_buff *skb, int off, __u16 from, __u16 to) {
  if (from == to) return 0;
  if (bpf_l4_csum_replace(skb, UDP_CSUM_OFF, from, to, BPF_F_MARK_MANGLED_0 | sizeof(to))) return -1;
  return bpf_skb_store_bytes(skb, off, &to, sizeof(to), 0);
}

/* Rewrites the 4-tuple of a datagram that arrived as `key`. Stores invalidate the packet pointers: everything
 * needed is in `key` and the arguments. Nonzero: half rewritten, never deliver it. */
static __always_inline int rewrite(struct __sk_buff *skb, const struct tftp_lb_key *key, __u32 new_saddr,
                                   __u32 new_daddr, __u16 new_sport, __u16 new_dport) {
  return set_addr(skb, IP_SRC_OFF, key->saddr, new_saddr) || set_addr(skb, IP_DST_OFF, key->daddr, new_daddr) ||
         set_port(skb, UDP_SPORT_OFF, key->sport, new_sport) || set_port(skb, UDP_DPORT_OFF, key->dport, new_dport);
}

/* An OACK's options (after the opcode), read one byte per bpf_loop step. Only the rules user space's parser
 * applies, and stricter: anything unusual (padding, a repeated or odd blksize, an odd field count) is left to
 * user space. */
#define OACK_MAX 128
#define BLKSIZE_NAME 0x626c6b73697a65ull /* "blksize", the name's bytes as a number */
struct oack_scan {
  __u8 buf[OACK_MAX];
  __u64 name;      /* the current name's first 8 bytes, lower-cased */
  __u32 len;
  __u32 pos;       /* bytes of the current field so far */
  __u32 value;     /* the current blksize value so far */
  __u16 blksize;   /* 0: not in the OACK */
  __u8 in_value;   /* reading a name (0) or its value (1) */
  __u8 is_blksize; /* the value being read is blksize's */
  __u8 bad;
};

static long oack_step(__u64 i, void *ctx) {
  struct oack_scan *s = ctx;
  if (i >= OACK_MAX || i >= s->len) return 1;
  __u8 c = s->buf[i];
  if (!s->in_value) {
    if (c == 0) {
      if (s->pos == 0) { /* an empty name, or NUL padding */
        s->bad = 1;
        return 1;
      }
      s->is_blksize = s->pos == 7 && s->name == BLKSIZE_NAME;
      s->in_value = 1;
      s->pos = 0;
      s->value = 0;
      return 0;
    }
    if (c >= 'A' && c <= 'Z') c += 'a' - 'A';
    if (s->pos < 8) s->name = (s->name << 8) | c;
    s->pos++;
    return 0;
  }
  if (c == 0) {
    if (s->is_blksize) {
      if (s->blksize || s->pos == 0 || s->value < 8 || s->value > 65464) {
        s->bad = 1;
        return 1;
      }
      s->blksize = (__u16)s->value;
    }
    s->in_value = 0;
    s->pos = 0;
    s->name = 0;
    return 0;
  }
  if (s->is_blksize) {
    if (c < '0' || c > '9' || s->pos >= 5) {
      s->bad = 1;
      return 1;
    }
    s->value = s->value * 10 + (c - '0');
  }
  s->pos++;
  return 0;
}

/* A datagram without an entry: the backend's first reply to a session's request (a DATA or an OACK from any port
 * of the chosen backend's address to the session port) completes the session here. Everything else, and every
 * case this does not fully understand, goes on untouched to the balancer's sockets, as before. */
static __always_inline int first_reply(struct __sk_buff *skb, const struct tftp_lb_key *key, __u32 payload) {
  if (key->sport == TFTP_LB_ANY_PORT) return TC_ACT_UNSPEC;
  const struct tftp_lb_key pkey = {key->saddr, key->daddr, TFTP_LB_ANY_PORT, key->dport};
  struct tftp_lb_value *p = bpf_map_lookup_elem(&tftp_lb_sessions, &pkey);
  if (!p || p->state != TFTP_LB_PENDING || p->tid != 0) return TC_ACT_UNSPEC;
  __u8 tftp[4];
  if (payload < 4 || payload > 65535 || bpf_skb_load_bytes(skb, UDP_OFF + sizeof(struct udphdr), tftp, 4) != 0 ||
      tftp[0] != 0)
    return TC_ACT_UNSPEC;
  __u16 blksize = 512; /* RFC 1350's, unless an OACK says otherwise */
  __s32 last_block = -1;
  if (tftp[1] == 3) { /* DATA: the backend took no option */
    if (payload - 4 > 65464) return TC_ACT_UNSPEC;
    if (payload - 4 < blksize) last_block = ((__u16)tftp[2] << 8) | tftp[3]; /* a one-block file */
  } else if (tftp[1] == 6) { /* OACK */
    struct oack_scan scan;
    __builtin_memset(&scan, 0, sizeof scan);
    scan.len = payload - 2;
    if (scan.len == 0 || scan.len > OACK_MAX) return TC_ACT_UNSPEC;
    if (bpf_skb_load_bytes(skb, UDP_OFF + sizeof(struct udphdr) + 2, scan.buf, scan.len) != 0) return TC_ACT_UNSPEC;
    bpf_loop(OACK_MAX, oack_step, &scan, 0);
    if (scan.bad || scan.in_value || scan.pos != 0) return TC_ACT_UNSPEC;
    if (scan.blksize) blksize = scan.blksize;
  } else {
    return TC_ACT_UNSPEC; /* an ERROR (the session ends) or junk: user space decides */
  }
  const __u32 vip = key->daddr, client = p->new_daddr;
  const __u16 session_port = key->dport, client_port = p->new_dport;
  const struct tftp_lb_key ckey = {client, vip, client_port, session_port};
  struct tftp_lb_value to_backend = {
      .new_saddr = vip, .new_daddr = key->saddr, .new_sport = session_port, .new_dport = key->sport,
      .session = p->session, .gen = p->gen, .blksize = blksize, .to_client = 0, .state = TFTP_LB_RUNNING,
      .last_block = last_block};
  struct tftp_lb_value to_client = {
      .new_saddr = vip, .new_daddr = client, .new_sport = session_port, .new_dport = client_port,
      .session = p->session, .gen = p->gen, .blksize = blksize, .to_client = 1, .state = TFTP_LB_RUNNING,
      .last_block = -1, .packets = 1, .bytes = payload, .last_seen_ns = bpf_ktime_get_ns()};
  /* BPF_NOEXIST on the client's entry is the claim: of two first replies racing on two CPUs (from two ports) one
   * installs the session, the other finds the entry there and goes to user space. A full map (or a stale entry)
   * fails it too: user space then relays this reply and installs the session, as without a pending entry. */
  if (bpf_map_update_elem(&tftp_lb_sessions, &ckey, &to_backend, BPF_NOEXIST) != 0) return TC_ACT_UNSPEC;
  if (bpf_map_update_elem(&tftp_lb_sessions, key, &to_client, BPF_NOEXIST) != 0) {
    bpf_map_delete_elem(&tftp_lb_sessions, &ckey);
    return TC_ACT_UNSPEC;
  }
  p->blksize = blksize;
  p->last_block = last_block;
  p->tid = TFTP_LB_INSTALLED | key->sport; /* last: user space adopts the session once it reads this */
  if (rewrite(skb, key, vip, client, session_port, client_port)) return TC_ACT_SHOT; /* the backend resends it */
  return TC_ACT_OK;
}

SEC("tc")
int tftp_lb_ingress(struct __sk_buff *skb) {
  if (skb->protocol != bpf_htons(ETH_P_IP)) return TC_ACT_UNSPEC;
  /* Referenced, so the owner map is listed with the program (an array lookup is inlined: no cost). */
  const __u32 zero = 0;
  if (!bpf_map_lookup_elem(&tftp_lb_owner, &zero)) return TC_ACT_UNSPEC;
  void *data = (void *)(long)skb->data;
  void *end = (void *)(long)skb->data_end;
  struct iphdr *ip = data + ETH_HLEN;
  struct udphdr *udp = data + UDP_OFF;
  if ((void *)(udp + 1) > end) return TC_ACT_UNSPEC;
  /* Options or fragments: the balancer's sockets handle them (TFTP never sends either). */
  if (ip->protocol != IPPROTO_UDP || ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff))) return TC_ACT_UNSPEC;
  struct tftp_lb_key key = {ip->saddr, ip->daddr, udp->source, udp->dest};
  const __u32 payload = bpf_ntohs(udp->len) - sizeof(struct udphdr);
  struct tftp_lb_value *v = bpf_map_lookup_elem(&tftp_lb_sessions, &key);
  if (!v) return first_reply(skb, &key, payload);
  if (v->state == TFTP_LB_PENDING) return TC_ACT_UNSPEC; /* a reply from port 0: not a transfer ID */
  __u8 tftp[4];
  /* Only DATA, ACK and ERROR belong to an established transfer. Anything else from the right 4-tuple (junk, a
   * short datagram, a stray request) goes to the balancer's socket, whose parser drops and counts it. */
  if (payload < 4 || payload > 65535 || bpf_skb_load_bytes(skb, UDP_OFF + sizeof(struct udphdr), tftp, 4) != 0 ||
      tftp[0] != 0 || tftp[1] < 3 || tftp[1] > 5 || (tftp[1] == 4 && payload != 4))
    return TC_ACT_UNSPEC;
  {
    const __u16 block = ((__u16)tftp[2] << 8) | tftp[3];
    if (tftp[1] == 5) {
      v->state = TFTP_LB_ERROR; /* either side gave up: the session ends (user space lingers, then deletes) */
    } else if (tftp[1] == 3 && v->to_client && payload - 4 < v->blksize) {
      /* The short last DATA: tell the other direction's entry which ACK ends the transfer. */
      struct tftp_lb_key back = {v->new_daddr, key.daddr, v->new_dport, key.dport};
      struct tftp_lb_value *b = bpf_map_lookup_elem(&tftp_lb_sessions, &back);
      if (b) b->last_block = block;
    } else if (tftp[1] == 4 && !v->to_client && v->last_block == (__s32)block) {
      v->state = TFTP_LB_FINAL_ACK;
    }
  }
  __sync_fetch_and_add(&v->packets, 1);
  __sync_fetch_and_add(&v->bytes, payload);
  v->last_seen_ns = bpf_ktime_get_ns();
  const __u32 new_saddr = v->new_saddr, new_daddr = v->new_daddr;
  const __u16 new_sport = v->new_sport, new_dport = v->new_dport;
  if (rewrite(skb, &key, new_saddr, new_daddr, new_sport, new_dport))
    return TC_ACT_SHOT; /* half rewritten: never deliver it (the endpoints resend) */
  /* On loopback the datagram carries its sender's route (local delivery; both ends are local addresses), so it
   * goes on as it is and the socket lookup sees the new header. Not bpf_redirect(lo, BPF_F_INGRESS): that drops
   * the route, and input routing refuses 127.0.0.0/8 sources arriving on an interface as martians (unless
   * net.ipv4.conf.lo.route_localnet = 1): measured, the redirected datagram vanished. */
  return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
