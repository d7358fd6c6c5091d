#pragma once
// A boot storm in which devices write and some of them lose their TCP connection mid-boot: each device reads its
// boot working set, writes its own pattern at its own offsets and FLUSHes; the dropping ones close the socket
// without NBD_CMD_DISC after half of their writes (rounded up), reopen their export and go on. After the storm every device
// reopens its export and reads back everything it wrote. Shared by pvs_bootstorm and the pvs reconnect test, so
// the benchmark measures exactly what the test asserts. Header-only; the user links deskfarm_nbd.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <numeric>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <deskfarm/nbd/client.hpp>
#include <deskfarm/testing/files.hpp>

namespace deskfarm::testing {

/// What a reconnect storm does. Devices are numbered first_device .. first_device + devices - 1; the number picks
/// the export (export_of), the bytes written, their offsets and whether the device drops.
struct ReconnectStorm {
  std::string host = "127.0.0.1";
  std::uint16_t port = 0;
  std::function<std::string(int)> export_of;
  int first_device = 0;
  int devices = 0;
  int concurrency = 1;
  std::uint64_t ws_bytes = 0;             // boot working set each device reads from offset 0
  std::uint64_t request_bytes = 256 << 10;  // size of each read
  std::uint64_t write_bytes = 0;          // what each device writes, in pieces of at most write_piece
  std::uint64_t disk_bytes = 0;           // export size: the writes land below it
  int drop_percent = 0;                   // share of devices that drop their connection mid-boot
  /// Bound on connect and on every send or receive (a hung server fails the device instead of the run).
  std::chrono::milliseconds timeout{30000};

  static constexpr std::uint64_t write_piece = 16 << 10;
};

/// One device's outcome. Mismatches count write pieces whose read-back differs from what was written.
struct DeviceOutcome {
  bool dropped = false;
  double boot_ms = -1;  // connect .. last FLUSH acknowledged (reconnect included); -1 = the boot failed
  std::uint64_t lost_after_drop = 0;  // pieces written before the drop that the reconnect did not read back
  std::uint64_t mismatches = 0;       // pieces that the final read-back did not return as written
  bool verified = false;              // the final read-back ran to its end
  std::string error;
};

struct StormOutcome {
  std::vector<DeviceOutcome> devices;
  double boot_s = 0;  // wall time of the boots (the final read-back is not timed)
  int failures = 0;   // devices whose boot or read-back failed with an error
  std::string first_error;
  int dropped = 0;
  std::uint64_t lost_after_drop = 0, mismatches = 0;
};

/// Whether device `i` drops its connection: exactly floor(n * percent / 100) of devices 0..n-1, spread evenly.
inline bool drops(int i, int percent) {
  return static_cast<long long>(i + 1) * percent / 100 > static_cast<long long>(i) * percent / 100;
}

/// One piece a device writes: where, and the seed of its bytes (pattern(length, seed)).
struct WritePiece {
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
  std::uint32_t seed = 0;
};

/// The pieces device `i` writes: `write_bytes` in 16 KiB pieces on distinct 16 KiB slots of the disk, starting at a
/// device-specific slot and striding across the disk, each with its own bytes. Throws if they cannot fit.
inline std::vector<WritePiece> writes_of(int i, std::uint64_t write_bytes, std::uint64_t disk_bytes) {
  constexpr auto piece = ReconnectStorm::write_piece;
  const std::uint64_t slots = disk_bytes / piece;
  const std::uint64_t count = (write_bytes + piece - 1) / piece;
  if (count > slots)
    throw std::invalid_argument("a device writing " + std::to_string(write_bytes) + " bytes needs a disk of at least " +
                                std::to_string(count * piece) + " bytes, not " + std::to_string(disk_bytes));
  std::vector<WritePiece> out;
  if (count == 0) return out;
  std::uint64_t stride = slots / 3 | 1;  // coprime with slots, so the pieces land on distinct slots
  while (std::gcd(stride, slots) != 1) ++stride;
  const auto first = static_cast<std::uint64_t>(i) * 2654435761ULL % slots;
  for (std::uint64_t k = 0; k < count; ++k)
    out.push_back({(first + k * stride) % slots * piece, std::min(piece, write_bytes - k * piece),
                   static_cast<std::uint32_t>(i) * 4099u + static_cast<std::uint32_t>(k) + 1});
  return out;
}

namespace detail {

inline void check(std::uint32_t err, const char* what, std::uint64_t off) {
  if (err) throw std::runtime_error(std::string(what) + " at " + std::to_string(off) + " failed with NBD error " + std::to_string(err));
}

/// How many of `pieces` read back differently from what was written.
inline std::uint64_t count_mismatches(nbd::Client& c, std::span<const WritePiece> pieces) {
  std::uint64_t bad = 0;
  std::vector<std::byte> got;
  for (const auto& p : pieces) {
    got.resize(p.length);
    check(c.read(p.offset, got), "read-back", p.offset);
    if (got != pattern(p.length, p.seed)) ++bad;
  }
  return bad;
}

/// Device `i`'s boot: reads and writes, the drop and reconnect half-way if it drops; fills `out`.
inline void boot(const ReconnectStorm& s, int i, DeviceOutcome& out) {
  const auto start = std::chrono::steady_clock::now();
  const nbd::ClientOptions options{s.timeout, "", {}};
  const auto pieces = writes_of(i, s.write_bytes, s.disk_bytes);
  const auto half_pieces = (pieces.size() + 1) / 2;  // a device writing anything writes before its drop
  const auto half_ws = s.ws_bytes / 2;
  std::optional<nbd::Client> c;
  c.emplace(s.host, s.port, s.export_of(i), options);
  std::vector<std::byte> buf;
  auto read_range = [&](std::uint64_t from, std::uint64_t to) {
    for (std::uint64_t off = from; off < to; off += s.request_bytes) {
      buf.resize(std::min(s.request_bytes, to - off));
      check(c->read(off, buf), "boot read", off);
    }
  };
  auto write_pieces = [&](std::size_t from, std::size_t to) {
    for (std::size_t k = from; k < to; ++k)
      check(c->write(pieces[k].offset, pattern(pieces[k].length, pieces[k].seed)), "write", pieces[k].offset);
    check(c->flush(), "flush", 0);
  };
  read_range(0, half_ws);
  write_pieces(0, half_pieces);
  if (out.dropped) {
    c.reset();  // closes the socket without NBD_CMD_DISC: what a TCP reset or a switch flap leaves the server with
    c.emplace(s.host, s.port, s.export_of(i), options);
    out.lost_after_drop = count_mismatches(*c, std::span(pieces).first(half_pieces));
  }
  read_range(half_ws, s.ws_bytes);
  write_pieces(half_pieces, pieces.size());
  out.boot_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  c->disconnect();
}

/// Runs `each(i, outcome)` for every device on `s.concurrency` threads; errors are recorded in the outcome.
inline void for_each_device(const ReconnectStorm& s, StormOutcome& r,
                            const std::function<void(int, DeviceOutcome&)>& each) {
  std::atomic<int> next{0};
  std::vector<std::thread> workers;
  for (int w = 0; w < s.concurrency; ++w) {
    workers.emplace_back([&] {
      for (int j; (j = next.fetch_add(1)) < s.devices;) {
        auto& d = r.devices[static_cast<std::size_t>(j)];
        try {
          each(s.first_device + j, d);
        } catch (const std::exception& e) {
          if (d.error.empty()) d.error = "device " + s.export_of(s.first_device + j) + ": " + e.what();
        }
      }
    });
  }
  for (auto& t : workers) t.join();
}

}  // namespace detail

/// Boots every device (timed), then reads back every device's writes on a new connection (untimed).
inline StormOutcome run_reconnect_storm(const ReconnectStorm& s) {
  StormOutcome r;
  r.devices.resize(static_cast<std::size_t>(std::max(s.devices, 0)));
  for (int j = 0; j < s.devices; ++j) r.devices[static_cast<std::size_t>(j)].dropped = drops(s.first_device + j, s.drop_percent);
  const auto t0 = std::chrono::steady_clock::now();
  detail::for_each_device(s, r, [&](int i, DeviceOutcome& d) { detail::boot(s, i, d); });
  r.boot_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  detail::for_each_device(s, r, [&](int i, DeviceOutcome& d) {
    if (d.boot_ms < 0) return;  // its boot failed: counted once, below
    nbd::Client c(s.host, s.port, s.export_of(i), nbd::ClientOptions{s.timeout, "", {}});
    d.mismatches = detail::count_mismatches(c, writes_of(i, s.write_bytes, s.disk_bytes));
    d.verified = true;
    c.disconnect();
  });
  for (const auto& d : r.devices) {
    r.dropped += d.dropped ? 1 : 0;
    r.lost_after_drop += d.lost_after_drop;
    r.mismatches += d.mismatches;
    if (!d.error.empty() && r.failures++ == 0) r.first_error = d.error;
  }
  return r;
}

}  // namespace deskfarm::testing
