/* tc (clsact) ingress program of the tc-bpf relay engine (README "tc-bpf"). An established TFTP session's
 * datagrams are rewritten here, both ways, so they never wake the balancer: client addr:port -> balancer:session
 * port becomes balancer:session port -> backend:TID, and back, and the datagram continues to the new
 * destination's socket.
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
  __uint(max_entries, 2 * 65536); /* user space resizes it to 2 x max_sessions before loading */
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
  struct tftp_lb_value *v = bpf_map_lookup_elem(&tftp_lb_sessions, &key);
  if (!v) return TC_ACT_UNSPEC;
  const __u32 payload = bpf_ntohs(udp->len) - sizeof(struct udphdr);
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
  /* Stores invalidate the packet pointers: everything needed is in `key` and the copies above. */
  if (set_addr(skb, IP_SRC_OFF, key.saddr, new_saddr) || set_addr(skb, IP_DST_OFF, key.daddr, new_daddr) ||
      set_port(skb, UDP_SPORT_OFF, key.sport, new_sport) || set_port(skb, UDP_DPORT_OFF, key.dport, new_dport))
    return TC_ACT_SHOT; /* half rewritten: never deliver it (the endpoints resend) */
  /* On loopback the datagram carries its sender's route (local delivery; both ends are local addresses), so it
   * goes on as it is and the socket lookup sees the new header. Not bpf_redirect(lo, BPF_F_INGRESS): that drops
   * the route, and input routing refuses 127.0.0.0/8 sources arriving on an interface as martians (unless
   * net.ipv4.conf.lo.route_localnet = 1): measured, the redirected datagram vanished. */
  return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
