#include "model.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <charconv>
#include <cstring>
#include <set>
#include <thread>
#include <vector>

#include <Poco/Data/Session.h>
#include <Poco/Exception.h>
#include <Poco/Data/Transaction.h>

#include <deskfarm/nbd/export.hpp>
#include <deskfarm/sdk/store.hpp>
#include <deskfarm/nbd/version_chain.hpp>

namespace deskfarm::pvs {

using sdk::ConfigError;
using namespace Poco::Data::Keywords;

std::string to_string(Mode m) { return m == Mode::standard ? "standard" : "private"; }
Mode mode_of(const std::string& s) { return s == "private" ? Mode::private_image : Mode::standard; }

std::optional<std::string> normalize_mac(std::string_view text) {
  if (text.size() != 17) return std::nullopt;
  std::string out;
  for (std::size_t i = 0; i < 17; ++i) {
    char c = text[i];
    if (i % 3 == 2) {
      if (c != ':' && c != '-') return std::nullopt;
      out += ':';
      continue;
    }
    if (c >= 'A' && c <= 'F') c = static_cast<char>(c - 'A' + 'a');
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return std::nullopt;
    out += c;
  }
  return out;
}

bool valid_vdisk_name(std::string_view name) {
  if (name.empty() || name.size() > 64 || name.front() == '.') return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
           c == '-';
  });
}

namespace {

ListenAddress parse_listen(const std::string& key, const std::string& text) {
  const auto colon = text.rfind(':');
  auto bad = [&](const std::string& why) {
    return ConfigError(key, key + " '" + text + "': " + why + " (expected \"IPv4:port\", e.g. \"127.0.0.1:10809\")");
  };
  if (colon == std::string::npos) throw bad("no port");
  ListenAddress a{text.substr(0, colon), 0};
  unsigned port = 0;
  const std::string p = text.substr(colon + 1);
  auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), port);
  if (p.empty() || ec != std::errc() || end != p.data() + p.size() || port > 65535) throw bad("port is not 0..65535");
  a.port = static_cast<std::uint16_t>(port);
  int dots = 0;
  for (char c : a.host) {
    if (c == '.') ++dots;
    else if (c < '0' || c > '9') throw bad("host is not an IPv4 address");
  }
  if (dots != 3) throw bad("host is not an IPv4 address");
  return a;
}

}  // namespace

Options make_options(const PvsConfig& c, const std::filesystem::path& state_dir) {
  Options o;
  if (c.tftp != "off") o.tftp = parse_listen("tftp", c.tftp);
  o.tftp_root = c.tftp_root.empty() ? state_dir / "tftp" : std::filesystem::path(c.tftp_root);
  o.bootstrap_file = c.bootstrap_file;
  if (o.bootstrap_file.empty() || o.bootstrap_file.find_first_of("/\\") != std::string::npos || o.bootstrap_file.size() > 128)
    throw ConfigError("bootstrap_file", "bootstrap_file '" + o.bootstrap_file +
                                            "' must be a plain file name (no '/' or '\\'), 1..128 characters");
  o.stream = parse_listen("stream", c.stream);

  try {
    o.bootstrap = bootstrap::from_keys(c);
  } catch (const bootstrap::KeyError& e) {
    throw ConfigError(e.key(), e.what());
  }
  if (c.login_servers.empty() && o.stream.host == "0.0.0.0")
    throw ConfigError("login_servers", "stream listens on 0.0.0.0, which devices cannot dial: list the addresses "
                                       "devices should use in login_servers");

  o.max_connections = static_cast<std::size_t>(c.max_connections);
  o.list_exports = c.list_exports;
  o.stream_tls = c.stream_tls;
  o.tls = {c.tls_certificate, c.tls_key, c.tls_client_ca, c.tls_psk_file};
  if (o.tls.certificate.empty() != o.tls.key.empty())
    throw ConfigError(o.tls.key.empty() ? "tls_key" : "tls_certificate",
                      "tls_certificate and tls_key go together (the certificate and its private key, PEM)");
  if (o.stream_tls != "off" && !o.tls.configured())
    throw ConfigError("stream_tls", "stream_tls = \"" + o.stream_tls +
                                        "\" needs tls_certificate and tls_key, or tls_psk_file (\"identity:hexkey\" lines)");
  auto subnets = [](const char* key, const std::vector<std::string>& texts) {
    std::vector<net::Subnet> out;
    for (std::size_t i = 0; i < texts.size(); ++i) {
      auto n = net::Subnet::parse(texts[i]);
      if (!n)
        throw ConfigError(key, std::string(key) + "[" + std::to_string(i) + "] '" + texts[i] +
                                   "' is not an IPv4 or IPv6 network (\"10.1.0.0/16\", \"fd00::/64\", or an address)");
      out.push_back(std::move(*n));
    }
    return out;
  };
  auto device_subnets = subnets("device_subnets", c.device_subnets);
  auto maintenance_from = subnets("maintenance_from", c.maintenance_from);
  std::map<std::string, net::Subnet> device_ip;
  o.store = c.store.empty() ? state_dir.parent_path() / "vdisks" : std::filesystem::path(c.store);
  o.write_cache_dir = c.write_cache_dir.empty() ? state_dir / "write-cache" : std::filesystem::path(c.write_cache_dir);
  o.write_cache_ram = static_cast<std::uint64_t>(c.write_cache_ram_mb) << 20;
  o.write_cache_disk = static_cast<std::uint64_t>(c.write_cache_disk_mb) << 20;
  const auto bs = c.write_cache_block_size;
  if ((bs & (bs - 1)) != 0)
    throw ConfigError("write_cache_block_size", "write_cache_block_size " + std::to_string(bs) +
                                                    " is not a power of two (4096..1048576)");
  o.write_cache_block_size = static_cast<std::uint32_t>(bs);
  o.refresh_s = c.refresh_s;
  o.session_idle = std::chrono::seconds(c.session_idle_s);
  o.lease = std::chrono::seconds(c.lease_s);
  o.stream_idle_timeout = std::chrono::seconds(c.stream_idle_timeout_s);
  o.stream_keepalive = std::chrono::seconds(c.stream_keepalive_s);

  std::set<std::string> names;
  for (std::size_t i = 0; i < c.vdisks.size(); ++i) {
    const std::string at = "vdisks[" + std::to_string(i) + "]";
    VdiskSeed v = c.vdisks[i];
    if (!valid_vdisk_name(v.name))
      throw ConfigError("vdisks", at + ".name '" + v.name + "' must be 1..64 of [A-Za-z0-9_.-], not starting with '.'");
    if (!names.insert(v.name).second) throw ConfigError("vdisks", "vDisk '" + v.name + "' is declared twice");
    if (v.file.empty()) v.file = v.name + ".img";
    if (v.file.find('/') != std::string::npos || v.file.starts_with(".") || v.file.ends_with(".dfv"))
      throw ConfigError("vdisks", at + ".file '" + v.file +
                                      "' must be a file name inside the store (no '/', no leading '.', not .dfv)");
    o.vdisks.push_back(std::move(v));
  }
  std::set<std::string> macs;
  for (std::size_t i = 0; i < c.devices.size(); ++i) {
    const std::string at = "devices[" + std::to_string(i) + "]";
    DeviceSeed d = c.devices[i];
    const auto norm = normalize_mac(d.mac);
    if (!norm) throw ConfigError("devices", at + ".mac '" + d.mac + "' is not a MAC address like \"52:54:00:12:34:56\"");
    d.mac = *norm;
    if (!macs.insert(d.mac).second) throw ConfigError("devices", "device " + d.mac + " is declared twice");
    if (!names.contains(d.vdisk) && !valid_vdisk_name(d.vdisk))
      throw ConfigError("devices", at + ".vdisk '" + d.vdisk + "' is not a vDisk name");
    if (!d.ip.empty()) {
      auto ip = net::Subnet::address(d.ip);
      if (!ip) throw ConfigError("devices", at + ".ip '" + d.ip + "' is not an IPv4 or IPv6 address");
      device_ip.emplace(d.mac, std::move(*ip));
    }
    o.devices.push_back(std::move(d));
  }
  o.access = AccessPolicy(std::move(device_ip), std::move(device_subnets), std::move(maintenance_from));
  return o;
}

void require_images(const Options& o) {
  for (const auto& v : o.vdisks) {
    if (v.size_mb == 0 && !std::filesystem::exists(o.store / v.file))
      throw ConfigError("vdisks", "vDisk '" + v.name + "': " + (o.store / v.file).string() +
                                      " does not exist; copy the image there or give size_mb to create an empty one");
  }
}

// ---- rows ----

const VersionRow* VdiskRow::bootable(bool include_test) const {
  for (auto it = versions.rbegin(); it != versions.rend(); ++it) {
    if (it->access == kProduction || (include_test && it->access == kTest)) return &*it;
  }
  return nullptr;
}
const VersionRow* VdiskRow::maintenance() const {
  for (const auto& v : versions)
    if (v.access == kMaintenance) return &v;
  return nullptr;
}
const VersionRow* VdiskRow::find(int number) const {
  for (const auto& v : versions)
    if (v.number == number) return &v;
  return nullptr;
}

// ---- catalog ----

namespace {
const std::vector<sdk::Migration> migrations = {
    {1,
     {"CREATE TABLE pvs_vdisks (name VARCHAR(64) PRIMARY KEY, mode VARCHAR(16) NOT NULL, size_bytes BIGINT NOT NULL)",
      "CREATE TABLE pvs_versions (vdisk VARCHAR(64) NOT NULL, number INTEGER NOT NULL, file VARCHAR(256) NOT NULL, "
      "parent INTEGER NOT NULL, access VARCHAR(16) NOT NULL, created_at BIGINT NOT NULL, PRIMARY KEY (vdisk, number))",
      "CREATE TABLE pvs_devices (mac VARCHAR(17) PRIMARY KEY, vdisk VARCHAR(64) NOT NULL, name VARCHAR(128) NOT NULL, "
      "type VARCHAR(16) NOT NULL)"}},
    // The session ledger (ledger.hpp): who serves each device, so that HA peers never both do.
    {2,
     {"CREATE TABLE pvs_owners (owner VARCHAR(160) PRIMARY KEY, renewed_ms BIGINT NOT NULL)",
      "CREATE TABLE pvs_sessions (export VARCHAR(96) PRIMARY KEY, owner VARCHAR(160) NOT NULL, session BIGINT NOT NULL, "
      "peer VARCHAR(64) NOT NULL, vdisk VARCHAR(64) NOT NULL, version INTEGER NOT NULL, dirty INTEGER NOT NULL, "
      "since_ms BIGINT NOT NULL)"}},
};

std::int64_t now_s() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

void create_sparse(const std::filesystem::path& path, std::uint64_t size) {
  std::filesystem::create_directories(path.parent_path());
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
  if (fd < 0) throw std::runtime_error("pvs: cannot create vDisk " + path.string() + ": " + std::strerror(errno));
  const int rc = ::ftruncate(fd, static_cast<off_t>(size));
  ::close(fd);
  if (rc != 0) throw std::runtime_error("pvs: cannot size vDisk " + path.string() + ": " + std::strerror(errno));
}
}  // namespace

void Catalog::migrate() {
  auto s = store_.session();
  // Two HA peers may migrate the same store at once; the loser retries and finds the tables in place.
  for (int attempt = 0;; ++attempt) {
    try {
      sdk::migrate(s, "pvs", migrations);
      return;
    } catch (const std::exception&) {
      if (attempt == 2) throw;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }
}

namespace {
/// HA peers started together seed the same rows: one of two racing INSERTs fails on the primary key (or finds the
/// store busy). Retried, the loser finds the row and only updates it. Five attempts, 50..200 ms apart.
template <class F>
void retried(F&& step) {
  for (int attempt = 1;; ++attempt) {
    try {
      step();
      return;
    } catch (const Poco::Exception&) {
      if (attempt == 5) throw;
      std::this_thread::sleep_for(std::chrono::milliseconds(50 * attempt));
    }
  }
}
}  // namespace

void Catalog::seed(const std::vector<VdiskSeed>& vdisks, const std::vector<DeviceSeed>& devices) {
  std::filesystem::create_directories(dir_);
  for (const auto& v : vdisks) {
    const auto path = dir_ / v.file;
    if (!std::filesystem::exists(path)) create_sparse(path, v.size_mb << 20);
    const std::uint64_t size = std::filesystem::file_size(path);
    retried([&] { seed_vdisk(v, size); });
  }
  for (const auto& d : devices) retried([&] { assign(d); });
}

void Catalog::seed_vdisk(const VdiskSeed& v, std::uint64_t size) {
  {
    auto s = store_.session();
    Poco::Data::Transaction tx(s);
    std::string name = v.name, mode = v.mode, file = v.file;
    auto isize = static_cast<Poco::Int64>(size);
    int count = 0;
    s << sdk::sql(s, "SELECT COUNT(*) FROM pvs_vdisks WHERE name = ?"), use(name), into(count), now;
    if (count == 0) {
      s << sdk::sql(s, "INSERT INTO pvs_vdisks (name, mode, size_bytes) VALUES (?, ?, ?)"), use(name), use(mode), use(isize), now;
      int number = 0, parent = -1;
      std::string access = kProduction;
      Poco::Int64 created = now_s();
      s << sdk::sql(s, "INSERT INTO pvs_versions (vdisk, number, file, parent, access, created_at) VALUES (?, ?, ?, ?, ?, ?)"),
          use(name), use(number), use(file), use(parent), use(access), use(created), now;
    } else {
      s << sdk::sql(s, "UPDATE pvs_vdisks SET mode = ? WHERE name = ?"), use(mode), use(name), now;
    }
    tx.commit();
  }
}

void Catalog::assign(const DeviceSeed& d) {
  auto s = store_.session();
  std::string mac = d.mac, vdisk = d.vdisk, name = d.name, type = d.type;
  int known = 0;
  s << sdk::sql(s, "SELECT COUNT(*) FROM pvs_vdisks WHERE name = ?"), use(vdisk), into(known), now;
  if (known == 0) throw ActionError("device " + mac + ": vDisk '" + vdisk + "' does not exist in the store");
  Poco::Data::Transaction tx(s);
  int count = 0;
  s << sdk::sql(s, "SELECT COUNT(*) FROM pvs_devices WHERE mac = ?"), use(mac), into(count), now;
  if (count == 0)
    s << sdk::sql(s, "INSERT INTO pvs_devices (mac, vdisk, name, type) VALUES (?, ?, ?, ?)"), use(mac), use(vdisk), use(name),
        use(type), now;
  else
    s << sdk::sql(s, "UPDATE pvs_devices SET vdisk = ?, name = ?, type = ? WHERE mac = ?"), use(vdisk), use(name), use(type),
        use(mac), now;
  tx.commit();
}

Snapshot Catalog::load() {
  Snapshot snap;
  auto s = store_.session();
  {
    std::vector<std::string> names, modes;
    std::vector<Poco::Int64> sizes;
    s << "SELECT name, mode, size_bytes FROM pvs_vdisks", into(names), into(modes), into(sizes), now;
    for (std::size_t i = 0; i < names.size(); ++i)
      snap.vdisks[names[i]] = VdiskRow{names[i], mode_of(modes[i]), static_cast<std::uint64_t>(sizes[i]), {}};
  }
  {
    std::vector<std::string> vdisks, files, access;
    std::vector<int> numbers, parents;
    std::vector<Poco::Int64> created;
    s << "SELECT vdisk, number, file, parent, access, created_at FROM pvs_versions ORDER BY vdisk, number",
        into(vdisks), into(numbers), into(files), into(parents), into(access), into(created), now;
    for (std::size_t i = 0; i < vdisks.size(); ++i) {
      auto it = snap.vdisks.find(vdisks[i]);
      if (it != snap.vdisks.end())
        it->second.versions.push_back({numbers[i], files[i], parents[i], access[i], created[i]});
    }
  }
  {
    std::vector<std::string> macs, vdisks, names, types;
    s << "SELECT mac, vdisk, name, type FROM pvs_devices", into(macs), into(vdisks), into(names), into(types), now;
    for (std::size_t i = 0; i < macs.size(); ++i) snap.devices[macs[i]] = {macs[i], vdisks[i], names[i], types[i]};
  }
  return snap;
}

namespace {
const VdiskRow& vdisk_of(const Snapshot& snap, const std::string& name) {
  auto it = snap.vdisks.find(name);
  if (it == snap.vdisks.end()) throw ActionError("unknown vDisk '" + name + "'");
  return it->second;
}
}  // namespace

int Catalog::new_version(const std::string& name) {
  const Snapshot snap = load();
  const VdiskRow& v = vdisk_of(snap, name);
  if (v.mode != Mode::standard)
    throw ActionError("vDisk '" + name + "' is in private mode: it is written in place and has no versions");
  if (const auto* m = v.maintenance())
    throw ActionError("vDisk '" + name + "' already has version " + std::to_string(m->number) +
                      " in maintenance; promote or merge it before making another");
  const VersionRow& top = v.versions.back();
  int number = top.number + 1;
  // NAME.N.dfv, unless a file of that name is left over from an attempt whose INSERT failed or never ran (a crash,
  // or an HA peer racing us): that one is no version (no row names it), so a fresh name is taken beside it.
  std::string file = name + "." + std::to_string(number) + ".dfv";
  for (int k = 2; std::filesystem::exists(dir_ / file); ++k) {
    if (k > 100)
      throw ActionError("vDisk '" + name + "': 100 leftover files " + name + "." + std::to_string(number) +
                        "*.dfv in " + dir_.string() + " that no version names; remove them");
    file = name + "." + std::to_string(number) + "~" + std::to_string(k) + ".dfv";
  }
  nbd::create_version(dir_ / file, dir_ / top.file);
  try {
    auto s = store_.session();
    std::string vdisk = name, access = kMaintenance;
    int parent = top.number;
    Poco::Int64 created = now_s();
    s << sdk::sql(s, "INSERT INTO pvs_versions (vdisk, number, file, parent, access, created_at) VALUES (?, ?, ?, ?, ?, ?)"),
        use(vdisk), use(number), use(file), use(parent), use(access), use(created), now;
  } catch (...) {
    std::error_code ec;  // ours alone (a fresh name): no version names it
    std::filesystem::remove(dir_ / file, ec);
    throw;
  }
  return number;
}

int Catalog::promote(const std::string& name, std::optional<int> version, const std::string& to) {
  if (to != kTest && to != kProduction) throw ActionError("promote to '" + to + "': only \"test\" or \"production\"");
  const Snapshot snap = load();
  const VdiskRow& v = vdisk_of(snap, name);
  const VersionRow* row = nullptr;
  if (version) {
    row = v.find(*version);
    if (!row) throw ActionError("vDisk '" + name + "' has no version " + std::to_string(*version));
  } else {
    for (const auto& r : v.versions)
      if (r.access != kProduction) row = &r;
    if (!row) throw ActionError("vDisk '" + name + "' has no version in maintenance or test to promote");
  }
  if (row->access == kProduction) throw ActionError("version " + std::to_string(row->number) + " is already production");
  if (row->access == kTest && to == kTest) throw ActionError("version " + std::to_string(row->number) + " is already test");
  auto s = store_.session();
  std::string vdisk = name, access = to;
  int number = row->number;
  s << sdk::sql(s, "UPDATE pvs_versions SET access = ? WHERE vdisk = ? AND number = ?"), use(access), use(vdisk), use(number), now;
  return number;
}

int Catalog::merge_base(const std::string& name, std::optional<int> version, const std::string& access,
                        std::stop_token stop) {
  if (access != kMaintenance && access != kTest && access != kProduction)
    throw ActionError("merge access '" + access + "': only maintenance, test or production");
  const Snapshot snap = load();
  const VdiskRow& v = vdisk_of(snap, name);
  if (v.mode != Mode::standard) throw ActionError("vDisk '" + name + "' is in private mode: nothing to merge");
  const VersionRow* row = version ? v.find(*version) : v.bootable(false);
  if (!row) throw ActionError("vDisk '" + name + "' has no such version to merge");
  if (row->access == kMaintenance)
    throw ActionError("version " + std::to_string(row->number) + " is in maintenance; promote it first");
  if (access == kMaintenance && v.maintenance())
    throw ActionError("vDisk '" + name + "' already has a version in maintenance");
  const int number = v.versions.back().number + 1;
  const std::string file = name + "." + std::to_string(number) + ".img";
  const auto tmp = dir_ / (file + ".partial");
  // Read the whole chain once into a new raw base; only a complete file is renamed into place.
  {
    nbd::ChainExport chain(dir_ / row->file);
    std::filesystem::remove(tmp);
    create_sparse(tmp, chain.size());
    nbd::FileExport out(tmp, false);
    std::vector<std::byte> buf(1 << 20), zero(1 << 20);
    for (std::uint64_t off = 0; off < chain.size(); off += buf.size()) {
      if (stop.stop_requested()) {
        std::filesystem::remove(tmp);
        throw ActionError("merge of vDisk '" + name + "' abandoned: the instance is stopping");
      }
      const auto n = std::min<std::uint64_t>(buf.size(), chain.size() - off);
      std::span<std::byte> piece(buf.data(), n);
      if (int e = chain.read(off, piece)) throw ActionError("merge: read of " + row->file + " failed: " + std::strerror(e));
      if (std::equal(piece.begin(), piece.end(), zero.begin())) continue;  // keep holes sparse
      if (int e = out.write(off, piece)) throw ActionError("merge: write of " + file + " failed: " + std::strerror(e));
    }
    if (int e = out.flush()) throw ActionError("merge: flush of " + file + " failed: " + std::strerror(e));
  }
  std::filesystem::rename(tmp, dir_ / file);
  auto s = store_.session();
  std::string vdisk = name, f = file, a = access;
  int n = number, parent = -1;
  Poco::Int64 created = now_s();
  s << sdk::sql(s, "INSERT INTO pvs_versions (vdisk, number, file, parent, access, created_at) VALUES (?, ?, ?, ?, ?, ?)"),
      use(vdisk), use(n), use(f), use(parent), use(a), use(created), now;
  return number;
}

}  // namespace deskfarm::pvs
