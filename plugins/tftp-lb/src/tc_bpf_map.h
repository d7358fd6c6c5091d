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

/* Entry states. RUNNING, FINAL_ACK and ERROR are a session's two entries, the last two set by the program: user
 * space finishes the session (its linger starts) and later deletes it. PENDING is a third entry, written by user
 * space with the request and keyed by the backend's address, the balancer's address and the session port, with
 * source port 0 (TFTP_LB_ANY_PORT): the backend's first reply, from a transfer port nobody knows yet, matches it;
 * the program then installs the session's two entries itself and records the port in `tid`. */
enum { TFTP_LB_RUNNING = 0, TFTP_LB_FINAL_ACK = 1, TFTP_LB_ERROR = 2, TFTP_LB_PENDING = 3 };
#define TFTP_LB_ANY_PORT 0
/* PENDING entry's `tid`: 0 while waiting, TFTP_LB_INSTALLED | the backend's transfer port (network order) once the
 * program has put both of the session's entries in the map. */
#define TFTP_LB_INSTALLED 0x10000u

/* What a matching datagram becomes, and what the program counts for user space. One entry per direction. */
struct tftp_lb_value {
  __u32 new_saddr; /* the balancer's address (the session socket's) */
  __u32 new_daddr; /* the other end: the backend's or the client's address */
  __u16 new_sport; /* the session socket's port */
  __u16 new_dport; /* the backend's transfer port, or the client's port (PENDING: the client's) */
  __u32 session;   /* user space's session index and generation: the poll finds the session without a lookup */
  __u32 gen;
  __u16 blksize;   /* negotiated block size: a shorter DATA is the last one */
  __u8 to_client;  /* 1: backend -> client (DATA); 0: client -> backend (ACK) */
  __u8 state;      /* TFTP_LB_* */
  __s32 last_block; /* client -> backend entry: the short DATA's block, whose ACK ends the transfer; -1 unknown */
  __u32 tid;       /* PENDING entry only: see TFTP_LB_INSTALLED (fills what was padding: the layout is unchanged) */
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
