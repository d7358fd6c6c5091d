#include "streamer.hpp"

#include <cerrno>
#include <optional>
#include <random>

#include <deskfarm/nbd/version_chain.hpp>

namespace deskfarm::pvs {

Streamer::Streamer(std::string server, std::filesystem::path store_dir, nbd::WriteCacheOptions cache,
                   StreamerMetrics metrics, std::chrono::milliseconds session_idle, AccessPolicy access)
    : access_(std::move(access)),
      dir_(std::move(store_dir)),
      cache_(std::move(cache)),
      metrics_(metrics),
      server_(std::move(server)),
      session_idle_(session_idle) {
  // Session ids name ledger rows across runs and servers: start each run somewhere random (63 bits).
  std::random_device rd;
  next_session_ = ((static_cast<std::uint64_t>(rd()) << 31) ^ rd()) & 0x7fff'ffff'ffff'0000ull;
}

void Streamer::release_row(const std::string& key, const Live& live) {
  // Caller holds mutex_; the sink only queues the row's removal.
  if (ledger_ && ledger_released_) ledger_released_(OwnedSession{key, live.session});
}

nbd::Resolution Streamer::connect(const std::string& key, std::shared_ptr<DeviceExport> device,
                                  std::string_view peer) {
  Live& live = live_[key];
  ++live.connections;
  live.info.peer = std::string(peer);  // where the device is now: bootstrap_from() looks for it there
  return {std::make_shared<ConnectionExport>(weak_from_this(), key, std::move(device)), {}};
}

void Streamer::update(Snapshot snapshot) {
  std::lock_guard lock(mutex_);
  snap_ = std::move(snapshot);
  loaded_ = true;
}

Snapshot Streamer::snapshot() const {
  std::lock_guard lock(mutex_);
  return snap_;
}

std::shared_ptr<nbd::Export> Streamer::layer(const std::string& file) {
  // Caller holds mutex_. One open chain per version file, shared by every device booting it.
  auto& slot = layers_[file];
  if (auto e = slot.lock()) return e;
  std::shared_ptr<nbd::Export> e;
  if (file.ends_with(".dfv")) e = std::make_shared<nbd::ChainExport>(dir_ / file);
  else e = std::make_shared<nbd::FileExport>(dir_ / file, true);
  slot = e;
  return e;
}

namespace {
nbd::Resolution refusal(sdk::Counter* c, std::string why) {
  if (c) c->inc();
  return nbd::Resolution{nullptr, "pvs: " + why};
}
}  // namespace

nbd::Resolution Streamer::resolve(std::string_view name, std::string_view peer) {
  const std::string requested(name);
  // A session found expired here ends after the lock: its export may be the last reference (see cache_bytes()).
  std::vector<std::shared_ptr<DeviceExport>> idle_drop;
  std::vector<DeviceEvent> idle_events;
  struct Emit {
    const Streamer* self;
    std::vector<DeviceEvent>& events;
    ~Emit() {
      for (const auto& e : events) self->emit(e);
    }
  } emit_after{this, idle_events};
  std::unique_lock lock(mutex_);
  std::variant<nbd::Resolution, Plan> found;
  // One claim per session key at a time: another connection of a device being claimed waits for the outcome, then
  // looks again (it finds the session, or the refusal). Bounded: a claim ends within the ledger's timeout.
  for (;;) {
    found = find_locked(requested, peer, idle_drop, idle_events);
    const auto* plan = std::get_if<Plan>(&found);
    if (!plan || !ledger_ || !claiming_.contains(plan->key)) break;
    claimed_.wait(lock);
  }
  if (auto* r = std::get_if<nbd::Resolution>(&found)) return std::move(*r);
  Plan plan = std::get<Plan>(std::move(found));
  const std::uint64_t session = next_session_.fetch_add(1);
  if (!ledger_) return open_locked(plan, session, "", peer);

  // HA: the data store says whether another server serves this device. Asked without the lock: other devices'
  // connections go on, and claims of many booting devices share one transaction (see Ledger).
  claiming_.insert(plan.key);
  struct Claimed {
    Streamer& s;
    const std::string& key;
    ~Claimed() {
      s.claiming_.erase(key);  // under mutex_: the lock is held again whenever this runs
      s.claimed_.notify_all();
    }
  };
  lock.unlock();
  Claim claim;
  std::string failure;
  try {
    claim = ledger_->claim(plan.key, session, std::string(peer), plan.vdisk, plan.version,
                           std::string_view(plan.mode) != "standard");
  } catch (const std::exception& e) {
    failure = e.what();
  }
  lock.lock();
  Claimed done{*this, plan.key};
  if (!failure.empty())
    return refusal(metrics_.refused, "cannot reach the data store to make sure no other server serves " + plan.key +
                                         " (" + failure + "); retry in a moment");
  switch (claim.kind) {
    case Claim::Kind::held:
      return refusal(metrics_.refused, plan.key + " is served by " + claim.owner + " (device at " + claim.peer +
                                           "); one server at a time: it must connect there");
    case Claim::Kind::lost:
      return refusal(metrics_.refused, plan.key + " wrote to its write cache on " + claim.owner +
                                           ", which stopped; those writes are gone, so it cannot go on here with "
                                           "its disk: reboot the device (a hypervisor power event, its bootstrap "
                                           "fetch or pvs.<instance>.admin.device.reset ends that session)");
    case Claim::Kind::takeover:
      plan.version = claim.version;  // the version the device booted, whatever is newest now
      break;
    case Claim::Kind::granted:
      break;
  }
  auto r = open_locked(plan, session, claim.kind == Claim::Kind::takeover ? claim.owner : "", peer);
  if (!r.backend && ledger_released_) ledger_released_(OwnedSession{plan.key, session});  // never opened
  return r;
}

std::variant<nbd::Resolution, Streamer::Plan> Streamer::find_locked(const std::string& requested, std::string_view peer,
                                                                    std::vector<std::shared_ptr<DeviceExport>>& drop,
                                                                    std::vector<DeviceEvent>& events) {
  auto deny = [&](std::string why) {
    if (metrics_.denied) metrics_.denied->inc();
    return nbd::Resolution{nullptr, std::move(why), true};
  };
  if (!loaded_) return refusal(metrics_.refused, "the catalog is still loading from the data store; retry in a moment");
  // vdisk@maintenance: the one writer of a version in maintenance.
  if (const auto at = requested.find('@'); at != std::string::npos) {
    const std::string vdisk = requested.substr(0, at);
    if (requested.substr(at + 1) != "maintenance")
      return refusal(metrics_.unknown, "unknown export '" + requested + "' (use a device MAC or VDISK@maintenance)");
    if (auto why = access_.maintenance_denied(peer)) return deny(*why);
    auto it = snap_.vdisks.find(vdisk);
    if (it == snap_.vdisks.end()) return refusal(metrics_.unknown, "unknown vDisk '" + vdisk + "'");
    const VersionRow* m = it->second.maintenance();
    if (!m)
      return refusal(metrics_.refused, "vDisk '" + vdisk + "' has no version in maintenance; create one with "
                                      "pvs.<instance>.admin.version.new");
    const std::string key = vdisk + "@maintenance";
    if (promoting_.contains(vdisk))
      return refusal(metrics_.refused, "version " + std::to_string(m->number) + " of '" + vdisk +
                                          "' is being promoted; it is no longer open for maintenance");
    if (auto l = live_.find(key); l != live_.end() && !l->second.export_.expired())
      return refusal(metrics_.refused, "version " + std::to_string(m->number) + " of '" + vdisk +
                                          "' is already open for maintenance from " + l->second.info.peer +
                                          " (one writer at a time)");
    return Plan{key, vdisk, m->number, "maintenance", key};
  }

  const auto mac = normalize_mac(requested);
  if (!mac) return refusal(metrics_.unknown, "export '" + requested + "' is not a device MAC (52:54:00:12:34:56)");
  // Before the lookup: from outside the device networks, known and unknown MACs get the same answer.
  if (auto why = access_.device_denied(*mac, peer)) return deny(*why);
  auto dev = snap_.devices.find(*mac);
  if (dev == snap_.devices.end())
    return refusal(metrics_.unknown, "unknown device " + *mac + ": no device record; add it to the manifest's "
                                    "devices or assign it with pvs.<instance>.admin.device.assign");
  auto vd = snap_.vdisks.find(dev->second.vdisk);
  if (vd == snap_.vdisks.end())
    return refusal(metrics_.refused, "device " + *mac + " is assigned to vDisk '" + dev->second.vdisk +
                                        "', which does not exist");
  const VdiskRow& vdisk = vd->second;

  if (vdisk.mode == Mode::private_image) {
    const std::string key = vdisk.name + "@private";
    if (auto l = live_.find(key); l != live_.end() && !l->second.export_.expired())
      return refusal(metrics_.refused, "vDisk '" + vdisk.name + "' is in private mode and already open by device " +
                                          l->second.info.mac + " from " + l->second.info.peer +
                                          " (private images have one writer; use standard mode to share)");
    return Plan{key, vdisk.name, vdisk.versions.front().number, "private", *mac};
  }

  // Standard mode: connections of one device share its session (write cache + the version it booted), and a
  // reconnect finds it again: the network may come and go, only a boot (end_session) or the idle time ends it.
  if (auto l = live_.find(*mac); l != live_.end()) {
    auto& live = l->second;
    if (live.held && live.connections == 0 && std::chrono::steady_clock::now() - live.idle_since >= session_idle_) {
      end_locked(l, "idle", drop, events);  // expired before the sweep came by: boot afresh
    } else if (auto d = live.export_.lock()) {
      return connect(*mac, std::move(d), peer);
    }
  }
  const VersionRow* v = vdisk.bootable(dev->second.type == kTest);
  if (!v) return refusal(metrics_.refused, "vDisk '" + vdisk.name + "' has no production version to boot");
  return Plan{*mac, vdisk.name, v->number, "standard", *mac};
}

nbd::Resolution Streamer::open_locked(const Plan& plan, std::uint64_t session, const std::string& takeover,
                                      std::string_view peer) {
  auto vd = snap_.vdisks.find(plan.vdisk);
  const VersionRow* v = vd == snap_.vdisks.end() ? nullptr : vd->second.find(plan.version);
  if (!v)
    return refusal(metrics_.refused, "version " + std::to_string(plan.version) + " of vDisk '" + plan.vdisk +
                                        "' is gone (merged or deleted meanwhile); reboot the device");
  const std::string mode = plan.mode;
  DeviceEvent info = boot_event(plan.mac, plan.vdisk, plan.version, plan.mode, peer);
  if (!takeover.empty()) {
    info.kind = "takeover";
    info.reason = "from " + takeover;
  }
  std::shared_ptr<DeviceExport> d;
  try {
    if (mode == "maintenance") {
      auto inner = std::make_shared<MaintenanceExport>(dir_ / v->file);
      d = std::make_shared<DeviceExport>(weak_from_this(), plan.key, inner, nullptr, nullptr, false, info);
    } else if (mode == "private") {
      auto inner = std::make_shared<nbd::FileExport>(dir_ / v->file, false);
      d = std::make_shared<DeviceExport>(weak_from_this(), plan.key, inner, nullptr, nullptr, false, info);
    } else {
      auto base = layer(v->file);
      nbd::WriteCacheOptions o = cache_;
      o.device = plan.key;
      auto cache = std::make_shared<nbd::WriteCache>(base, o);
      d = std::make_shared<DeviceExport>(weak_from_this(), plan.key, cache, cache, base, true, info, ledger_, session);
    }
  } catch (const std::exception& e) {
    if (mode == "maintenance") return refusal(metrics_.refused, std::string("cannot open maintenance version: ") + e.what());
    if (mode == "private") return refusal(metrics_.refused, e.what());
    return refusal(metrics_.refused, "cannot open vDisk '" + plan.vdisk + "' version " + std::to_string(plan.version) +
                                        ": " + e.what());
  }
  Live live{d, info, std::chrono::system_clock::now()};
  live.session = session;
  live_[plan.key] = std::move(live);
  return connect(plan.key, std::move(d), peer);
}

std::vector<nbd::ExportEntry> Streamer::list(std::string_view peer) const {
  std::lock_guard lock(mutex_);
  std::vector<nbd::ExportEntry> out;
  for (const auto& [mac, d] : snap_.devices) {
    if (access_.device_denied(mac, peer)) continue;  // list only what this peer may open
    std::string desc = (d.name.empty() ? "device" : d.name) + " -> vDisk " + d.vdisk;
    if (auto vd = snap_.vdisks.find(d.vdisk); vd != snap_.vdisks.end()) {
      desc += " (" + to_string(vd->second.mode) + ")";
      if (const auto* v = vd->second.bootable(d.type == kTest)) desc += " version " + std::to_string(v->number);
    }
    out.push_back({mac, desc});
  }
  if (access_.maintenance_denied(peer)) return out;
  for (const auto& [name, v] : snap_.vdisks)
    if (const auto* m = v.maintenance())
      out.push_back({name + "@maintenance", "vDisk " + name + " version " + std::to_string(m->number) +
                                                " in maintenance (one writer)"});
  return out;
}

void Streamer::released(const std::string& key, const DeviceExport* which) {
  std::shared_ptr<DeviceExport> current;  // let go after the lock: see cache_bytes()
  std::lock_guard lock(mutex_);
  auto it = live_.find(key);
  if (it == live_.end()) return;
  // Only forget the entry if it still refers to the export going away (a new boot may have replaced it).
  current = it->second.export_.lock();
  if (current && current.get() != which) return;
  release_row(key, it->second);
  live_.erase(it);
}

void Streamer::closed(const std::string& key, const DeviceExport* which, bool used) {
  std::optional<DeviceEvent> gone;
  {
    std::lock_guard lock(mutex_);
    auto it = live_.find(key);
    if (it == live_.end() || it->second.export_.lock().get() != which) return;  // ended or replaced meanwhile
    auto& live = it->second;
    if (live.connections > 0) --live.connections;
    if (live.connections == 0) {
      live.idle_since = std::chrono::steady_clock::now();
      if (used && which->booted()) {
        gone = live.info;
        gone->kind = "disconnect";
      }
    }
  }
  if (gone) emit(*gone);
}

void Streamer::hold(const std::string& key, const DeviceExport* which) {
  std::lock_guard lock(mutex_);
  auto it = live_.find(key);
  if (it == live_.end()) return;
  if (auto d = it->second.export_.lock(); d && d.get() == which) it->second.held = std::move(d);
}

EndedSession Streamer::end_locked(std::map<std::string, Live>::iterator it, const std::string& reason,
                                  std::vector<std::shared_ptr<DeviceExport>>& drop, std::vector<DeviceEvent>& events) {
  auto& live = it->second;
  EndedSession out{live.info.mac, live.info.vdisk, static_cast<int>(live.info.version), live.connections};
  if (auto d = live.export_.lock()) {
    d->revoke();
    if (d->booted()) {
      DeviceEvent e = live.info;
      e.kind = "end";
      e.reason = reason;
      events.push_back(std::move(e));
    }
    drop.push_back(std::move(d));
  }
  if (live.held) drop.push_back(std::move(live.held));
  release_row(it->first, live);
  live_.erase(it);
  return out;
}

std::vector<EndedSession> Streamer::end_where(const std::function<bool(const std::string&, const Live&)>& ends,
                                              const std::string& reason) {
  std::vector<std::shared_ptr<DeviceExport>> drop;  // declared before the lock: destroyed after it
  std::vector<DeviceEvent> events;
  std::vector<EndedSession> out;
  {
    std::lock_guard lock(mutex_);
    for (auto it = live_.begin(); it != live_.end();) {
      auto next = std::next(it);
      if (ends(it->first, it->second)) out.push_back(end_locked(it, reason, drop, events));
      it = next;
    }
  }
  for (const auto& e : events) emit(e);
  return out;
}

std::vector<EndedSession> Streamer::end_session(const std::string& mac, const std::string& reason) {
  return end_where([&](const std::string&, const Live& live) { return live.info.mac == mac; }, reason);
}

std::size_t Streamer::bootstrap_from(const std::string& host, std::vector<EndedSession>& ended) {
  std::vector<std::shared_ptr<DeviceExport>> drop;  // declared before the lock: destroyed after it
  std::vector<DeviceEvent> events;
  std::size_t seen = 0;
  {
    std::lock_guard lock(mutex_);
    auto found = live_.end();
    std::set<std::string> macs;
    for (auto it = live_.begin(); it != live_.end(); ++it) {
      if (it->second.info.peer != host || it->first.ends_with("@maintenance")) continue;
      macs.insert(it->second.info.mac);
      found = it;
    }
    seen = macs.size();
    if (seen == 1) ended.push_back(end_locked(found, "bootstrap", drop, events));
  }
  for (const auto& e : events) emit(e);
  return seen;
}

std::vector<EndedSession> Streamer::sweep_idle() {
  const auto now = std::chrono::steady_clock::now();
  return end_where(
      [&](const std::string&, const Live& live) {
        return live.held && live.connections == 0 && now - live.idle_since >= session_idle_;
      },
      "idle");
}

std::vector<EndedSession> Streamer::reconcile(const std::set<OwnedSession>& owned,
                                              std::chrono::system_clock::time_point read_at) {
  if (!ledger_) return {};
  // A session opened after the ledger was read is not in `owned` yet.
  return end_where(
      [&](const std::string& key, const Live& live) {
        return live.since < read_at && !owned.contains(OwnedSession{key, live.session});
      },
      "elsewhere");
}

bool Streamer::begin_promote(const std::string& vdisk, std::string& why) {
  std::lock_guard lock(mutex_);
  if (auto l = live_.find(vdisk + "@maintenance"); l != live_.end() && !l->second.export_.expired()) {
    why = "version " + std::to_string(l->second.info.version) + " of vDisk '" + vdisk +
          "' is still open for maintenance from " + l->second.info.peer +
          "; disconnect the maintenance writer (flushing its writes) before promoting";
    return false;
  }
  promoting_.insert(vdisk);
  return true;
}

void Streamer::end_promote(const std::string& vdisk) {
  std::lock_guard lock(mutex_);
  promoting_.erase(vdisk);
}

void Streamer::emit(const DeviceEvent& e) const {
  if (e.kind == "boot" && metrics_.boots) metrics_.boots->inc();
  if (e.kind == "disconnect" && metrics_.disconnects) metrics_.disconnects->inc();
  if (e.kind == "end" && metrics_.ended) metrics_.ended->inc();
  if (sink_) sink_(e);
}

std::size_t Streamer::active() const {
  std::lock_guard lock(mutex_);
  std::size_t n = 0;
  for (const auto& [k, l] : live_)
    if (l.connections > 0 && !l.export_.expired()) ++n;
  return n;
}

std::uint64_t Streamer::cache_bytes() const {
  // Exports locked here may be the last reference once their device disconnects; their destructor calls
  // released(), which takes mutex_, so they are let go only after the lock (declared first, dies last).
  std::vector<std::shared_ptr<DeviceExport>> held;
  std::lock_guard lock(mutex_);
  std::uint64_t n = 0;
  for (const auto& [k, l] : live_)
    if (auto d = l.export_.lock(); d && d->cache()) {
      const auto u = d->cache()->usage();
      n += u.ram_bytes + u.disk_bytes;
      held.push_back(std::move(d));
    }
  return n;
}

void Streamer::status(sdk::Value& out) const {
  std::vector<std::shared_ptr<DeviceExport>> held;  // released after the lock: see cache_bytes()
  std::lock_guard lock(mutex_);
  sdk::Value sessions = sdk::Value::array();
  std::uint64_t ram = 0, disk = 0;
  for (const auto& [k, l] : live_) {
    auto d = l.export_.lock();
    if (!d) continue;
    held.push_back(d);
    sdk::Value s = sdk::Value::object();
    s.set("export", l.info.mac);
    s.set("vdisk", l.info.vdisk);
    s.set("version", l.info.version);
    s.set("mode", l.info.mode);
    s.set("peer", l.info.peer);
    s.set("connections", l.connections);
    if (d->cache()) {
      const auto u = d->cache()->usage();
      s.set("write_cache_ram_bytes", u.ram_bytes);
      s.set("write_cache_disk_bytes", u.disk_bytes);
      ram += u.ram_bytes;
      disk += u.disk_bytes;
    }
    sessions.push(std::move(s));
  }
  out.set("catalog", loaded_ ? "loaded" : "loading");
  std::size_t connected = 0;
  for (const auto& [k, l] : live_)
    if (l.connections > 0 && !l.export_.expired()) ++connected;
  out.set("active_devices", connected);  // devices with a connection now; `sessions` also lists those between two
  out.set("sessions", std::move(sessions));
  out.set("write_cache_ram_bytes", ram);
  out.set("write_cache_disk_bytes", disk);
  // The same vDisk view as the admin replies (interfaces::pvs::VdiskInfo), plus the version devices boot.
  sdk::Value vdisks = sdk::to_value(vdisk_infos());
  for (auto& v : vdisks.as_array()) {
    const auto row = snap_.vdisks.find(v.find("name")->as_string());
    if (const auto* b = row->second.bootable(false)) v.set("production", b->number);
  }
  out.set("vdisks", std::move(vdisks));
  out.set("devices", snap_.devices.size());
}

std::vector<interfaces::pvs::VdiskInfo> Streamer::vdisk_infos() const {
  std::vector<interfaces::pvs::VdiskInfo> out;
  for (const auto& [name, v] : snap_.vdisks) {
    interfaces::pvs::VdiskInfo info{name, to_string(v.mode), static_cast<std::int64_t>(v.size), {}};
    for (const auto& r : v.versions) info.versions.push_back({r.number, r.access, r.parent, r.file});
    out.push_back(std::move(info));
  }
  return out;
}

void Streamer::describe(interfaces::pvs::AdminReply& out) const {
  std::vector<std::shared_ptr<DeviceExport>> held;  // released after the lock: see cache_bytes()
  std::lock_guard lock(mutex_);
  out.vdisks = vdisk_infos();
  out.devices.clear();
  for (const auto& [mac, d] : snap_.devices) {
    bool connected = false;
    for (const auto& key : {mac, d.vdisk + "@private"}) {  // a private image is held under its vDisk's name
      auto l = live_.find(key);
      if (l == live_.end() || l->second.info.mac != mac) continue;
      if (auto e = l->second.export_.lock()) {
        connected = l->second.connections > 0;
        held.push_back(std::move(e));
      }
    }
    out.devices.push_back({mac, d.vdisk, d.name, d.type, connected});
  }
}

// ---- DeviceExport ----

DeviceExport::DeviceExport(std::weak_ptr<Streamer> owner, std::string key, std::shared_ptr<nbd::Export> inner,
                           std::shared_ptr<nbd::WriteCache> cache, std::shared_ptr<nbd::Export> base,
                           bool multi_conn, DeviceEvent info, std::shared_ptr<Ledger> ledger, std::uint64_t session)
    : owner_(std::move(owner)),
      key_(std::move(key)),
      inner_(std::move(inner)),
      cache_(std::move(cache)),
      base_(std::move(base)),
      multi_conn_(multi_conn),
      info_(std::move(info)),
      ledger_(std::move(ledger)),
      session_(session) {}

int DeviceExport::mark_dirty() {
  if (!ledger_ || marked_.load(std::memory_order_acquire)) return 0;
  std::lock_guard lock(marking_);  // a second writer waits: no write is acknowledged before the ledger knows
  if (marked_.load(std::memory_order_relaxed)) return 0;
  try {
    ledger_->mark_dirty(key_, session_);
  } catch (const std::exception&) {
    return EIO;  // not recorded: an HA peer could continue this session from the base, so the write must fail
  }
  marked_.store(true, std::memory_order_release);
  return 0;
}

DeviceExport::~DeviceExport() {
  if (auto o = owner_.lock()) o->released(key_, this);
}

void DeviceExport::touch() {
  if (!booted_.exchange(true))
    if (auto o = owner_.lock()) {
      // A standard-mode session is held from its first I/O on (a look with NBD_OPT_INFO holds nothing).
      if (cache_) o->hold(key_, this);
      o->emit(info_);
    }
}

int DeviceExport::read(std::uint64_t off, std::span<std::byte> out) {
  if (revoked_.load()) return EIO;
  touch();
  if (base_ && !dirty_.load(std::memory_order_acquire)) return base_->read(off, out);
  return inner_->read(off, out);
}
int DeviceExport::write(std::uint64_t off, std::span<const std::byte> in) {
  if (revoked_.load()) return EIO;
  touch();
  if (int e = mark_dirty()) return e;
  dirty_.store(true, std::memory_order_release);
  return inner_->write(off, in);
}
int DeviceExport::write_zeroes(std::uint64_t off, std::uint64_t length) {
  if (revoked_.load()) return EIO;
  touch();
  if (int e = mark_dirty()) return e;
  dirty_.store(true, std::memory_order_release);
  return inner_->write_zeroes(off, length);
}
int DeviceExport::flush() {
  if (revoked_.load()) return EIO;
  return inner_->flush();
}

// ---- ConnectionExport ----

ConnectionExport::~ConnectionExport() {
  if (auto o = owner_.lock()) o->closed(key_, device_.get(), used_.load());
}
int ConnectionExport::read(std::uint64_t off, std::span<std::byte> out) {
  used_.store(true);
  return device_->read(off, out);
}
int ConnectionExport::write(std::uint64_t off, std::span<const std::byte> in) {
  used_.store(true);
  return device_->write(off, in);
}
int ConnectionExport::flush() {
  used_.store(true);
  return device_->flush();
}
int ConnectionExport::write_zeroes(std::uint64_t off, std::uint64_t length) {
  used_.store(true);
  return device_->write_zeroes(off, length);
}

// ---- MaintenanceExport ----

MaintenanceExport::MaintenanceExport(const std::filesystem::path& version_file) {
  if (version_file.extension() == ".dfv") {
    writer_ = std::make_unique<nbd::VersionWriter>(version_file);
    size_ = writer_->size();
  } else {
    raw_ = std::make_unique<nbd::FileExport>(version_file, false);
    size_ = raw_->size();
  }
}

int MaintenanceExport::read(std::uint64_t off, std::span<std::byte> out) {
  std::lock_guard lock(mutex_);
  return writer_ ? writer_->read(off, out) : raw_->read(off, out);
}

int MaintenanceExport::write(std::uint64_t off, std::span<const std::byte> in) {
  std::lock_guard lock(mutex_);
  return writer_ ? writer_->write(off, in) : raw_->write(off, in);
}

int MaintenanceExport::flush() {
  std::lock_guard lock(mutex_);
  return writer_ ? writer_->flush() : raw_->flush();
}

}  // namespace deskfarm::pvs
