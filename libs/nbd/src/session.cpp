#include "deskfarm/nbd/session.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <exception>
#include <new>

#include "deskfarm/nbd/protocol.hpp"
#include "wire.hpp"

namespace deskfarm::nbd {

using detail::append_be;
using detail::get_be;
using detail::put_be;

std::uint32_t to_wire_error(int err) {
  switch (err) {
    case 0: return 0;
    case EPERM: return proto::kEperm;
    case EIO: return proto::kEio;
    case ENOMEM: return proto::kEnomem;
    case EINVAL: return proto::kEinval;
    case ENOSPC: return proto::kEnospc;
    case EOVERFLOW: return proto::kEoverflow;
    case ENOTSUP: return proto::kEnotsup;
    case ESHUTDOWN: return proto::kEshutdown;
    default: return proto::kEinval;
  }
}

Session::Session(Transport& transport, const Resolver& resolver, const Lister& lister, std::string peer,
                 SessionLimits limits, SessionCounters* counters)
    : transport_(transport), resolver_(resolver), lister_(lister), peer_(std::move(peer)), limits_(limits),
      counters_(counters) {}

SessionResult Session::run() {
  SessionResult result;
  if (handshake(result)) {
    transport_.enter_transmission();
    transmission(result);
  }
  return result;
}

Resolution Session::resolve(std::string_view name) {
  if (!resolver_) return {nullptr, "no exports configured"};
  // The resolver is application code: its failure is this client's refusal, never the server's crash.
  try {
    Resolution r = resolver_(name, peer_);
    if (!r.backend && r.error.empty()) r.error = "unknown export '" + std::string(name) + "'";
    if (r.backend && r.needs_tls && !transport_.tls_active()) {
      r.backend.reset();  // opened, never used: let go before the reply
      r.error = "export '" + std::string(name) + "' is served only over TLS: send NBD_OPT_STARTTLS first";
    }
    return r;
  } catch (const std::exception& e) {
    return {nullptr, std::string("export lookup failed: ") + e.what()};
  } catch (...) {
    return {nullptr, "export lookup failed"};
  }
}

std::uint16_t Session::transmission_flags() const {
  std::uint16_t flags = proto::kTxHasFlags | proto::kTxSendFlush | proto::kTxSendFua;
  if (export_->read_only()) {
    flags |= proto::kTxReadOnly;
  } else {
    flags |= proto::kTxSendWriteZeroes;
  }
  if (export_->read_only() || export_->multi_conn_safe()) flags |= proto::kTxCanMultiConn;
  return flags;
}

bool Session::send_option_reply(std::uint32_t option, std::uint32_t type, std::span<const std::byte> data) {
  std::array<std::byte, 20> head{};
  put_be(head.data(), proto::kOptReplyMagic, 8);
  put_be(head.data() + 8, option, 4);
  put_be(head.data() + 12, type, 4);
  put_be(head.data() + 16, data.size(), 4);
  const std::span<const std::byte> parts[] = {head, data};
  return transport_.write_all(parts);
}

bool Session::send_option_error(std::uint32_t option, std::uint32_t type, std::string_view message) {
  if (message.size() > proto::kMaxStringLength) message = message.substr(0, proto::kMaxStringLength);
  return send_option_reply(option, type, std::as_bytes(std::span(message.data(), message.size())));
}

bool Session::handle_info_or_go(std::uint32_t option, std::span<const std::byte> data, SessionResult& result,
                                bool& go) {
  // Layout: u32 name length, name, u16 request count, u16 requests[count]; every byte must be accounted for.
  if (data.size() < 6) return send_option_error(option, proto::kRepErrInvalid, "option data shorter than 6 bytes");
  const auto name_len = get_be(data.data(), 4);
  if (name_len > data.size() - 6) {
    return send_option_error(option, proto::kRepErrInvalid, "export name length runs past the option data");
  }
  if (name_len > proto::kMaxStringLength) {
    return send_option_error(option, proto::kRepErrInvalid, "export name longer than 4096 bytes");
  }
  const auto name_size = static_cast<std::size_t>(name_len);
  const std::string name(reinterpret_cast<const char*>(data.data()) + 4, name_size);
  const auto count = get_be(data.data() + 4 + name_size, 2);
  if (data.size() != 6 + name_size + 2 * count) {
    return send_option_error(option, proto::kRepErrInvalid, "information request count does not match the option length");
  }
  bool want_name = false;
  for (std::size_t i = 0; i < count; ++i) {
    if (get_be(data.data() + 6 + name_size + 2 * i, 2) == proto::kInfoName) want_name = true;
  }
  Resolution r = resolve(name);
  if (!r.backend) {
    const auto type = r.needs_tls ? proto::kRepErrTlsReqd : r.denied ? proto::kRepErrPolicy : proto::kRepErrUnknown;
    return send_option_error(option, type, r.error);
  }
  export_ = std::move(r.backend);

  std::vector<std::byte> info;
  append_be(info, proto::kInfoExport, 2);
  append_be(info, export_->size(), 8);
  append_be(info, transmission_flags(), 2);
  if (!send_option_reply(option, proto::kRepInfo, info)) return false;
  // Sent even unrequested: min 1 imposes nothing, and the maximum tells clients to split large requests.
  info.clear();
  append_be(info, proto::kInfoBlockSize, 2);
  append_be(info, 1, 4);
  append_be(info, 4096, 4);
  append_be(info, limits_.max_payload, 4);
  if (!send_option_reply(option, proto::kRepInfo, info)) return false;
  if (want_name) {
    info.clear();
    append_be(info, proto::kInfoName, 2);
    detail::append_bytes(info, name);
    if (!send_option_reply(option, proto::kRepInfo, info)) return false;
  }
  if (!send_option_reply(option, proto::kRepAck, {})) return false;
  if (option == proto::kOptGo) {
    go = true;
    result.export_name = name;
  } else {
    export_.reset();
  }
  return true;
}

bool Session::handshake(SessionResult& result) {
  std::array<std::byte, 18> hello{};
  put_be(hello.data(), proto::kNbdMagic, 8);
  put_be(hello.data() + 8, proto::kOptMagic, 8);
  put_be(hello.data() + 16, proto::kFlagFixedNewstyle | proto::kFlagNoZeroes, 2);
  const std::span<const std::byte> hello_parts[] = {hello};
  auto fail = [&](SessionEnd end, std::string why) {
    result.end = end;
    result.reason = std::move(why);
    return false;
  };
  if (!transport_.write_all(hello_parts)) return fail(SessionEnd::kPeerClosed, "peer left before the greeting was sent");
  std::array<std::byte, 4> client_flags_raw{};
  if (!transport_.read_exact(client_flags_raw)) return fail(SessionEnd::kHandshakeError, "no client flags");
  const auto client_flags = get_be(client_flags_raw.data(), 4);
  if (client_flags & ~std::uint64_t{proto::kClientFlagFixedNewstyle | proto::kClientFlagNoZeroes}) {
    return fail(SessionEnd::kHandshakeError, "unknown client flags " + detail::hex32(client_flags));
  }
  if (!(client_flags & proto::kClientFlagFixedNewstyle)) {
    return fail(SessionEnd::kHandshakeError, "client does not speak fixed newstyle (client flags " +
                                                 detail::hex32(client_flags) + ")");
  }
  no_zeroes_ = client_flags & proto::kClientFlagNoZeroes;

  for (std::uint32_t n = 1; n <= limits_.max_options; ++n) {
    std::array<std::byte, 16> head{};
    if (!transport_.read_exact(head)) return fail(SessionEnd::kPeerClosed, "peer left during option " + std::to_string(n));
    const auto magic = get_be(head.data(), 8);
    const auto option = static_cast<std::uint32_t>(get_be(head.data() + 8, 4));
    const auto length = get_be(head.data() + 12, 4);
    if (magic != proto::kOptMagic) {
      return fail(SessionEnd::kHandshakeError, "bad option magic in option " + std::to_string(n));
    }
    if (length > proto::kMaxOptionLength) {
      // Never buffer it: say why, then hang up (the unread data makes the stream unusable anyway).
      send_option_error(option, proto::kRepErrTooBig, "option data of " + std::to_string(length) +
                                                          " bytes exceeds the 64 KiB limit");
      return fail(SessionEnd::kHandshakeError, "option " + std::to_string(option) + " length " + std::to_string(length) +
                                                   " exceeds 64 KiB");
    }
    buffer_.resize(static_cast<std::size_t>(length));
    if (!transport_.read_exact(buffer_)) {
      return fail(SessionEnd::kHandshakeError, "option " + std::to_string(option) + " data truncated");
    }
    const std::span<const std::byte> data(buffer_);
    bool ok = true;
    if (limits_.require_tls && !transport_.tls_active() && option != proto::kOptStartTls && option != proto::kOptAbort) {
      // NBD_OPT_EXPORT_NAME has no error reply: hang up. Every other option hears why and may STARTTLS next.
      if (option == proto::kOptExportName) return fail(SessionEnd::kAborted, "NBD_OPT_EXPORT_NAME without TLS");
      if (!send_option_error(option, proto::kRepErrTlsReqd, "this server requires TLS: send NBD_OPT_STARTTLS first"))
        return fail(SessionEnd::kPeerClosed, "peer left during reply to option " + std::to_string(option));
      continue;
    }
    switch (option) {
      case proto::kOptExportName: {
        if (length > proto::kMaxStringLength) {
          return fail(SessionEnd::kHandshakeError, "NBD_OPT_EXPORT_NAME longer than 4096 bytes");
        }
        std::string name(reinterpret_cast<const char*>(data.data()), data.size());
        Resolution r = resolve(name);
        // This old option has no error reply: the only way to refuse is to hang up.
        if (!r.backend) return fail(SessionEnd::kAborted, "export '" + name + "' refused: " + r.error);
        export_ = std::move(r.backend);
        std::vector<std::byte> reply;
        append_be(reply, export_->size(), 8);
        append_be(reply, transmission_flags(), 2);
        if (!no_zeroes_) reply.resize(reply.size() + 124);
        const std::span<const std::byte> parts[] = {reply};
        if (!transport_.write_all(parts)) return fail(SessionEnd::kPeerClosed, "peer left during export reply");
        result.export_name = std::move(name);
        return true;
      }
      case proto::kOptAbort:
        send_option_reply(option, proto::kRepAck, {});  // the client may already be gone; that is fine
        return fail(SessionEnd::kAborted, "client aborted the handshake");
      case proto::kOptList: {
        if (length != 0) {
          ok = send_option_error(option, proto::kRepErrInvalid, "NBD_OPT_LIST carries no data");
          break;
        }
        if (!lister_) {
          // Export names are device MACs: listing them tells a stranger which names to ask for.
          ok = send_option_error(option, proto::kRepErrPolicy, "export listing is disabled on this server");
          break;
        }
        std::vector<ExportEntry> entries;
        std::string failed;
        try {
          entries = lister_(peer_);
        } catch (const std::exception& e) {
          failed = std::string("export listing failed: ") + e.what();
        }
        // Replied outside the handler: the reply may wait for the socket, and a server that switches sessions on
        // one thread (fibers) must not switch while an exception is being handled (its state is per thread).
        if (!failed.empty()) {
          ok = send_option_error(option, proto::kRepErrPlatform, failed);
          break;
        }
        std::vector<std::byte> entry;
        for (const auto& e : entries) {
          if (e.name.size() > proto::kMaxStringLength || !ok) continue;
          entry.clear();
          append_be(entry, e.name.size(), 4);
          detail::append_bytes(entry, e.name);
          detail::append_bytes(entry, std::string_view(e.description).substr(0, proto::kMaxStringLength));
          ok = send_option_reply(option, proto::kRepServer, entry);
        }
        if (ok) ok = send_option_reply(option, proto::kRepAck, {});
        break;
      }
      case proto::kOptInfo:
      case proto::kOptGo: {
        bool go = false;
        ok = handle_info_or_go(option, data, result, go);
        if (ok && go) return true;
        break;
      }
      case proto::kOptStructuredReply:
        // Simple replies carry everything this server sends (no block status, no sparse reads).
        ok = send_option_error(option, proto::kRepErrUnsup, "structured replies are not supported; simple replies only");
        break;
      case proto::kOptStartTls: {
        if (length != 0) {
          ok = send_option_error(option, proto::kRepErrInvalid, "NBD_OPT_STARTTLS carries no data");
          break;
        }
        if (!transport_.tls_available()) {
          ok = send_option_error(option, proto::kRepErrUnsup, "TLS is not configured on this server");
          break;
        }
        if (transport_.tls_active()) {
          ok = send_option_error(option, proto::kRepErrInvalid, "TLS is already on");
          break;
        }
        if (!send_option_reply(option, proto::kRepAck, {}))
          return fail(SessionEnd::kPeerClosed, "peer left before the STARTTLS reply");
        std::string why;
        if (!transport_.start_tls(why)) return fail(SessionEnd::kHandshakeError, "TLS handshake failed: " + why);
        break;
      }
      default:
        ok = send_option_error(option, proto::kRepErrUnsup, "option " + std::to_string(option) + " is not supported");
        break;
    }
    if (!ok) return fail(SessionEnd::kPeerClosed, "peer left during reply to option " + std::to_string(option));
  }
  return fail(SessionEnd::kHandshakeError, "more than " + std::to_string(limits_.max_options) + " options");
}

bool Session::send_simple_reply(std::uint64_t cookie, std::uint32_t error, std::span<const std::byte> payload) {
  std::array<std::byte, 16> head{};
  put_be(head.data(), proto::kSimpleReplyMagic, 4);
  put_be(head.data() + 4, error, 4);
  put_be(head.data() + 8, cookie, 8);
  const std::span<const std::byte> parts[] = {head, payload};
  return transport_.write_all(std::span(parts, payload.empty() ? 1 : 2));
}

PayloadBuffer::~PayloadBuffer() {
  if (base_) ::munmap(base_, kIoChunk);
}

std::span<std::byte> PayloadBuffer::get(std::uint32_t size) {
  if (!base_) {
    // Reserved, not committed: pages cost memory only once a payload is written into them.
    void* p = ::mmap(nullptr, kIoChunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    base_ = static_cast<std::byte*>(p);
  }
  touched_ = std::max<std::size_t>(touched_, size);
  return {base_, size};
}

void PayloadBuffer::trim() {
  if (!base_ || touched_ <= kKeep) return;
  ::madvise(base_ + kKeep, touched_ - kKeep, MADV_DONTNEED);
  touched_ = kKeep;
}

std::uint32_t Session::check_modify(std::uint16_t flags, std::uint64_t offset, std::uint32_t length,
                                    std::uint64_t size) const {
  if ((flags & ~std::uint16_t{proto::kCmdFlagFua | proto::kCmdFlagNoHole}) || length == 0) return proto::kEinval;
  if (export_->read_only()) return proto::kEperm;
  // The spec: a write (of data or zeroes) beyond the end SHOULD fail with ENOSPC.
  if (!in_bounds(offset, length, size)) return proto::kEnospc;
  return 0;
}

void Session::transmission(SessionResult& result) {
  const std::uint64_t size = export_->size();
  auto end = [&](SessionEnd e, std::string why) {
    result.end = e;
    result.reason = std::move(why);
  };
  for (std::uint64_t n = 1;; ++n) {
    if (transport_.idle()) payload_.trim();  // between bursts: an idle device keeps no payload pages
    std::array<std::byte, 28> head{};
    if (!transport_.read_exact(head)) return end(SessionEnd::kPeerClosed, "peer left after " + std::to_string(n - 1) + " requests");
    const auto magic = get_be(head.data(), 4);
    const auto flags = static_cast<std::uint16_t>(get_be(head.data() + 4, 2));
    const auto type = static_cast<std::uint16_t>(get_be(head.data() + 6, 2));
    const auto cookie = get_be(head.data() + 8, 8);
    const auto offset = get_be(head.data() + 16, 8);
    const auto length = static_cast<std::uint32_t>(get_be(head.data() + 24, 4));
    if (magic != proto::kRequestMagic) {
      return end(SessionEnd::kProtocolError, "bad request magic " + detail::hex32(magic) + " in request " + std::to_string(n));
    }
    if (counters_) counters_->requests.fetch_add(1, std::memory_order_relaxed);
    const bool fua = flags & proto::kCmdFlagFua;
    const bool bad_flags = flags & ~std::uint16_t{proto::kCmdFlagFua | proto::kCmdFlagNoHole};
    bool ok = true;
    switch (type) {
      case proto::kCmdRead: {
        if (bad_flags || length == 0 || length > limits_.max_payload || !in_bounds(offset, length, size)) {
          ok = send_simple_reply(cookie, proto::kEinval);
          break;
        }
        // In chunks, so a connection never holds more than one chunk however large the request (a peer that stops
        // reading its replies then pins kIoChunk, not max_payload). The first chunk is read before the reply
        // header, so a failing export still gets its error reply.
        std::uint32_t done = 0;
        while (ok && done < length) {
          const std::uint32_t chunk = std::min(length - done, kIoChunk);
          const std::span<std::byte> payload = payload_.get(chunk);
          if (int err = export_->read(offset + done, payload)) {
            if (done == 0) {
              ok = send_simple_reply(cookie, to_wire_error(err));
              break;
            }
            // The header promised success: a simple reply cannot take it back, only hanging up can.
            return end(SessionEnd::kProtocolError, "export read failed (errno " + std::to_string(err) + ") at offset " +
                                                       std::to_string(offset + done) + " after the reply to request " +
                                                       std::to_string(n) + " began");
          }
          if (done == 0) {
            ok = send_simple_reply(cookie, 0, payload);
          } else {
            const std::span<const std::byte> parts[] = {payload};
            ok = transport_.write_all(parts);
          }
          done += chunk;
        }
        if (ok && counters_) counters_->bytes_read.fetch_add(length, std::memory_order_relaxed);
        break;
      }
      case proto::kCmdWrite: {
        if (length > limits_.max_payload) {
          // Skipping up to 4 GiB of payload to stay in sync is not worth it: the spec lets us hang up.
          return end(SessionEnd::kProtocolError, "write payload of " + std::to_string(length) + " bytes exceeds " +
                                                     std::to_string(limits_.max_payload) + " in request " + std::to_string(n));
        }
        // The payload is taken as it arrives, one chunk at a time, and written (or, for a refused request,
        // dropped) chunk by chunk: a header alone reserves nothing, so stalled WRITE headers cost no memory.
        std::uint32_t error = check_modify(flags, offset, length, size);
        std::uint32_t done = 0;
        while (done < length) {
          const std::uint32_t chunk = std::min(length - done, kIoChunk);
          const std::span<std::byte> payload = payload_.get(chunk);
          if (!transport_.read_exact(payload)) {
            return end(SessionEnd::kProtocolError, "write payload truncated in request " + std::to_string(n));
          }
          if (error == 0) error = to_wire_error(export_->write(offset + done, payload));
          done += chunk;
        }
        if (counters_) counters_->bytes_written.fetch_add(length, std::memory_order_relaxed);
        if (error == 0 && fua) error = to_wire_error(export_->flush());
        ok = send_simple_reply(cookie, error);
        break;
      }
      case proto::kCmdDisc:
        return end(SessionEnd::kDisconnected, "client disconnected after " + std::to_string(n) + " requests");
      case proto::kCmdFlush:
        ok = send_simple_reply(cookie, bad_flags || length != 0 || offset != 0 ? proto::kEinval
                                                                                 : to_wire_error(export_->flush()));
        break;
      case proto::kCmdWriteZeroes: {
        std::uint32_t error = check_modify(flags, offset, length, size);
        if (error == 0) error = to_wire_error(export_->write_zeroes(offset, length));
        if (error == 0 && fua) error = to_wire_error(export_->flush());
        ok = send_simple_reply(cookie, error);
        break;
      }
      default:
        // Unknown commands carry no payload we could know about; the spec asks for EINVAL.
        ok = send_simple_reply(cookie, proto::kEinval);
        break;
    }
    if (!ok) return end(SessionEnd::kPeerClosed, "peer left while reply " + std::to_string(n) + " was sent");
  }
}

}  // namespace deskfarm::nbd
