// A small boot storm with reconnects (the load of tools/bench/pvs): devices write and FLUSH mid-boot, some drop
// their TCP connection without NBD_CMD_DISC and reopen their export; none may lose a write.
#include <algorithm>
#include <string>
#include <vector>

#include <deskfarm/testing/net.hpp>
#include <deskfarm/testing/reconnect_storm.hpp>

#include "pvs_lab.hpp"

using namespace pvs_test;

TEST_CASE("a boot storm with reconnects: every device reads back its writes, dropped ones right after the reconnect") {
  constexpr int devices = 40;
  Lab lab;
  std::string list;
  for (int i = 0; i < devices; ++i) list += "  { mac = \"" + dt::mac_of(i) + "\", vdisk = \"gold\" },\n";
  lab.start_instances("[instances.pvs-1]\nplugin = \"pvs\"\ntftp = \"off\"\nstream = \"127.0.0.1:0\"\nstore = \"" +
                      lab.store().string() + "\"\nvdisks = [ { name = \"gold\", file = \"gold.img\" } ]\ndevices = [\n" +
                      list + "]\n");

  dt::ReconnectStorm storm;
  storm.port = lab.stream_port();
  storm.export_of = dt::mac_of;
  storm.devices = devices;
  storm.concurrency = 8;
  storm.ws_bytes = 1 << 20;
  storm.request_bytes = 128 << 10;
  storm.write_bytes = 64 << 10;  // four pieces: two before the drop, two after
  storm.disk_bytes = base_size;
  storm.drop_percent = 25;
  storm.timeout = std::chrono::seconds(20);  // a hung request fails its device instead of hanging the test
  const auto result = dt::run_reconnect_storm(storm);

  INFO("first error: " << result.first_error);
  REQUIRE(result.failures == 0);
  CHECK(result.dropped == devices / 4);
  CHECK(result.lost_after_drop == 0);
  CHECK(result.mismatches == 0);
  for (int i = 0; i < devices; ++i) {
    const auto& d = result.devices[static_cast<std::size_t>(i)];
    INFO("device " << dt::mac_of(i) << (d.dropped ? " (dropped)" : ""));
    CHECK(d.verified);
    CHECK(d.mismatches == 0);
    if (d.dropped) CHECK(d.lost_after_drop == 0);
  }
  // The drops ended no session: each device still has the one it booted (a reconnect is not a reboot).
  CHECK(lab.status().find("sessions")->as_array().size() == static_cast<std::size_t>(devices));
}

TEST_CASE("the reconnect storm's write plan: distinct offsets per device, exactly P % of devices drop") {
  const auto pieces = dt::writes_of(3, 1 << 20, base_size);
  REQUIRE(pieces.size() == (1 << 20) / dt::ReconnectStorm::write_piece);
  std::vector<std::uint64_t> offsets;
  for (const auto& p : pieces) {
    CHECK(p.offset + p.length <= base_size);
    offsets.push_back(p.offset);
  }
  std::sort(offsets.begin(), offsets.end());
  CHECK(std::adjacent_find(offsets.begin(), offsets.end()) == offsets.end());
  CHECK(dt::writes_of(4, 1 << 20, base_size).front().offset != pieces.front().offset);
  CHECK_THROWS_WITH(dt::writes_of(0, base_size + 1, base_size), Catch::Contains("needs a disk of at least"));
  int dropping = 0;
  for (int i = 0; i < 500; ++i) dropping += dt::drops(i, 10) ? 1 : 0;
  CHECK(dropping == 50);
}
