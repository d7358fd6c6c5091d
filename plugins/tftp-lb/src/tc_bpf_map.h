/* The BPF session map of the tc-bpf relay engine, shared by the BPF program (bpf/tftp_lb_tc.bpf.c, C) and user
 * space (tc_bpf.cpp). Plain C with fixed-width fields, so both compilers lay it out the same way. */
#pragma once
#include <linux/types.h>

/* A datagram as it arrives on the interface, addresses and ports in network order. */
struct tftp_lb_key {
  __u32 saddr;
  __u32 daddr;
  __u16 sport;
  __u16 dport;
};

/* Entry states, set by the program: user space finishes the session (its linger starts) and later deletes it. */
enum { TFTP_LB_RUNNING = 0, TFTP_LB_FINAL_ACK = 1, TFTP_LB_ERROR = 2 };

/* What a matching datagram becomes, and what the program counts for user space. One entry per direction. */
struct tftp_lb_value {
  __u32 new_saddr; /* the balancer's address (the session socket's) */
  __u32 new_daddr; /* the other end: the backend's or the client's address */
  __u16 new_sport; /* the session socket's port */
  __u16 new_dport; /* the backend's transfer port, or the client's port */
  __u32 session;   /* user space's session index and generation: the poll finds the session without a lookup */
  __u32 gen;
  __u16 blksize;   /* negotiated block size: a shorter DATA is the last one */
  __u8 to_client;  /* 1: backend -> client (DATA); 0: client -> backend (ACK) */
  __u8 state;      /* TFTP_LB_* */
  __s32 last_block; /* client -> backend entry: the short DATA's block, whose ACK ends the transfer; -1 unknown */
  __u64 packets;   /* relayed in the kernel */
  __u64 bytes;     /* UDP payload bytes relayed in the kernel */
  __u64 last_seen_ns; /* bpf_ktime_get_ns (CLOCK_MONOTONIC) of the last one */
};

/* Who attached a filter of this program, so a later balancer can detach the filters of a dead one. */
struct tftp_lb_owner {
  __u32 pid;
  __u32 ifindex;
  __u32 priority;
  __u32 handle;
};
