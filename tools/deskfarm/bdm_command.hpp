#pragma once
// `deskfarm bdm build …`: writes a Boot Device Manager ISO (libs/bdm) from command-line options.

namespace deskfarm::cli {

/// argv starts at "bdm"; returns the process exit code (0 ok, 1 build failed, 2 usage error).
int cmd_bdm(int argc, char** argv);

}  // namespace deskfarm::cli
