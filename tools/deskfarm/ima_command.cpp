// `deskfarm querydc` / `queryds`: finds the deployment's ima instances in its /status, asks the first for the
// collectors it knows (after an election with -e), and for queryds each collector for its dynamic data: a line per
// server, then a line per session the servers' controllers reported, as each collector holds them.
#include "ima_command.hpp"

#include <Poco/Exception.h>
#include <Poco/JSON/Parser.h>

#include <cstdio>
#include <iostream>
#include <optional>

#include "cli_common.hpp"

namespace deskfarm::cli {
namespace {

using Poco::JSON::Array;
using Poco::JSON::Object;

Object::Ptr parse(const std::string& json) { return Poco::JSON::Parser().parse(json).extract<Object::Ptr>(); }

}  // namespace

int cmd_ima(const std::string& command, bool elect, const AdminTarget& target, std::chrono::milliseconds timeout) {
  int code = 0;
  const AdminClient admin(target);
  const auto ask = [&](const std::string& subject) {
    return admin_call(admin, subject, [&] { return admin.request(subject, "{}", timeout); }, code);
  };
  auto status = admin_call(admin, "/status", [&] { return admin.get("/status", timeout); }, code);
  if (!status) return code;
  const auto imas = instances_of(*status, "ima");
  const std::string first = imas.empty() ? "" : imas.front();  // the first started answers for the farm
  if (first.empty()) {
    std::cerr << "deskfarm " << command << ": the deployment at " << admin.address()
              << " runs no ima instance; add one ([instances.NAME] plugin = \"ima\") or point at another deployment\n";
    return 1;
  }
  const std::string request = elect && command == "querydc" ? "admin.elect" : "admin.querydc";
  auto reply = ask("ima." + first + "." + request);
  if (!reply) return code;
  auto collectors = parse(*reply)->getArray("collectors");
  const std::size_t n = collectors ? collectors->size() : 0;
  if (command == "querydc") {
    std::printf("%-16s %-20s %-8s %-10s %-15s %-6s %s\n", "zone", "collector", "host_id", "version", "preference", "epoch", "reachable");
    for (std::size_t i = 0; i < n; ++i) {
      auto c = collectors->getObject(static_cast<unsigned>(i));
      std::printf("%-16s %-20s %-8lld %-10s %-15s %-6lld %s\n", c->getValue<std::string>("zone").c_str(),
                  c->getValue<std::string>("instance").c_str(), static_cast<long long>(c->getValue<Poco::Int64>("host_id")),
                  c->getValue<std::string>("version").c_str(), c->getValue<std::string>("preference").c_str(),
                  static_cast<long long>(c->getValue<Poco::Int64>("epoch")), c->getValue<bool>("reachable") ? "yes" : "no");
    }
    return 0;
  }
  std::printf("%-20s %-16s %-20s %-8s %-9s %-8s %-6s %s\n", "collector", "zone", "server", "host_id", "sessions", "load", "seq", "updated");
  std::string sessions;  // the sessions the servers' controllers reported, printed after the servers
  for (std::size_t i = 0; i < n; ++i) {
    const auto zdc = collectors->getObject(static_cast<unsigned>(i))->getValue<std::string>("instance");
    auto data = ask("ima." + zdc + ".admin.queryds");
    if (!data) continue;  // a collector of another process that does not answer: said on stderr, the rest still printed
    auto records = parse(*data)->getArray("records");
    for (std::size_t j = 0; records && j < records->size(); ++j) {
      auto r = records->getObject(static_cast<unsigned>(j));
      std::printf("%-20s %-16s %-20s %-8lld %-9lld %-8.1f %-6lld %s\n", zdc.c_str(), r->getValue<std::string>("zone").c_str(),
                  r->getValue<std::string>("instance").c_str(), static_cast<long long>(r->getValue<Poco::Int64>("host_id")),
                  static_cast<long long>(r->getValue<Poco::Int64>("sessions")), r->getValue<double>("load"),
                  static_cast<long long>(r->getValue<Poco::Int64>("seq")), r->getValue<std::string>("updated").c_str());
      auto list = r->getArray("session_list");
      for (std::size_t k = 0; list && k < list->size(); ++k) {
        auto x = list->getObject(static_cast<unsigned>(k));
        char line[512];
        std::snprintf(line, sizeof line, "%-20s %-16s %-20s %-20s %-16s %-13s %-16s %s\n", zdc.c_str(), r->getValue<std::string>("zone").c_str(),
                      r->getValue<std::string>("instance").c_str(), x->getValue<std::string>("desktop").c_str(),
                      x->getValue<std::string>("user").c_str(), x->getValue<std::string>("state").c_str(),
                      x->getValue<std::string>("controller").c_str(), x->optValue<std::string>("endpoint", "").c_str());
        sessions += line;
      }
    }
  }
  if (!sessions.empty()) {
    std::printf("\n%-20s %-16s %-20s %-20s %-16s %-13s %-16s %s\n", "collector", "zone", "server", "desktop", "user", "state", "controller", "endpoint");
    std::fputs(sessions.c_str(), stdout);
  }
  return code;
}

}  // namespace deskfarm::cli
