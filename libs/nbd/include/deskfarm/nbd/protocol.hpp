#pragma once
// Wire constants of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md). All integers are big-endian.
#include <cstdint>

namespace deskfarm::nbd::proto {

inline constexpr std::uint64_t kNbdMagic = 0x4e42444d41474943ULL;      ///< "NBDMAGIC"
inline constexpr std::uint64_t kOptMagic = 0x49484156454f5054ULL;      ///< "IHAVEOPT"
inline constexpr std::uint64_t kOptReplyMagic = 0x0003e889045565a9ULL; ///< option reply magic
inline constexpr std::uint32_t kRequestMagic = 0x25609513;             ///< transmission request
inline constexpr std::uint32_t kSimpleReplyMagic = 0x67446698;         ///< simple reply

// Handshake flags (server) and client flags.
inline constexpr std::uint16_t kFlagFixedNewstyle = 1 << 0;
inline constexpr std::uint16_t kFlagNoZeroes = 1 << 1;
inline constexpr std::uint32_t kClientFlagFixedNewstyle = 1 << 0;
inline constexpr std::uint32_t kClientFlagNoZeroes = 1 << 1;

// Options.
inline constexpr std::uint32_t kOptExportName = 1;
inline constexpr std::uint32_t kOptAbort = 2;
inline constexpr std::uint32_t kOptList = 3;
inline constexpr std::uint32_t kOptStartTls = 5;
inline constexpr std::uint32_t kOptInfo = 6;
inline constexpr std::uint32_t kOptGo = 7;
inline constexpr std::uint32_t kOptStructuredReply = 8;

// Option replies.
inline constexpr std::uint32_t kRepAck = 1;
inline constexpr std::uint32_t kRepServer = 2;
inline constexpr std::uint32_t kRepInfo = 3;
inline constexpr std::uint32_t kRepErrUnsup = 0x80000001;
inline constexpr std::uint32_t kRepErrPolicy = 0x80000002;
inline constexpr std::uint32_t kRepErrInvalid = 0x80000003;
inline constexpr std::uint32_t kRepErrPlatform = 0x80000004;
inline constexpr std::uint32_t kRepErrTlsReqd = 0x80000005;
inline constexpr std::uint32_t kRepErrUnknown = 0x80000006;
inline constexpr std::uint32_t kRepErrShutdown = 0x80000007;
inline constexpr std::uint32_t kRepErrTooBig = 0x80000009;

// NBD_REP_INFO types.
inline constexpr std::uint16_t kInfoExport = 0;
inline constexpr std::uint16_t kInfoName = 1;
inline constexpr std::uint16_t kInfoDescription = 2;
inline constexpr std::uint16_t kInfoBlockSize = 3;

// Transmission flags.
inline constexpr std::uint16_t kTxHasFlags = 1 << 0;
inline constexpr std::uint16_t kTxReadOnly = 1 << 1;
inline constexpr std::uint16_t kTxSendFlush = 1 << 2;
inline constexpr std::uint16_t kTxSendFua = 1 << 3;
inline constexpr std::uint16_t kTxSendTrim = 1 << 5;
inline constexpr std::uint16_t kTxSendWriteZeroes = 1 << 6;
inline constexpr std::uint16_t kTxCanMultiConn = 1 << 8;

// Commands and command flags.
inline constexpr std::uint16_t kCmdRead = 0;
inline constexpr std::uint16_t kCmdWrite = 1;
inline constexpr std::uint16_t kCmdDisc = 2;
inline constexpr std::uint16_t kCmdFlush = 3;
inline constexpr std::uint16_t kCmdTrim = 4;
inline constexpr std::uint16_t kCmdWriteZeroes = 6;
inline constexpr std::uint16_t kCmdFlagFua = 1 << 0;
inline constexpr std::uint16_t kCmdFlagNoHole = 1 << 1;

// Error values carried in replies (protocol values, equal to Linux errno).
inline constexpr std::uint32_t kEperm = 1;
inline constexpr std::uint32_t kEio = 5;
inline constexpr std::uint32_t kEnomem = 12;
inline constexpr std::uint32_t kEinval = 22;
inline constexpr std::uint32_t kEnospc = 28;
inline constexpr std::uint32_t kEoverflow = 75;
inline constexpr std::uint32_t kEnotsup = 95;
inline constexpr std::uint32_t kEshutdown = 108;

inline constexpr std::uint16_t kDefaultPort = 10809;
inline constexpr std::uint32_t kMaxStringLength = 4096; ///< export names and messages
inline constexpr std::uint32_t kMaxOptionLength = 64 * 1024; ///< larger option data is refused, not buffered

}  // namespace deskfarm::nbd::proto
