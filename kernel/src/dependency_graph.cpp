#include "dependency_graph.hpp"

#include <algorithm>
#include <functional>
#include <map>

namespace deskfarm::kernel {

std::vector<std::size_t> dependency_order(const std::vector<DependencyNode>& nodes, Diagnostics& diags) {
  std::map<std::string, std::size_t> index;
  for (std::size_t i = 0; i < nodes.size(); ++i) index[nodes[i].name] = i;

  // Edges: explicit requires, plus every instance that provides a role the plugin requires.
  std::vector<std::vector<std::size_t>> deps(nodes.size());
  for (std::size_t i = 0; i < nodes.size(); ++i) {
    const auto& node = nodes[i];
    for (const auto& [req, loc] : node.requires_instances) {
      auto it = index.find(req);
      if (it == index.end()) {
        std::vector<std::string> names;
        for (auto& [n, _] : index) names.push_back(n);
        diags.add(loc, "instance " + node.name + " requires '" + req + "', which is not an instance of this deployment." +
                           did_you_mean(req, names));
      } else if (it->second == i) {
        diags.add(loc, "instance " + node.name + " requires itself");
      } else {
        deps[i].push_back(it->second);
      }
    }
    if (!node.plugin_loaded) continue;
    for (const auto& role : node.requires_roles) {
      std::vector<std::size_t> providers;
      for (std::size_t j = 0; j < nodes.size(); ++j) {
        if (j == i || !nodes[j].plugin_loaded) continue;
        const auto& p = nodes[j].provides;
        if (std::find(p.begin(), p.end(), role) != p.end()) providers.push_back(j);
      }
      if (providers.empty()) {
        diags.add(node.where, "instance " + node.name + " (plugin " + node.plugin + ") requires role '" + role +
                                  "', which no instance in this deployment provides",
                  "add an instance of a plugin that provides '" + role + "' (`deskfarm plugins` lists roles)");
      }
      deps[i].insert(deps[i].end(), providers.begin(), providers.end());
    }
  }

  // Depth-first, stable by manifest position; the first cycle found is reported as a path.
  std::vector<int> mark(nodes.size(), 0);  // 0 new, 1 on stack, 2 done
  std::vector<std::size_t> order;
  std::vector<std::size_t> stack;
  bool cycle_reported = false;
  std::function<void(std::size_t)> visit = [&](std::size_t i) {
    if (mark[i] == 2) return;
    if (mark[i] == 1) {
      if (!cycle_reported) {
        auto from = std::find(stack.begin(), stack.end(), i);
        std::string path;
        for (auto it = from; it != stack.end(); ++it) path += nodes[*it].name + " → ";
        path += nodes[i].name;
        diags.add(nodes[i].where, "dependency cycle: " + path,
                  "an instance cannot (directly or through roles) require one that requires it; remove one `requires` entry");
        cycle_reported = true;
      }
      return;
    }
    mark[i] = 1;
    stack.push_back(i);
    for (auto d : deps[i]) visit(d);
    stack.pop_back();
    mark[i] = 2;
    order.push_back(i);
  };
  for (std::size_t i = 0; i < nodes.size(); ++i) visit(i);
  return order;
}

}  // namespace deskfarm::kernel
