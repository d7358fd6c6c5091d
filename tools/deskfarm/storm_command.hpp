#pragma once

namespace deskfarm::cli {

/// `deskfarm storm [MANIFEST] --users N --rate R/s …`: a logon storm against a running deployment (see --help).
int cmd_storm(int argc, char** argv);

}  // namespace deskfarm::cli
