// `deskfarm dsmaint refreshlhc|recreatelhc`: asks each ima instance (or the one named) of a running deployment to
// refresh its local host cache from the data store, or to delete and rebuild it, and prints what the cache holds.
#include "dsmaint_command.hpp"

#include <Poco/JSON/Parser.h>

#include <algorithm>
#include <cstdio>
#include <iostream>

#include "ima_command.hpp"

namespace deskfarm::cli {

int cmd_dsmaint(const std::string& action, const std::string& instance, const AdminTarget& target,
                std::chrono::milliseconds timeout) {
  if (action != "refreshlhc" && action != "recreatelhc") {
    std::cerr << "deskfarm dsmaint: '" << action << "' is not an action; use refreshlhc or recreatelhc\n";
    return usage;
  }
  int code = ok;
  const AdminClient admin(target);
  auto status = admin_call(admin, "/status", [&] { return admin.get("/status", timeout); }, code);
  if (!status) return code;
  auto servers = instances_of(*status, "ima");
  if (!instance.empty()) {
    if (std::find(servers.begin(), servers.end(), instance) == servers.end()) {
      std::cerr << "deskfarm dsmaint: the deployment at " << admin.address() << " runs no ima instance '" << instance
                << "'; `deskfarm status` lists its instances\n";
      return runtime_failure;
    }
    servers = {instance};
  }
  if (servers.empty()) {
    std::cerr << "deskfarm dsmaint: the deployment at " << admin.address()
              << " runs no ima instance; add one ([instances.NAME] plugin = \"ima\") or point at another deployment\n";
    return runtime_failure;
  }
  for (const auto& name : servers) {
    const std::string subject = "ima." + name + ".admin." + action;
    auto reply = admin_call(admin, subject, [&] { return admin.request(subject, "{}", timeout); }, code);
    if (!reply) continue;  // said on stderr; the other instances still run the action
    auto lhc = Poco::JSON::Parser().parse(*reply).extract<Poco::JSON::Object::Ptr>();
    auto list = lhc->getArray("servers");
    const std::size_t n = list ? list->size() : 0;
    std::printf("%s: local host cache %s %s: %s, %zu servers, refreshed %s\n", name.c_str(),
                lhc->getValue<std::string>("file").c_str(), action == "refreshlhc" ? "refreshed" : "recreated",
                lhc->getValue<std::string>("state").c_str(), n, lhc->getValue<std::string>("refreshed").c_str());
    std::printf("  %-20s %-16s %-8s %-15s %s\n", "server", "zone", "host_id", "preference", "version");
    for (std::size_t i = 0; i < n; ++i) {
      auto s = list->getObject(static_cast<unsigned>(i));
      std::printf("  %-20s %-16s %-8lld %-15s %s\n", s->getValue<std::string>("instance").c_str(),
                  s->getValue<std::string>("zone").c_str(), static_cast<long long>(s->getValue<Poco::Int64>("host_id")),
                  s->getValue<std::string>("preference").c_str(), s->getValue<std::string>("version").c_str());
    }
  }
  return code;
}

}  // namespace deskfarm::cli
